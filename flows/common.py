"""What every flow shares: the parameter-model base, params loading, the DVC lock, MLflow links.

No Prefect server is contacted at import time; everything here is called from inside a flow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipelines.config import Params, load_params
from pipelines.errors import PipelineError
from pipelines.registry.families import Family, registered_model


class Options(BaseModel):
    """Base of every flow's parameter model: unknown fields are refused (the error names them)."""

    model_config = ConfigDict(extra="forbid")

    params_file: str = Field(
        "params.yaml", description="params.yaml of the project (relative to the working directory)"
    )


class LockTimeout(PipelineError):
    """Another flow held the DVC repository lock for longer than ``flows.dvc_lock_timeout_s``."""


def params_of(options: Options) -> Params:
    return load_params(Path(options.params_file))


def ensure_limit(name: str) -> None:
    """Create the global concurrency limit ``name`` with one slot (or reset it to one)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)


@contextlib.contextmanager
def dvc_lock(params: Params) -> Iterator[None]:
    """Hold the one slot of ``flows.dvc_concurrency_limit`` (created if missing, so it never waits on nothing).

    A second flow waits up to ``flows.dvc_lock_timeout_s`` and then fails with :class:`LockTimeout`
    instead of running ``dvc`` next to the first one (DVC's repository lock, ``dvc.lock``).
    """
    from prefect.concurrency.sync import concurrency

    cfg = params.flows
    ensure_limit(cfg.dvc_concurrency_limit)
    try:
        with concurrency(cfg.dvc_concurrency_limit, occupy=1, timeout_seconds=cfg.dvc_lock_timeout_s, strict=True):
            yield
    except TimeoutError:
        raise LockTimeout(
            f"another flow holds the DVC lock (concurrency limit '{cfg.dvc_concurrency_limit}') for "
            f"more than {cfg.dvc_lock_timeout_s:.0f} s (flows.dvc_lock_timeout_s); not running dvc"
        ) from None


def mlflow_links(params: Params, version: str | None, family: Family = "classifier") -> dict[str, str]:
    """Links into the MLflow UI (``flows.mlflow_ui_url``) for ``family``'s registered model, a version of it
    and the run that logged that version (the classifier's ``mlflow.registered_model`` or the generative
    model's ``register_llm.registered_model``)."""
    base, name = params.flows.mlflow_ui_url.rstrip("/"), registered_model(params, family)
    links = {"registered model": f"{base}/#/models/{name}"}
    if not version:
        return links
    links["version"] = f"{base}/#/models/{name}/versions/{version}"
    try:
        from pipelines.registry import tracking

        tracking.setup(params.mlflow)
        reg = tracking.Registry(params.mlflow, name)
        mv = reg.version(version)
        run = reg.client.get_run(mv.run_id) if mv.run_id else None
        if run is not None:
            links["run"] = f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    except Exception as err:  # a link is a convenience: never fail a flow for it
        links["note"] = f"no run link: {err}"
    return links


def links_markdown(links: dict[str, str]) -> str:
    return "\n".join(f"- {k}: [{v}]({v})" if v.startswith("http") else f"- {k}: {v}" for k, v in links.items())


def json_safe(value: Any) -> Any:
    """Event payloads and artifacts must be JSON: stringify what is not."""
    import json

    return json.loads(json.dumps(value, default=str))
