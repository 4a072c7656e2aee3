"""A private local Prefect server with its background services, and a process serving deployments.

Used by the Prefect drift demo (``make demo-drift-prefect``, :mod:`flows.demo`) and the tests that
go through a real server (the drift trigger, a run started the way the UI starts it); ``make ui``
starts the long-running one (``flows/ui.sh``). Prefect's test harness is not enough there: its
server runs without services, so automations never fire, and nothing polls deployments.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.errors import PipelineError
from pipelines.io import free_port, tools_env


def server_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment of a process using the server in ``home`` (no telemetry: there is no internet)."""
    env = {
        **tools_env(os.environ),  # dvc.yaml's stage commands run `python`: it must be this interpreter
        "PREFECT_HOME": str(Path(home).resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:
        env.pop("PREFECT_API_URL", None)
    return env


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGINT to the process group, then SIGKILL if it has not exited."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def local_server(home: Path, port: int | None = None, timeout_s: float = 120, ui: bool = False) -> Iterator[str]:
    """``prefect server start`` on 127.0.0.1 (SQLite under ``home``); yields the API URL, stops the server after."""
    import requests

    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    api = f"http://127.0.0.1:{port}/api"
    log_path = home / "server.log"
    with open(log_path, "w") as log:
        env = {**server_env(home), "PREFECT_UI_ENABLED": "true" if ui else "false"}
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("prefect")),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise PipelineError(
                        f"the Prefect server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
                    )
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{api}/health", timeout=2).ok:
                        break
                if time.monotonic() > deadline:
                    raise PipelineError(f"the Prefect server did not answer within {timeout_s:.0f} s; log: {log_path}")
                time.sleep(1)
            yield api
        finally:
            stop(proc)


@contextlib.contextmanager
def serving(repo: Path, home: Path, api_url: str, only: list[str]) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``python -m flows.serve_all --only ...`` in ``repo`` until the block ends; yields the process and its log."""
    log = Path(home) / "serve_all.log"
    cmd = [sys.executable, "-m", "flows.serve_all"] + [a for name in only for a in ("--only", name)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=repo, env=server_env(home, api_url), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc, log
    finally:
        stop(proc)


def wait_for_deployment(name: str, served: subprocess.Popen, log: Path, timeout_s: float = 120) -> Any:
    """The deployment ``flow/name`` once the serving process has registered it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            if served.poll() is not None:
                raise PipelineError(f"flows.serve_all exited ({served.returncode}):\n{Path(log).read_text()[-3000:]}")
            try:
                return client.read_deployment_by_name(name)
            except ObjectNotFound:
                pass
            if time.monotonic() > deadline:
                raise PipelineError(f"deployment {name} not registered within {timeout_s:.0f} s; log: {log}")
            time.sleep(1)


def wait_for_run(deployment_id: Any, log: Path, timeout_s: float, show: str | None = None) -> Any:
    """The deployment's first flow run, once it has reached a final state; prints state changes if ``show``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    deadline, shown = time.monotonic() + timeout_s, None
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            # the oldest run first: the one a trigger or the UI created for this wait
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=10,
            )
            if runs:
                run = runs[0]
                state = run.state.name if run.state else "?"
                if show and state != shown:
                    print(f"{show} run '{run.name}': {state}", flush=True)
                    shown = state
                if run.state is not None and run.state.is_final():
                    return run
            time.sleep(2)
    raise PipelineError(f"no finished run of the deployment within {timeout_s:.0f} s; serve_all log: {log}")
