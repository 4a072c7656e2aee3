"""The drift trigger on a real Prefect server: the event that ``monitor`` emits creates a ``retrain`` run.

Prefect's test harness runs its server without background services, so automations never fire
there. This module starts ``prefect server start`` (flows.local: SQLite in a temp PREFECT_HOME, 127.0.0.1)
with its services, registers the ``retrain`` deployment exactly as ``flows.serve_all`` builds it
(its trigger included), runs the real ``monitor`` flow with a monitoring pass that confirms a
breach, and waits for the server to create the ``retrain`` flow run with the event's reason.
Nothing executes that run (no runner polls it): the wiring is what is tested.
"""

from __future__ import annotations

import json
import time

import pytest
import requests
import yaml

from tests.helpers.flows import monitor_summary

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.local import local_server

    with (
        local_server(tmp_path_factory.mktemp("prefect-home")) as api,
        temporary_settings(updates={PREFECT_API_URL: api}),
    ):
        yield api


def test_a_confirmed_breach_starts_retrain_through_the_trigger(server, tmp_path, monkeypatch):
    import monitoring.run
    from flows.monitor import monitor
    from flows.serve_all import deployments
    from pipelines.config import load_params

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "registered_model": "tiny"}})
    )
    (retrain,) = [d for d in deployments(load_params()) if d.name == "retrain"]
    deployment_id = retrain.apply()  # the deployment and its trigger (an automation) on the server

    reason = "confirmed breach of ['data_drift'] over 3 windows"

    def confirmed_breach(params, **_):
        return monitor_summary(True, str(tmp_path / "reports"), reason), None

    monkeypatch.setattr(monitoring.run, "monitor_once", confirmed_breach)
    assert flow_runs(server, deployment_id) == []
    summary = monitor()
    assert summary["event_id"]
    state = json.loads((tmp_path / "reports" / "monitoring" / "state.json").read_text())
    assert state["last_reset"]["reason"].startswith("event model.drift.detected emitted")  # the breach is acknowledged

    deadline, runs = time.monotonic() + 90, []
    while time.monotonic() < deadline and not runs:
        time.sleep(2)
        runs = flow_runs(server, deployment_id)
    assert len(runs) == 1, "no retrain run was created within 90 s of the event"
    assert runs[0]["parameters"]["reason"] == reason
    assert runs[0]["state_type"] in ("SCHEDULED", "PENDING")  # nothing serves it here


def flow_runs(api: str, deployment_id) -> list[dict]:
    r = requests.post(
        f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [str(deployment_id)]}}}, timeout=10
    )
    r.raise_for_status()
    return r.json()
