"""One long-running process serving every deployment (what ``make ui`` starts).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve_all

``monitor`` runs every ``flows.monitor_interval_minutes``; ``retrain`` has a trigger on
``model.drift.detected`` (emitted by ``monitor`` on a confirmed breach), so a breach starts
retraining with no person involved. For other machines, the same flows deploy to a ``process``
work pool instead (README, "Scale-out").
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from prefect.events import DeploymentEventTrigger

from flows.deploy import deploy
from flows.monitor import DRIFT_EVENT, monitor
from flows.promote import promote
from flows.retrain import retrain
from flows.training import training
from pipelines.config import Params, load_params
from pipelines.errors import ConfigError

TAGS = ["ticketops"]


def drift_trigger() -> DeploymentEventTrigger:
    """Run ``retrain`` on ``model.drift.detected`` for any registered model; the event's reason becomes its parameter."""
    return DeploymentEventTrigger(name="retrain on confirmed drift", expect={DRIFT_EVENT},
                                  match={"prefect.resource.id": "model.*"},
                                  parameters={"reason": "{{ event.payload.reason }}"})


NAMES = ("training", "promote", "deploy", "monitor", "retrain")


def deployments(params: Params, only: list[str] | None = None) -> list[Any]:
    """The five deployments (RunnerDeployment objects), named after their flows; ``only``: a subset by name."""
    unknown = sorted(set(only or []) - set(NAMES))
    if unknown:
        raise ConfigError(f"--only: unknown deployment(s) {unknown}; choose from {list(NAMES)}")
    every = [
        training.to_deployment(name="training", tags=TAGS, description="DVC stages in DAG order, then the promotion gate"),
        promote.to_deployment(name="promote", tags=TAGS, description="promote a version, roll back, or re-run the gate"),
        deploy.to_deployment(name="deploy", tags=TAGS, description="start or update the Ray Serve app (champion)"),
        monitor.to_deployment(name="monitor", tags=TAGS, interval=timedelta(minutes=params.flows.monitor_interval_minutes),
                              description="one monitoring pass; emits model.drift.detected on a confirmed breach"),
        retrain.to_deployment(name="retrain", tags=TAGS, triggers=[drift_trigger()],
                              description="snapshot feedback, training, deploy on promotion (triggered by drift)"),
    ]
    return [d for d in every if not only or d.name in only]


def main(params: Path = Path("params.yaml"),
         only: Annotated[Optional[list[str]], typer.Option(help="serve only these deployments (repeat the option)")] = None,
         ) -> None:
    """Register and serve the deployments until Ctrl-C (schedules are not paused on shutdown)."""
    from prefect import serve

    serve(*deployments(load_params(params), only), pause_on_shutdown=False)


if __name__ == "__main__":
    from pipelines.errors import run_cli

    run_cli(main)
