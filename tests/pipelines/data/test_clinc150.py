"""CLINC150 runs through every data stage (ingest → validate → split → leakage) with examples/clinc150.params.yaml
as params.yaml and nothing else, and keeps the authors' splits: scored on its own test file.

The stage CLIs run in a temporary project laid out like the repository's neighbourhood (``../shared`` beside
it), so the example's relative paths resolve exactly as they do from the repository.
"""

from __future__ import annotations

import json
import shutil
import time

import pandas as pd
import pytest

from tests.helpers.data import ROOT, SHARED_DATASETS, run_stage

CLINC = SHARED_DATASETS / "clinc150"
ROWS = {"train": 15_100, "val": 3_100, "test": 5_500}
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CLINC / "test.csv").is_file(), reason=f"{CLINC} not present (../shared/datasets is optional)"
    ),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """``<tmp>/repo`` with the example as params.yaml, ``<tmp>/shared`` the shared folder; every data stage run."""
    base = tmp_path_factory.mktemp("clinc")
    (base / "shared").symlink_to(SHARED_DATASETS.parent, target_is_directory=True)
    repo = base / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "examples" / "clinc150.params.yaml", repo / "params.yaml")
    runs, seconds = {}, {}
    for stage in ("ingest", "validate", "split", "leakage"):
        start = time.perf_counter()
        runs[stage] = run_stage(stage, cwd=repo)
        seconds[stage] = round(time.perf_counter() - start, 1)
        assert runs[stage].returncode == 0, (stage, runs[stage].stderr[-3000:])
    print(f"CLINC150 data stages, seconds: {seconds} (total {sum(seconds.values()):.1f})")
    return repo, runs


def _json(repo, name):
    return json.loads((repo / "reports" / name).read_text(encoding="utf-8"))


def test_ingest_reads_every_split_file(project):
    repo, runs = project
    summary = _json(repo, "ingest.json")
    assert summary["split_rows"] == ROWS and summary["rows_written"] == sum(ROWS.values())
    assert summary["n_classes"] == 151 and summary["bad_rows"]["quarantined"] == 0
    assert "given splits: train 15,100, val 3,100, test 5,500" in runs["ingest"].stdout


def test_validation_passes(project):
    repo, _ = project
    assert json.loads((repo / "reports" / "validation" / "result.json").read_text())["success"]


def test_the_authors_splits_are_kept_and_reported(project):
    repo, runs = project
    report = _json(repo, "split.json")
    assert report["strategy"] == "given" and report["rows"] == report["given_rows"] == ROWS
    assert runs["split"].stdout.startswith("split: given (")
    for name in ROWS:
        official = pd.read_csv(CLINC / f"{name}.csv")
        ours = pd.read_parquet(repo / "data" / "processed" / f"{name}.parquet")
        assert list(ours["label"]) == list(official["intent"]), name  # same rows, same order: nothing removed
        assert (ours["text"] == official["text"]).mean() > 0.999, name  # only PII scrubbing may touch a text


def test_leakage_reports_cross_split_copies_and_keeps_the_official_test_file(project):
    repo, _ = project
    report = _json(repo, "leakage.json")
    counts = report["counts"]
    assert report["passed"] and report["given_splits"] and counts["blockers"] == 0
    assert counts["exact_duplicates"] > 0 and counts["near_duplicates"] > 0 and counts["removed_eval_rows"] == 0
    assert {f["action"] for f in report["findings"] if f["check"].startswith("cross_split")} == {"reported"}
    assert counts["unseen_class_rows"] == 0 and (counts["rows_train"], counts["rows_test"]) == (15_100, 5_500)
    oos = pd.read_parquet(repo / "data" / "processed" / "test.parquet")["label"].eq("oos").sum()
    assert oos == 1_000  # the out-of-scope test queries are all there
