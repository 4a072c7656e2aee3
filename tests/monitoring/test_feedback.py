"""Retraining on feedback: one set of steps (snapshot, reproduce, lineage, reset) that the CLI and the flows compose.

``dvc`` is faked where the project runs tools (``pipelines.io.run_command``); everything else is real.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import yaml

import pipelines.io
from monitoring import decision as dec
from monitoring import feedback as fb
from pipelines.config import DataConfig, IngestConfig
from pipelines.data.ingestion import ingest, read_snapshots
from pipelines.errors import ConfigError, DataError, PipelineError
from tests.helpers.monitoring import T0, hash_encoder, tickets, write_window


class FakeDvc:
    """Answers ``dvc add`` (writes the .dvc file) and ``dvc repro`` (the register stage's decision)."""

    def __init__(self, version: str = "", repro_exit: int = 0, decided_at: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.version, self.repro_exit, self.decided_at = version, repro_exit, decided_at

    def __call__(self, cmd, cwd=".", *, check=False, env=None):
        self.calls.append(cmd[1:])
        result = subprocess.CompletedProcess(cmd, 0, "", "")
        if cmd[1] == "add":
            with open(cmd[2] + ".dvc", "w") as fh:
                fh.write("outs:\n- md5: abc123\n  path: x\n")
        if cmd[1] == "repro":
            if self.repro_exit:
                result = subprocess.CompletedProcess(cmd, self.repro_exit, "stage 'validate' failed", "")
            else:
                decision = {
                    "decided_at": self.decided_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "challenger_version": self.version,
                    "promoted": True,
                    "reasons": ["better"],
                    "champion_version_after": self.version,
                }
                fb.DECISION.parent.mkdir(parents=True, exist_ok=True)
                fb.DECISION.write_text(json.dumps(decision))
        if check and result.returncode:
            raise pipelines.io.CommandFailed(cmd, result)
        return result


@pytest.fixture
def dvc(monkeypatch) -> FakeDvc:
    fake = FakeDvc()
    monkeypatch.setattr(pipelines.io, "run_command", fake)
    return fake


def test_snapshots_hold_only_new_rows_get_their_dvc_file_and_ingest_reads_them(repo, dvc):
    params = repo["params"]
    params.data.snapshots_dir = str(repo["path"] / "data" / "snapshots")
    log = params.monitor.log_dir
    write_window(log, repo["model"], tickets(60, 1), "1", T0, feedback=0.5, tag="a")
    first = fb.snapshot_feedback(params, now=T0)
    write_window(log, repo["model"], tickets(40, 2), "1", T0 + timedelta(hours=1), tag="b")
    second = fb.snapshot_feedback(params, now=T0 + timedelta(hours=1))
    assert [c[0] for c in dvc.calls] == ["add", "add"] and dvc.calls[1][1] == str(second)
    assert first.with_name(first.name + ".dvc").is_file()
    rows = pd.read_parquet(second)
    assert len(rows) == 40 and rows["id"].str.startswith("b-").all()
    with pytest.raises(DataError, match="no new labelled"):
        fb.snapshot_feedback(params)
    snap = read_snapshots(params.data)
    raw = pd.DataFrame(
        {
            "subject": ["s"] * 2,
            "body": ["b"] * 2,
            "category": ["billing", "refund"],
            "created_at": ["2025-01-01"] * 2,
            "customer_id": ["c", "d"],
            "ticket_id": ["t1", "t2"],
        }
    )
    df, summary = ingest(raw, DataConfig(), IngestConfig(), snap)
    assert summary["snapshot_rows"] == 70 and len(df) == 72


@pytest.mark.integration
def test_a_confirmed_breach_retrains_inline_tags_lineage_and_resets_the_count(repo, dvc):
    """The CLI path (python -m monitoring.run, the drift demo): monitor, snapshot, dvc repro, lineage, reset."""
    from monitoring.run import run_pass
    from pipelines.registry import tracking

    params, version = repo["params"], repo["version"]
    dvc.version, summaries = version, []
    for i, seed in enumerate((7, 8)):
        start = T0 + timedelta(hours=i)
        write_window(params.monitor.log_dir, repo["model"], tickets(300, seed, True), version, start, tag=f"w{i}")
        summaries.append(run_pass(params, encode=hash_encoder, log_mlflow=False)[0])
    assert "retrain" not in summaries[0] and [c[0] for c in dvc.calls] == ["add", "repro"]
    done = summaries[1]["retrain"]
    assert done["version"] == repo["version"] and done["promoted"]
    tags = tracking.Registry(params.mlflow).version(repo["version"]).tags
    assert tags["lineage.snapshot"] == done["snapshot"].split("/")[-1] and tags["lineage.snapshot_md5"] == "abc123"
    assert tags["lineage.snapshot_rows"] == str(len(pd.read_parquet(done["snapshot"])))
    assert "over 2 windows" in tags["lineage.retrain_reason"]
    assert dec.load_state(params.monitor.reports_dir)["consecutive"] == 0
    on_disk = json.loads((repo["path"] / summaries[1]["reports_dir"] / "summary.json").read_text())
    assert on_disk["retrain"]["version"] == repo["version"]


def test_a_failed_or_stale_reproduction_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipelines.io, "run_command", FakeDvc(repro_exit=1))
    with pytest.raises(pipelines.io.CommandFailed, match="stage 'validate' failed"):
        fb.reproduce()
    monkeypatch.setattr(pipelines.io, "run_command", FakeDvc(version="3", decided_at="2020-01-01T00:00:00+00:00"))
    with pytest.raises(PipelineError, match="did not re-run the register stage"):
        fb.reproduce()


def _null_snapshots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"data": {"snapshots_dir": None}, "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/m.db"}})
    )
    from pipelines.config import load_params

    return load_params(tmp_path / "params.yaml")


NULL = r"data.snapshots_dir is null.*unchanged data"


def test_a_null_snapshots_dir_fails_every_retraining_path_before_it_does_anything(tmp_path, monkeypatch, dvc):
    """ingest reads no snapshot when it is null: retraining would silently run on unchanged data."""
    from flows.retrain import RetrainOptions, retrain
    from monitoring.run import run_pass

    params = _null_snapshots(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match=NULL):
        fb.snapshot_feedback(params)
    with pytest.raises(ConfigError, match=NULL):  # the CLI: before the pass (no registry here to judge)
        run_pass(params)
    with pytest.raises(ConfigError, match=NULL):  # the flow: before its first task
        retrain.fn("drift", RetrainOptions())
    assert dvc.calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    params.monitor.retrain_on_breach = False  # report-only monitoring does not need snapshots
    with pytest.raises(DataError, match="no 'champion' version"):
        run_pass(params)


# --------------------------------------------------------------------------- feedback is untrusted input
def _log(rows: list[tuple[str, int, str, int]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions, feedback) frames as the log reads them; rows: (request_id, item, label, minutes after T0)."""
    keys = sorted({(r, i) for r, i, _, _ in rows})
    preds = pd.DataFrame(
        {
            "ts": [T0] * len(keys),
            "request_id": [r for r, _ in keys],
            "item": [i for _, i in keys],
            "text": [f"text of {r}:{i}" for r, i in keys],
            "label": ["billing"] * len(keys),
        }
    )
    feedback = pd.DataFrame(
        {
            "ts": [T0 + timedelta(minutes=m) for *_, m in rows],
            "request_id": [r for r, *_ in rows],
            "item": [i for _, i, *_ in rows],
            "true_label": [lab for _, _, lab, _ in rows],
        }
    )
    return preds, feedback


CONFLICTS = [
    ("r1", 0, "billing", 0),
    ("r1", 0, "refund", 1),  # corrected (or overwritten)
    ("r2", 0, "billing", 0),
    ("r2", 0, "refund", 5),
    ("r2", 0, "billing", 2),  # billing twice, refund last
    ("r3", 0, "refund", 0),
    ("r3", 0, "billing", 1),
    ("r3", 1, "security", 0),  # another item of the same request: its own key
    ("r4", 0, "account_access", 3),
]


@pytest.mark.parametrize(
    "rule, expected",
    [
        (
            "latest",
            {"r1:0": "refund", "r2:0": "refund", "r3:0": "billing", "r3:1": "security", "r4:0": "account_access"},
        ),
        ("majority", {"r2:0": "billing", "r3:1": "security", "r4:0": "account_access"}),  # ties keep no label
        ("drop", {"r3:1": "security", "r4:0": "account_access"}),
    ],
)
def test_several_labels_for_one_item_follow_the_conflict_rule_into_the_snapshot(
    tmp_path, monkeypatch, dvc, rule, expected
):
    from pipelines.config import parse_params

    monkeypatch.chdir(tmp_path)
    preds, feedback = _log(CONFLICTS)
    preds = pd.concat([preds, preds.iloc[:1]], ignore_index=True)  # a replayed prediction counts once
    latest = feedback.sort_values("ts").drop_duplicates(["request_id", "item"], keep="last")
    last_wins = preds.drop_duplicates(["request_id", "item"]).merge(latest.drop(columns="ts"))  # the log's join
    monkeypatch.setattr(fb, "read_log_frames", lambda root: (preds, last_wins, feedback))
    params = parse_params({"data": {"snapshots_dir": "snaps"}, "monitor": {"feedback_conflict": rule}})
    rows = pd.read_parquet(fb.snapshot_feedback(params, now=T0))
    assert dict(zip(rows["id"], rows["label"])) == expected
    assert fb.resolve_labels(feedback, rule).duplicated(["request_id", "item"]).sum() == 0


def test_an_unknown_conflict_rule_is_refused_naming_the_key():
    from pipelines.config import parse_params

    with pytest.raises(ConfigError, match="feedback_conflict"):
        parse_params({"monitor": {"feedback_conflict": "first"}})


def test_with_review_on_retraining_waits_for_a_person_before_reproducing(tmp_path, monkeypatch, dvc):
    from pipelines.config import parse_params
    from pipelines.data import snapshots

    monkeypatch.chdir(tmp_path)
    preds, feedback = _log([("r1", 0, "refund", 0), ("r2", 0, "billing", 0)])
    monkeypatch.setattr(fb, "read_log_frames", lambda root: (preds, preds.iloc[:0], feedback))
    params = parse_params({"data": {"snapshots_dir": "snaps", "snapshots_review": True}})
    done = fb.retrain_on_feedback(params, "drift")
    assert done["awaiting_review"] == [done["snapshot"]] and not done["promoted"] and done["version"] is None
    assert [c[0] for c in dvc.calls] == ["add"]  # no dvc repro on data no one reviewed
    snapshots.review(done["snapshot"], approve=True, reviewer="ana")
    assert fb.awaiting_review(params) == []
    (tmp_path / "snaps" / "by-hand.parquet").write_bytes(b"")  # a new snapshot, not reviewed
    assert fb.awaiting_review(params) == ["snaps/by-hand.parquet"]
    params.data.snapshots_review = False  # the default: no review step, nothing waits
    assert fb.awaiting_review(params) == []


def test_the_retrain_flow_stops_before_training_while_a_snapshot_awaits_review(tmp_path, monkeypatch):
    """The Prefect path takes the same step: no training on data no one reviewed."""
    import logging

    import flows.retrain as flow_module
    from flows.retrain import RetrainOptions, retrain

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"data": {"snapshots_dir": "snaps", "snapshots_review": True}})
    )
    snap = tmp_path / "snaps" / "snapshot-1.parquet"
    monkeypatch.setattr(
        flow_module, "take_snapshot", lambda params: snap.parent.mkdir() or snap.write_bytes(b"") or snap
    )
    monkeypatch.setattr(flow_module, "get_run_logger", lambda: logging.getLogger("retrain"))
    artifacts: list[str] = []
    monkeypatch.setattr(flow_module, "create_markdown_artifact", lambda **kw: artifacts.append(kw["markdown"]))
    monkeypatch.setattr(flow_module, "training", lambda *a, **k: pytest.fail("trained on an unreviewed snapshot"))
    done = retrain.fn("drift", RetrainOptions(params_file="params.yaml"))
    assert done["awaiting_review"] == ["snaps/snapshot-1.parquet"] and done["promoted"] is False
    assert "awaiting review" in artifacts[0] and "monitoring.feedback review snaps/snapshot-1.parquet" in artifacts[0]


def test_the_review_cli_records_a_decision_and_lists_what_is_pending(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.data import snapshots

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"snapshots_dir": "snaps"}}))
    rows = snapshots.snapshot_frame(["r:0"], ["text"], ["billing"], [T0])
    first = snapshots.write_snapshot(rows, tmp_path / "snaps", now=T0)
    second = snapshots.write_snapshot(rows, tmp_path / "snaps", now=T0 + timedelta(hours=1))
    runner = CliRunner()
    done = runner.invoke(fb.cli, ["review", str(first), "--reviewer", "ana", "--reject"])
    assert done.exit_code == 0, done.output
    assert json.loads(snapshots.review_path(first).read_text())["approved"] is False
    listed = runner.invoke(fb.cli, ["pending", "--params", "params.yaml"])
    assert listed.exit_code == 0 and listed.output.split() == [str(second.relative_to(tmp_path))]
    refused = runner.invoke(fb.cli, ["review", "nope.parquet", "--reviewer", "ana"])
    assert refused.exit_code != 0 and "not a snapshot file" in str(refused.exception)
