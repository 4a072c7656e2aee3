"""deploy: start or update the Ray Serve application that serves the registry champion.

Reuses serving's entry point (:func:`serving.app.build` + :func:`serving.app.run_local`). A flow run
is a short-lived process, so the app lives on a long-running local Ray cluster (``ray start --head``,
started here when none answers); ``serve.run`` with the same app name updates it in place. Replicas
also follow the champion alias by themselves (``serve.watch_interval_s``), so after a promotion this
flow only makes sure the app is up and on the current serve config.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows import common
from flows.common import Options
from pipelines.errors import PipelineError
from pipelines.io import run_command, tool


class DeployOptions(Options):
    """Parameters of the deploy flow."""

    ray_address: str = Field("auto", description="Ray cluster to deploy to ('auto': the local one)")
    start_cluster: bool = Field(True, description="start a local Ray head node when none is running")
    ray_cpus: int = Field(2, ge=1, le=256, description="CPUs of a Ray head node started here")
    wait_ready_s: float = Field(300.0, gt=0, description="wait this long for /readyz")


@task(name="ray-cluster")
def ensure_cluster(options: DeployOptions) -> None:
    """Connect to the Ray cluster; start a head node on 127.0.0.1 first when none answers."""
    import ray  # serving.app is otherwise the one module importing Ray; see the README's scale-out notes

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():  # a second deploy in the same process (the app is updated in place)
        return
    try:
        ray.init(address=options.ray_address, log_to_driver=False)
        return
    except ConnectionError:
        if not options.start_cluster:
            raise PipelineError(f"no Ray cluster at {options.ray_address!r} and start_cluster is false") from None
    run_command(  # check: CommandFailed carries ray's exit code and output
        [
            tool("ray"),
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            f"--num-cpus={options.ray_cpus}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        check=True,
    )
    ray.init(address="auto", log_to_driver=False)


@task(name="serve-champion")
def serve_champion(options: DeployOptions) -> str:
    """``serving.app.build`` + ``run_local`` (deploys or updates the app, waits for /readyz); returns its URL."""
    from pathlib import Path

    from serving.app import build, run_local

    params = common.params_of(options)
    app = build({"params": str(Path(options.params_file).resolve())})
    return run_local(params, app, wait_ready_s=options.wait_ready_s)


@flow(name="deploy", log_prints=True)
def deploy(options: DeployOptions = DeployOptions()) -> dict[str, Any]:
    """Make the Ray Serve app serve the current champion; publish its URL and the champion version."""
    from pipelines.registry import tracking

    params = common.params_of(options)
    tracking.setup(params.mlflow)
    version = tracking.Registry(params.mlflow).alias(params.serve.model_alias)
    if version is None:
        raise PipelineError(
            f"'{params.mlflow.registered_model}' has no '{params.serve.model_alias}' alias: run training first"
        )
    ensure_cluster(options)
    url = serve_champion(options)
    get_run_logger().info(
        "serving %s@%s (v%s) at %s", params.mlflow.registered_model, params.serve.model_alias, version, url
    )
    create_markdown_artifact(
        key="deployment",
        markdown=(
            f"# Serving v{version}\n\n- endpoint: [{url}]({url}) "
            f"(docs [{url}/docs]({url}/docs), metrics {url}/metrics)\n"
            + common.links_markdown(common.mlflow_links(params, version))
        ),
        description="Ray Serve app",
    )
    return {"url": url, "version": version}
