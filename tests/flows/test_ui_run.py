"""``training`` started the way the Prefect UI starts it, on a real server, runs the real pipeline.

A tiny copy of the repository (:func:`monitoring.demo.make_repo`: 1,500 generated tickets, TF-IDF
baselines, no classifier fine-tuning, the generative branch smoke-sized on a tiny Llama), a private
``prefect server start`` (:mod:`flows.local`) and
``python -m flows.serve_all --only training`` serving the deployment from that copy, as ``make ui``
does. The run is created through the API call behind the UI's *Run* button
(``create_flow_run_from_deployment``); the served process picks it up and runs every DVC stage.
The form's validation is the server's: a misspelt or mistyped parameter is refused with its name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def served_training(tmp_path_factory: pytest.TempPathFactory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.local import local_server, serving, wait_for_deployment
    from monitoring.demo import make_repo
    from tests.helpers.llm import smol_tokenizer, tiny_base

    root = tmp_path_factory.mktemp("ui")
    repo = make_repo(root / "repo", extra=("flows",))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["generate"].update(n_rows=1500, n_customers=400)
    params["validate"].update(min_class_count=10)
    # the generative branch runs too (the form's default is both branches), on a tiny Llama with SmolLM2's
    # tokenizer: its stages, not the 135M model's minutes, are what this run checks
    params["llm"]["base_model"] = str(tiny_base(root / "tiny-lm", smol_tokenizer(root / "tokenizer")))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    home = repo / ".prefect"
    with local_server(home) as api, temporary_settings(updates={PREFECT_API_URL: api}):
        with serving(repo, home, api, ["training"]) as (proc, log):
            yield repo, wait_for_deployment("training/training", proc, log), log


@pytest.mark.parametrize(
    "parameters, field",
    [
        ({"options": {"forse": True}}, "forse"),
        ({"options": {"force": "sometimes"}}, "force"),
        ({"options": {"stages": "ingest"}}, "stages"),
    ],
)
def test_the_server_refuses_a_bad_form_naming_the_field(served_training, parameters, field):
    from prefect.client.orchestration import get_client

    _, deployment, _ = served_training
    with get_client(sync_client=True) as client, pytest.raises(Exception, match=field) as err:
        client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    assert "409" in str(err.value) or "422" in str(err.value) or "Validation" in type(err.value).__name__


@pytest.fixture(scope="module")
def ui_run(served_training):
    """One ``training`` run created as the UI's Run button creates it (the form's defaults), run to its end."""
    from prefect.client.orchestration import get_client

    from flows.local import wait_for_run

    _, deployment, log = served_training
    with get_client(sync_client=True) as client:
        client.create_flow_run_from_deployment(deployment.id)
    return wait_for_run(deployment.id, log, timeout_s=900)


def test_a_run_from_the_ui_registers_a_champion(served_training, ui_run):
    from pipelines.config import load_params
    from pipelines.registry.tracking import Registry

    repo, _, log = served_training
    assert ui_run.state.is_completed(), f"{ui_run.state.name}: {ui_run.state.message}\n{log.read_text()[-3000:]}"
    reports = ("reports/leakage.json", "reports/promotion.json", "reports/promotion_llm.json")  # both branches ran
    for out in ("dvc.lock", "data/processed/test.parquet", *reports):
        assert (repo / out).is_file(), out
    params = load_params(repo / "params.yaml")
    params.mlflow.tracking_uri = f"sqlite:///{repo / 'mlflow.db'}"
    assert Registry(params.mlflow).alias("champion") == "1"
    assert json.loads((repo / "reports/promotion.json").read_text())["promoted"] is True


def test_a_worker_on_a_work_pool_runs_the_same_deployments(served_training, ui_run):
    """Scale-out by configuration: ``serve_all --work-pool`` registers the deployments, ``prefect worker`` runs them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    from flows.local import server_env, stop, wait_for_run

    repo, _, _ = served_training
    home = repo / ".prefect"
    api = PREFECT_API_URL.value()  # the module's private server (temporary_settings in served_training)
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="test-pool", type="process"))
    r = subprocess.run(
        [sys.executable, "-m", "flows.serve_all", "--work-pool", "test-pool", "--only", "promote"],
        cwd=repo,
        env=server_env(home, api),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    before = json.loads((repo / "reports/promotion.json").read_text())["decided_at"]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("promote/promote")
        assert deployment.work_pool_name == "test-pool"
        client.create_flow_run_from_deployment(deployment.id)  # defaults: re-run the gate on the test split
    log = home / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("prefect")),
                "worker",
                "start",
                "--pool",
                "test-pool",
                "--type",
                "process",
            ],
            cwd=repo,
            env=server_env(home, api),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        run = wait_for_run(deployment.id, log, timeout_s=300)
    finally:
        stop(worker)
    assert run.state.is_completed(), f"{run.state.name}: {run.state.message}\n{log.read_text()[-3000:]}"
    decision = json.loads((repo / "reports/promotion.json").read_text())
    assert decision["decided_at"] > before and decision["champion_version_after"] == "1"
