"""The real SMS Spam Collection runs through ingest → validate → split → leakage with only a params change."""

from __future__ import annotations

import pytest

from tests.helpers.data import SHARED_DATASETS
from pipelines.config import parse_params
from pipelines.data.ingestion import ingest, read_source
from pipelines.data.leakage_checks import audit
from pipelines.data.splitting import split_frame
from pipelines.data.quality import run_validation

SMS = SHARED_DATASETS / "sms_spam" / "SMSSpamCollection.tsv"
pytestmark = pytest.mark.skipif(not SMS.is_file(), reason=f"{SMS} not present (../shared/datasets is optional)")


@pytest.fixture(scope="module")
def run():
    params = parse_params({
        "data": {"path": str(SMS), "csv_quoting": False,
                 "columns": {"text": "SMS", "label": "Label", "timestamp": None, "group": None, "id": None}},
        "validate": {"expected_labels": ["ham", "spam"]},
    })
    raw = read_source(params.data)
    df, summary = ingest(raw, params.data, params.ingest)
    validation = run_validation(df, params.validate_)
    parts, split_report = split_frame(df, params.split)
    clean, leakage_report = audit(parts, params.leakage)
    return raw, df, summary, validation, parts, split_report, clean, leakage_report


def test_reads_every_message(run):
    raw, df, summary, *_ = run
    assert len(raw) == summary["rows_read"] == 5574
    assert summary["class_counts"] == {"ham": 4827, "spam": 747}
    assert summary["rows_written"] == 5574
    assert df["text"].str.contains('"', regex=False).any()  # quotes are message text, not CSV quoting


def test_validation_passes(run):
    validation = run[3]
    assert validation.success, validation.summary()


def test_split_is_stratified_and_says_why(run):
    parts, split_report = run[4], run[5]
    assert split_report["strategy"] == "stratified"
    assert "no timestamp and no group column" in split_report["reason"]
    spam_share = {k: (v["label"] == "spam").mean() for k, v in parts.items()}
    assert max(spam_share.values()) - min(spam_share.values()) < 0.01


def test_cross_split_duplicates_found_and_removed_without_blockers(run):
    parts, clean, report = run[4], run[6], run[7]
    counts = report["counts"]
    assert report["passed"] and counts["blockers"] == 0
    assert counts["exact_duplicates"] >= 100, counts
    assert counts["removed_eval_rows"] >= counts["exact_duplicates"] - 50
    train_texts = set(parts["train"]["text"].str.lower())
    assert not clean["test"]["text"].str.lower().isin(train_texts).any()
    assert len(clean["train"]) == len(parts["train"])
    assert not [f for f in report["findings"] if f["check"] in ("leaky_column", "post_outcome_column")]
