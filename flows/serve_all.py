"""The five deployments, served by one long-running process (what ``make ui`` starts) or put on a work pool.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve_all                 # serve them here
    PREFECT_API_URL=http://<host>:4200/api python -m flows.serve_all --work-pool ticketops   # workers run them

``monitor`` runs every ``flows.monitor_interval_minutes``; ``retrain`` has a trigger on
``model.drift.detected`` (emitted by ``monitor`` on a confirmed breach), so a breach starts
retraining with no person involved. ``--work-pool`` registers the same deployments (names,
schedule, trigger, parameter forms) on a ``process`` work pool, with the code taken from
``--source`` (a git URL, or this checkout's path as every worker sees it): ``prefect worker
start --pool <name>`` on any machine then runs them (README, "Scale-out").
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from prefect.events import DeploymentEventTrigger

from flows.deploy import deploy
from flows.monitor import DRIFT_EVENT, monitor, resource_id
from flows.promote import promote
from flows.retrain import retrain
from flows.training import training
from pipelines.config import Params, load_params
from pipelines.errors import ConfigError

TAGS = ["ticketops"]
FLOWS = {"training": training, "promote": promote, "deploy": deploy, "monitor": monitor, "retrain": retrain}
NAMES = tuple(FLOWS)


def drift_trigger(registered_model: str) -> DeploymentEventTrigger:
    """Run ``retrain`` on ``model.drift.detected`` for the classifier (``model.<registered_model>``).

    ``retrain`` rebuilds the classifier from labelled production rows; the generative model's breach is emitted
    under its own resource (visible in the Prefect UI, an automation can act on it) but does not start it: its
    corrected triage fields are not yet turned into SFT examples. The event's reason becomes the parameter."""
    return DeploymentEventTrigger(
        name="retrain on confirmed drift",
        expect={DRIFT_EVENT},
        match={"prefect.resource.id": resource_id(registered_model)},
        parameters={"reason": "{{ event.payload.reason }}"},
    )


def settings(params: Params) -> dict[str, dict[str, Any]]:
    """Per deployment: description, schedule and trigger (the same whether served here or on a work pool)."""
    return {
        "training": {"description": "DVC stages in DAG order, then the promotion gate"},
        "promote": {"description": "promote a version, roll back, or re-run the gate"},
        "deploy": {"description": "start or update the Ray Serve app (champion)"},
        "monitor": {
            "interval": timedelta(minutes=params.flows.monitor_interval_minutes),
            "description": "one monitoring pass; emits model.drift.detected on a confirmed breach",
        },
        "retrain": {
            "triggers": [drift_trigger(params.mlflow.registered_model)],
            "description": "snapshot feedback, training, deploy on promotion (triggered by drift)",
        },
    }


def _chosen(only: list[str] | None) -> list[str]:
    unknown = sorted(set(only or []) - set(NAMES))
    if unknown:
        raise ConfigError(f"--only: unknown deployment(s) {unknown}; choose from {list(NAMES)}")
    return [n for n in NAMES if not only or n in only]


def deployments(params: Params, only: list[str] | None = None) -> list[Any]:
    """The deployments to serve here (RunnerDeployment objects), named after their flows; ``only``: a subset."""
    kw = settings(params)
    return [FLOWS[n].to_deployment(name=n, tags=TAGS, **kw[n]) for n in _chosen(only)]


def deploy_to_pool(params: Params, work_pool: str, source: str, only: list[str] | None = None) -> list[Any]:
    """Register the deployments on ``work_pool``, code from ``source``; returns their ids."""
    kw = settings(params)
    return [
        FLOWS[n]
        .from_source(source=source, entrypoint=f"flows/{n}.py:{n}")
        .deploy(name=n, work_pool_name=work_pool, tags=TAGS, build=False, push=False, print_next_steps=False, **kw[n])
        for n in _chosen(only)
    ]


def main(
    params: Path = Path("params.yaml"),
    only: Annotated[Optional[list[str]], typer.Option(help="only these deployments (repeat the option)")] = None,
    work_pool: Annotated[
        Optional[str],
        typer.Option(help="register on this process work pool instead of serving here (e.g. params flows.work_pool)"),
    ] = None,
    source: Annotated[
        Optional[str],
        typer.Option(help="with --work-pool: where workers get the code (git URL or path; default: this checkout)"),
    ] = None,
) -> None:
    """Serve the deployments until Ctrl-C (schedules are not paused on shutdown), or register them on a work pool."""
    p = load_params(params)
    if work_pool:
        ids = deploy_to_pool(p, work_pool, source or str(Path.cwd().resolve()), only)
        print(
            f"{len(ids)} deployment(s) on work pool '{work_pool}'; start workers with: "
            f"prefect worker start --pool {work_pool}"
        )
        return
    from prefect import serve

    serve(*deployments(p, only), pause_on_shutdown=False)


if __name__ == "__main__":
    from pipelines.errors import run_cli

    run_cli(main)
