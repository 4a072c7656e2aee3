"""``make serve`` (``python -m serving.app``) stopped by SIGTERM, as systemd, ``docker stop`` or ``kill`` stop it:
it exits 0 and every answered text is in the prediction log (the periodic flush is set far beyond the test,
so only the graceful shutdown can have written them). The API key comes from ``serve.api_key_file``, read by the
app builder and handed to the replica in its config: every route but ``/healthz`` needs it under Ray Serve too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests
import yaml

from pipelines.io import free_port
from serving.prediction_log import PREDICTIONS, read_log
from tests.helpers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_sigterm_drains_and_flushes_the_log(tiny_registry, tmp_path) -> None:
    port = free_port()
    log_dir = tmp_path / "production"
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "mlflow": tiny_registry.mlflow.model_dump(),
                "serve": {
                    "port": port,
                    "log_dir": str(log_dir),
                    "log_flush_s": 3600,
                    "log_flush_rows": 100000,
                    "watch_interval_s": 0,
                    "replica_cpus": 0.5,
                    "api_key_file": str(tmp_path / "key.txt"),
                },
            }
        )
    )
    (tmp_path / "key.txt").write_text("k3y-from-a-file\n")
    key = {"X-API-Key": "k3y-from-a-file"}
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TICKETOPS_API_KEY")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.app", "--params", str(tmp_path / "params.yaml")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/readyz", timeout=2, headers=key).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(1)
        else:
            pytest.fail("serving.app did not become ready within 180 s")
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        for path in ("/readyz", "/metrics", "/openapi.json"):
            assert requests.get(f"{url}{path}", timeout=10).status_code == 401, path
        assert requests.post(f"{url}/predict", json={"texts": ["a"]}, timeout=10).status_code == 401
        served = 0
        for i in range(10):
            texts = tiny_registry.texts[: 1 + i % 4]
            r = requests.post(f"{url}/predict", json={"texts": texts}, timeout=30, headers=key)
            assert r.status_code == 200, r.text
            served += len(texts)
        assert not list(log_dir.glob("predictions/**/*.parquet"))  # nothing flushed yet
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "stopping (flushing the prediction log)" in out
    assert len(read_log(log_dir, PREDICTIONS)) == served
