"""End to end: a tiny-params ``dvc repro leakage`` in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.data import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DVC = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
LEAKY = {"resolved_by_team", "resolution_note", "resolved_at"}
OUTS = [
    "data/processed/split/train.parquet",
    "data/processed/train.parquet",
    "data/processed/val.parquet",
    "data/processed/test.parquet",
    "reports/leakage.json",
    "metrics/leakage.json",
]


def _sh(cwd: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("PYTHONPATH", None)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def _copy_repo(dst: Path, **overrides: dict) -> Path:
    """The pipeline's files (committed or not) in a fresh git + DVC repo, with tiny params."""
    dst.mkdir()
    shutil.copytree(ROOT / "pipelines", dst / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "data" / "snapshots").mkdir(parents=True)  # ingest's declared snapshot directory (committed with a README)
    shutil.copy2(ROOT / "data" / "snapshots" / "README.md", dst / "data" / "snapshots" / "README.md")
    for f in ("dvc.yaml", "pyproject.toml", ".dvcignore", ".gitignore"):
        shutil.copy2(ROOT / f, dst / f)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["generate"].update(n_rows=1500, n_customers=400)
    params["validate"].update(min_class_count=10)
    for section, values in overrides.items():
        params[section].update(values)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh(dst, "git", "init", "-q")
    _sh(dst, DVC, "init", "-q")
    shutil.copy2(ROOT / ".dvc" / "config", dst / ".dvc" / "config")
    return dst


def test_repro_runs_the_data_stages_then_does_no_work(tmp_path):
    # A stratified split: the generator plants duplicates 1-3 days after their source, so under a time split
    # whether any crosses a split boundary is luck of the seed (none did at 1,500 rows once the generator
    # changed); a random split puts dozens on both sides. Eval rows then predate train rows: reported.
    repo = _copy_repo(tmp_path / "repo", split={"strategy": "stratified"}, leakage={"time_order_action": "report"})
    r = _sh(repo, DVC, "repro", "leakage")
    for stage in ("generate", "ingest", "validate", "split", "leakage"):
        assert f"Running stage '{stage}'" in r.stdout, r.stdout
    for out in OUTS:
        assert (repo / out).is_file(), out
    assert (repo / "reports/validation/data_docs/index.html").is_file()
    assert json.loads((repo / "reports/split.json").read_text())["strategy"] == "stratified"

    report = json.loads((repo / "reports/leakage.json").read_text())
    assert report["passed"] is True
    assert set(report["dropped_columns"]) == LEAKY
    flagged = {
        c for f in report["findings"] if f["check"] in ("leaky_column", "post_outcome_column") for c in f["columns"]
    }
    assert flagged == LEAKY
    counts = report["counts"]
    assert counts["exact_duplicates"] + counts["near_duplicates"] > 0 and counts["removed_eval_rows"] > 0
    dup_findings = [f for f in report["findings"] if f["check"].startswith("cross_split_")]
    assert sum(f["count"] for f in dup_findings) == counts["exact_duplicates"] + counts["near_duplicates"]
    assert (repo / "dvc.lock").is_file()

    before = {o: (repo / o).stat().st_mtime_ns for o in OUTS}
    again = _sh(repo, DVC, "repro", "leakage")
    assert "Running stage" not in again.stdout
    assert "didn't change" in again.stdout or "up to date" in again.stdout, again.stdout
    assert before == {o: (repo / o).stat().st_mtime_ns for o in OUTS}

    shown = json.loads(_sh(repo, DVC, "metrics", "show", "--json").stdout)
    metrics = shown[""]["data"]["metrics/leakage.json"]["data"]
    assert metrics["exact_duplicates"] == counts["exact_duplicates"]
    assert metrics["leaky_columns"] == 3 and metrics["blockers"] == 0
    assert shown[""]["data"]["metrics/ingest.json"]["data"]["rows_read"] == 1500


def test_failed_validation_stops_the_pipeline_before_split(tmp_path):
    labels = yaml.safe_load((ROOT / "params.yaml").read_text())["validate"]["expected_labels"]
    repo = _copy_repo(tmp_path / "repo", validate={"expected_labels": [c for c in labels if c != "security"]})
    r = _sh(repo, DVC, "repro", "leakage", check=False)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "data validation failed" in out and "expect_column_values_to_be_in_set" in out
    assert "Running stage 'split'" not in out
    assert not (repo / "data/processed/split").exists()
    for out_file in OUTS:
        assert not (repo / out_file).exists(), out_file
    result = json.loads((repo / "reports/validation/result.json").read_text())
    assert result["success"] is False
