"""A private local Prefect server with its background services (the drift trigger needs them).

Used by the drift demo (``python -m monitoring.demo --prefect``) and the trigger test; ``make ui``
starts the long-running one (``flows/ui.sh``). Prefect's test harness is not enough there: its
server runs without services, so automations never fire.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from pipelines.errors import PipelineError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment of a process using the server in ``home`` (no telemetry: there is no internet)."""
    env = {**os.environ, "PREFECT_HOME": str(Path(home).resolve()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1"}
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
        proc = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise PipelineError(f"the Prefect server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{api}/health", timeout=2).ok:
                        break
                if time.monotonic() > deadline:
                    raise PipelineError(f"the Prefect server did not answer within {timeout_s:.0f} s; log: {log_path}")
                time.sleep(1)
            yield api
        finally:
            stop(proc)
