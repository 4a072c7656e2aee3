"""Flows on Prefect's test harness (one temporary server for the module).

The wiring is what is tested here: the DVC subprocess is a fake stage runner (the stages have
their own tests), ``monitor_once`` is a fake returning a summary (monitoring has its own tests).
The promotion gate is real: a temp SQLite MLflow registry with two tiny scikit-learn models.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from pipelines.config import load_params
from pipelines.errors import ERROR_FILE_ENV
from tests.helpers import ROOT
from tests.helpers.flows import monitor_summary, register, split

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory: the real dvc.yaml, params pointing at a temp registry, a tiny test split."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "mlflow": {
                    "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                    "artifact_root": str(tmp_path / "art"),
                    "experiment": "t",
                    "registered_model": "tiny",
                },
                # a free slot is taken in well under a second, but a loaded CI machine has taken over 2 s to answer
                "flows": {"stage_retries": 1, "stage_retry_delay_s": 0, "dvc_lock_timeout_s": 60},
            }
        )
    )
    (tmp_path / "data/processed").mkdir(parents=True)
    split(80, 1).to_parquet(tmp_path / "data/processed/test.parquet")
    return tmp_path


def stage_fails_with(error: str | None, env: dict[str, str], stdout: str = "") -> subprocess.CompletedProcess:
    """What ``dvc repro`` returns when its stage fails: a real process, under the environment the flow gave
    ``dvc``, ends through ``pipelines.errors.fail`` (``error``: a PipelineError class) or crashes (None).
    DVC itself exits 1 whatever the stage's exit code was."""
    code = f"from pipelines.errors import {error}, fail; fail({error}('the stage refused'))" if error else "1 / 0"
    env = {**env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return subprocess.CompletedProcess(["dvc"], 1, stdout, f"ERROR: failed to reproduce: exited with {proc.returncode}")


def active_slots(name: str = "dvc-repo") -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def test_training_runs_stages_in_dag_order_under_the_lock_and_a_refused_gate_keeps_the_champion(project, monkeypatch):
    from flows.training import TrainingOptions, branch_stages, training
    from pipelines.classifier.gate import run_classifier_gate
    from pipelines.registry import tracking
    from pipelines.registry.gate import write_decision

    params, test = load_params(), pd.read_parquet("data/processed/test.parquet")
    train = split(200, 0)
    good = make_pipeline(TfidfVectorizer(), LogisticRegression(C=10)).fit(train.text, train.label)
    reg = tracking.Registry(params.mlflow)
    champion = register(params, good, "good", test)
    run_classifier_gate(reg, test, params.register_)
    assert reg.alias("champion") == champion
    calls: list[tuple[str, int]] = []
    flaky = {"split": 1}

    def fake_dvc(cmd: list[str], cwd: str = ".", **_: object) -> subprocess.CompletedProcess:
        stage = cmd[3]
        calls.append((stage, active_slots()))
        if flaky.get(stage):  # a transient failure: retried
            flaky[stage] -= 1
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Unable to acquire lock")
        if stage == "register":  # the real gate on a worse challenger (majority class)
            worse = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(train), 1)), train.label)
            register(params, worse, "majority", test)
            write_decision(
                run_classifier_gate(reg, test, params.register_),
                Path("reports/promotion.md"),
                Path("reports/promotion.json"),
            )
        return subprocess.CompletedProcess(cmd, 0, f"Running stage '{stage}'", "")

    monkeypatch.setattr("flows.training.run_command", fake_dvc)
    result = training(TrainingOptions(branch="classifier"))

    stages = [s for s, _ in calls]
    order = branch_stages("classifier", "dvc.yaml")
    assert (
        order.index("ingest")
        < order.index("split")
        < order.index("leakage")
        < order.index("baselines")
        < order.index("register")
        == len(order) - 1
    )
    assert stages == [s for s in order for _ in range(2 if s == "split" else 1)]  # split failed once, retried
    assert all(held == 1 for _, held in calls), calls  # every dvc command ran holding the one slot
    assert active_slots() == 0
    assert result["promoted"] is False and result["champion_version_after"] == champion
    assert any("below the champion" in r for r in result["reasons"])
    assert reg.alias("champion") == champion


def test_a_branch_is_its_last_stage_and_everything_upstream() -> None:
    from flows.training import branch_stages, dag_order

    everything = dag_order(ROOT / "dvc.yaml")
    classifier = branch_stages("classifier", ROOT / "dvc.yaml")
    llm = branch_stages("llm", ROOT / "dvc.yaml")
    assert classifier[-1] == "register" and not {"sft_data", "sft", "llm_eval", "register_llm"} & set(classifier)
    assert llm[-1] == "register_llm" and {"generate", "leakage", "sft_data", "sft", "llm_eval"} <= set(llm)
    # the classical baseline of llm_eval is the classifier champion: the llm branch keeps the classifier upstream
    assert "register" in llm and llm.index("register") < llm.index("llm_eval")
    assert branch_stages("both", ROOT / "dvc.yaml") == everything
    assert [s for s in everything if s in llm] == llm  # DAG order kept


def test_a_failed_gate_stage_is_not_retried_and_a_held_lock_fails_clearly(project, monkeypatch):
    from prefect.concurrency.sync import concurrency

    from flows.common import LockTimeout
    from flows.training import StageFailed, TrainingOptions, training

    seen: list[str] = []

    def fake_dvc(cmd: list[str], cwd: str = ".", *, env: dict[str, str], **_: object) -> subprocess.CompletedProcess:
        seen.append(cmd[3])
        return stage_fails_with("GateFailed", env)

    monkeypatch.setattr("flows.training.run_command", fake_dvc)
    with pytest.raises(StageFailed, match=r"\(GateFailed, exit 3 in the stage\)"):
        training(TrainingOptions(stages=["validate"]))
    assert seen == ["validate"]

    settings = yaml.safe_load(Path("params.yaml").read_text())
    settings["flows"]["dvc_lock_timeout_s"] = 2  # the wait ends in a LockTimeout however slow the server is
    Path("params.yaml").write_text(yaml.safe_dump(settings))
    with concurrency("dvc-repo", occupy=1, strict=True):  # another flow holds DVC
        with pytest.raises(LockTimeout, match="dvc-repo"):
            training(TrainingOptions(stages=["ingest"]))
    assert seen == ["validate"]  # dvc never started


@pytest.mark.parametrize(
    "error, stdout, retried",
    [
        ("ConfigError", "", False),  # exit 2: the same params fail the same way
        ("GateFailed", "", False),  # exit 3: the same data fails the gate again
        ("DataError", "", True),
        (None, "", True),  # crashed without a record: transient (a lock, a killed process)
        (None, "row 7: 'the job exited with 2 warnings'", True),  # the stage's own output decides nothing
    ],
    ids=["config-error", "gate-failed", "data-error", "crash", "crash-saying-exited-with-2"],
)
def test_a_stage_is_retried_unless_its_error_record_says_config_or_gate(project, monkeypatch, error, stdout, retried):
    from flows.training import StageFailed, TrainingOptions, training

    seen: list[str] = []

    def fake_dvc(cmd: list[str], cwd: str = ".", *, env: dict[str, str], **_: object) -> subprocess.CompletedProcess:
        seen.append(cmd[3])
        assert env[ERROR_FILE_ENV] and env["PATH"] == os.environ["PATH"]  # the stage gets the record file and our env
        return stage_fails_with(error, env, stdout)

    monkeypatch.setattr("flows.training.run_command", fake_dvc)
    with pytest.raises(StageFailed) as exc:
        training(TrainingOptions(stages=["validate"]))
    assert seen == ["validate"] * (2 if retried else 1)
    assert exc.value.retryable is retried
    assert (f"({error}, exit" in str(exc.value)) is (error is not None)


@pytest.mark.parametrize("confirmed", [True, False])
def test_monitor_emits_the_drift_event_only_on_a_confirmed_breach(project, monkeypatch, confirmed: bool):
    import monitoring.run
    from flows import monitor as monitor_flow

    def fake_monitor_once(params, **_):
        reason = "confirmed breach of ['data_drift'] over 3 windows" if confirmed else None
        return monitor_summary(confirmed, "reports/monitoring/x", reason), None

    events: list[dict] = []
    monkeypatch.setattr(monitoring.run, "monitor_once", fake_monitor_once)
    monkeypatch.setattr(monitor_flow, "emit_event", lambda **kw: events.append(kw))
    summary = monitor_flow.monitor()
    if confirmed:
        (event,) = events
        assert event["event"] == "model.drift.detected"
        assert event["resource"] == {"prefect.resource.id": "model.tiny"}
        assert event["payload"]["reason"].startswith("confirmed breach") and event["payload"]["breached"] == [
            "data_drift"
        ]
    else:
        assert events == [] and summary["confirmed"] is False


def test_serve_all_wires_the_schedule_and_the_drift_trigger(project):
    from flows.serve_all import deployments

    params = load_params()
    deps = {d.name: d for d in deployments(params)}
    assert set(deps) == {"training", "promote", "deploy", "monitor", "retrain"}
    assert deps["monitor"].schedules[0].schedule.interval.total_seconds() == params.flows.monitor_interval_minutes * 60
    (trigger,) = deps["retrain"].triggers
    assert trigger.expect == {"model.drift.detected"}
    # the classifier's breach only: a generative breach (model.<register_llm.registered_model>) must not retrain it
    assert trigger.match.root == {"prefect.resource.id": f"model.{params.mlflow.registered_model}"}
    assert params.register_llm.registered_model != params.mlflow.registered_model
    assert trigger.parameters == {"reason": "{{ event.payload.reason }}"}
    assert deps["retrain"]._parameter_openapi_schema.properties.keys() >= {"reason", "options"}


def test_training_reports_each_family_gate_that_decided_in_this_run(project, monkeypatch):
    """register_llm decided now: its outcome under ``llm`` and its own artifacts (LLM metrics, no macro_f1);
    register ran but left last week's reports/promotion.json: the classifier's keys are not reported."""
    import json
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.runtime import flow_run

    from flows.training import TrainingOptions, training
    from pipelines.registry.gate import write_decision

    Path("reports").mkdir()
    stale = {"promote": True, "promoted": True, "challenger_version": "9", "decided_at": "2000-01-01T00:00:00+00:00"}
    Path("reports/promotion.json").write_text(json.dumps(stale))
    scores = {"json_valid_rate": 0.95, "mean_field_score": 0.72, "summary_rouge_l": 0.41}
    run_ids: list[str] = []

    def fake_dvc(cmd: list[str], cwd: str = ".", **_: object) -> subprocess.CompletedProcess:
        run_ids.append(str(flow_run.get_id()))
        if cmd[3] == "register_llm":  # what the stage writes: a refusal of v3 on the LLM's own gate
            decision = {
                "promote": False,
                "promoted": False,
                "reasons": ["mean field score 0.7200 is 0.0300 below the champion's 0.7500 (tolerance 0.0)"],
                "model": "ticket-triage",
                "family": "llm",
                "challenger_version": "3",
                "champion_version_before": "2",
                "champion_version_after": "2",
                "test_rows": 40,
                "challenger": scores,
                "champion": {**scores, "mean_field_score": 0.75},
                "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            write_decision(decision, Path("reports/promotion_llm.md"), Path("reports/promotion_llm.json"))
        return subprocess.CompletedProcess(cmd, 0, f"Running stage '{cmd[3]}'", "")

    monkeypatch.setattr("flows.training.run_command", fake_dvc)
    result = training(TrainingOptions(stages=["register", "register_llm"]))

    assert result["stages"] == ["register", "register_llm"] and result["failed_stage"] is None
    assert result["llm"] == {
        "challenger_version": "3",
        "champion_version_before": "2",
        "champion_version_after": "2",
        "promoted": False,
        "reasons": ["mean field score 0.7200 is 0.0300 below the champion's 0.7500 (tolerance 0.0)"],
    }
    assert "promoted" not in result and "challenger_version" not in result  # the stale classifier decision
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_ids)))
    by_key = {a.key: a for a in found}
    assert {"gate-decision-llm", "test-metrics-llm"} <= set(by_key) and "gate-decision" not in by_key
    report = by_key["gate-decision-llm"].data
    assert "REFUSED" in report and "#/models/ticket-triage" in report
    table = by_key["test-metrics-llm"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert rows == [
        {"model": "challenger v3", **scores},
        {"model": "champion v2", **scores, "mean_field_score": 0.75},
    ]


def test_training_reports_a_skipped_generative_branch_without_registry_links(project, monkeypatch):
    """llm.enabled false: register_llm wrote a skipped record; the result says so under ``llm``, one markdown
    artifact says why, no metrics table, no MLflow links for the llm family. Flipped on again, a skipped record
    left on disk is not reported as this run's."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.runtime import flow_run

    from flows.training import TrainingOptions, training
    from pipelines.llm.skipping import write_skipped

    raw = yaml.safe_load(Path("params.yaml").read_text())
    Path("params.yaml").write_text(yaml.safe_dump({**raw, "llm": {"enabled": False}}))
    run_ids: list[str] = []
    linked: list[str] = []

    def fake_dvc(cmd: list[str], cwd: str = ".", **_: object) -> subprocess.CompletedProcess:
        run_ids.append(str(flow_run.get_id()))
        if cmd[3] == "register_llm":  # what the stage writes with the branch off
            write_skipped("register_llm", Path("reports/promotion_llm.md"), Path("reports/promotion_llm.json"),
                          family="llm")  # fmt: skip
        return subprocess.CompletedProcess(cmd, 0, f"Running stage '{cmd[3]}'", "")

    def links(params, version, family="classifier"):
        linked.append(family)
        return {}

    monkeypatch.setattr("flows.training.run_command", fake_dvc)
    monkeypatch.setattr("flows.common.mlflow_links", links)
    result = training(TrainingOptions(stages=["register_llm"]))

    assert result == {"stages": ["register_llm"], "failed_stage": None, "llm": {"skipped": "llm.enabled is false"}}
    assert linked == []
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_ids)))
    by_key = {a.key: a for a in found}
    assert "gate-decision-llm" in by_key and "test-metrics-llm" not in by_key
    assert "skipped" in by_key["gate-decision-llm"].data and "llm.enabled is false" in by_key["gate-decision-llm"].data

    Path("params.yaml").write_text(yaml.safe_dump({**raw, "llm": {"enabled": True}}))
    monkeypatch.setattr("flows.training.run_command", lambda cmd, *a, **k: subprocess.CompletedProcess(cmd, 0, "", ""))
    result = training(TrainingOptions(stages=["register_llm"]))
    assert "llm" not in result and linked == []
