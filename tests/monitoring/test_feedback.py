"""Feedback loop: snapshots are new files with only new rows, ingest reads them, retrain records lineage."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta

import pandas as pd
import pytest

from monitoring import feedback as fb
from monitoring.windows import read_log_frames
from pipelines.config import DataConfig, IngestConfig
from pipelines.data.ingestion import ingest, read_snapshots
from pipelines.errors import DataError
from tests.helpers.monitoring import T0, tickets, write_window


def test_new_snapshot_never_overwrites_and_holds_only_new_rows(tmp_path, trained):
    log, snaps = tmp_path / "log", tmp_path / "data" / "snapshots"
    write_window(log, trained, tickets(60, 1), "1", T0, feedback=0.5, tag="a")
    first = fb.write_snapshot(fb.snapshot_rows(read_log_frames(log)[1], fb.used_ids(snaps)), snaps, now=T0)
    write_window(log, trained, tickets(40, 2), "1", T0 + timedelta(hours=1), tag="b")
    before = first.read_bytes()
    rows = fb.snapshot_rows(read_log_frames(log)[1], fb.used_ids(snaps))
    assert len(rows) == 40 and rows["id"].str.startswith("b-").all()
    with pytest.raises(DataError, match="already exists"):
        fb.write_snapshot(rows, snaps, now=T0)
    second = fb.write_snapshot(rows, snaps, now=T0 + timedelta(hours=1))
    assert first != second and first.read_bytes() == before
    assert list(pd.read_parquet(second).columns) == ["id", "text", "label", "timestamp"]
    with pytest.raises(DataError, match="no new labelled"):
        fb.write_snapshot(fb.snapshot_rows(read_log_frames(log)[1], fb.used_ids(snaps)), snaps)
    # ingest appends both snapshots (canonical columns) to the raw data
    snap = read_snapshots(DataConfig(snapshots_dir=str(snaps)))
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
def test_feedback_loop_adds_snapshot_runs_repro_and_tags_lineage(repo, monkeypatch):
    path, params = repo["path"], repo["params"]
    log = params.monitor.log_dir
    write_window(log, repo["model"], tickets(30, 4), repo["version"], T0)
    (path / "params.yaml").write_text(json.dumps(params.model_dump(by_alias=True)))  # JSON is YAML
    calls = []

    def runner(cmd, **kw):
        calls.append(cmd[1:])
        if cmd[1] == "add":
            (path / (cmd[2] + ".dvc")).write_text("outs:\n- md5: abc123\n  path: x\n")
        if cmd[1] == "repro":
            (path / "reports").mkdir(exist_ok=True)
            (path / "reports" / "promotion.json").write_text(
                json.dumps(
                    {
                        "challenger_version": repo["version"],
                        "promoted": True,
                        "reasons": ["better"],
                        "champion_version_after": repo["version"],
                    }
                )
            )
        return subprocess.CompletedProcess(cmd, 0, "", "")

    out = fb.feedback_loop(path, read_log_frames(log)[1], path / "data" / "snapshots", reason="test", runner=runner)
    assert [c[0] for c in calls] == ["add", "repro"] and calls[0][1].startswith("data/snapshots/snapshot-")
    assert out["snapshot_rows"] == 30 and out["promoted"]
    from pipelines.registry import tracking

    tags = tracking.Registry(params.mlflow).version(repo["version"]).tags
    assert tags["lineage.snapshot"] == out["snapshot"].split("/")[-1] and tags["lineage.snapshot_md5"] == "abc123"
    assert tags["lineage.snapshot_rows"] == "30"


@pytest.mark.integration
def test_failed_repro_is_an_error_with_output(tmp_path):
    def runner(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "stage 'validate' failed", "")

    with pytest.raises(Exception, match="stage 'validate' failed"):
        fb.retrain(tmp_path, tmp_path / "s.parquet", runner=runner)
