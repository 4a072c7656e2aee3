"""Feedback is untrusted: rows of the labelled production snapshots may train, never enter the gate's test split.

Whoever can call ``POST /feedback`` chooses those labels, so the split stage takes them apart (by id, from
``data.snapshots_dir``): the other rows are split as if there were no feedback, and each feedback row joins
train (or, under the time strategy when it is newer than evaluation data, val).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from pipelines.config import LeakageConfig, SplitConfig
from pipelines.data import snapshots
from pipelines.data.leakage_checks import check_splits
from pipelines.data.splitting import split_frame
from tests.helpers.data import write_params

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)  # after every row of clean_df: production comes last


def _feedback(n: int, start: datetime = T0) -> pd.DataFrame:
    """``n`` snapshot rows as ingest appends them (naive UTC timestamps, no group)."""
    ids = [f"{i:032x}:0" for i in range(n)]
    labels = ["billing", "refund", "account_access"] * n
    rows = snapshots.snapshot_frame(
        ids, [f"poisoned {i}" for i in ids], labels[:n], [start + timedelta(hours=i) for i in range(n)]
    )
    rows["timestamp"] = rows["timestamp"].dt.tz_localize(None).astype("datetime64[ns]")
    return rows


def _with_feedback(primary: pd.DataFrame, fb: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([primary, fb.astype({"id": "string", "text": "string", "label": "string"})], ignore_index=True)


@pytest.mark.parametrize("strategy", ["time", "group", "stratified"])
def test_feedback_never_enters_test_and_test_is_what_it_would_be_without_it(clean_df, strategy):
    fb = _feedback(120)
    parts, report = split_frame(_with_feedback(clean_df, fb), SplitConfig(strategy=strategy), set(fb["id"]))
    alone, _ = split_frame(clean_df, SplitConfig(strategy=strategy))
    assert not parts["test"]["id"].isin(fb["id"]).any()
    assert parts["test"]["id"].tolist() == alone["test"]["id"].tolist()  # feedback cannot shape the gate's data
    placed = pd.concat([parts["train"], parts["val"]])
    assert sorted(placed.loc[placed["id"].isin(fb["id"]), "id"]) == sorted(fb["id"])  # none lost
    assert report["feedback_rows"]["test"] == 0 and sum(report["feedback_rows"].values()) == len(fb)
    assert "120 feedback row(s) (data.snapshots_dir) kept out of test" in report["reason"]
    if strategy != "time":
        assert report["feedback_rows"] == {"train": 120, "val": 0, "test": 0}


def test_time_split_trains_on_older_feedback_and_validates_on_newer_without_breaking_time_order(clean_df):
    """Newer feedback in train would put training data after evaluation data (the leakage stage blocks that)."""
    old = _feedback(30, start=datetime(2025, 1, 2))  # among the oldest primary rows
    new = _feedback(40, start=T0)
    new["id"] = "new-" + new["id"]
    fb = pd.concat([old, new], ignore_index=True)
    parts, report = split_frame(_with_feedback(clean_df, fb), SplitConfig(strategy="time"), set(fb["id"]))
    assert set(parts["train"]["id"]) >= set(old["id"]) and set(parts["val"]["id"]) >= set(new["id"])
    assert report["feedback_rows"] == {"train": 30, "val": 40, "test": 0}
    findings = check_splits(parts, LeakageConfig())
    assert not [f for f in findings if f["check"] == "eval_older_than_train"], findings


def test_given_splits_keep_feedback_out_of_test_even_when_it_says_test(clean_df):
    df = clean_df.assign(split=pd.array(["train"] * 400 + ["val"] * 100 + ["test"] * 100, dtype="string"))
    fb = _feedback(20).assign(split="test")  # however a row got there, a feedback id is never in test
    parts, report = split_frame(_with_feedback(df, fb), SplitConfig(), set(fb["id"]))
    assert report["strategy"] == "given" and not parts["test"]["id"].isin(fb["id"]).any()
    assert report["feedback_rows"] == {"train": 20, "val": 0, "test": 0} and len(parts["test"]) == 100


def test_the_stage_reads_the_feedback_ids_from_the_snapshots_dir(tmp_path, clean_df):
    """The split CLI (what `dvc repro` runs): the newest rows are feedback, and none of them reaches test.parquet."""
    from pipelines.split import main

    snaps = tmp_path / "snapshots"
    fb = _feedback(90)
    snapshots.write_snapshot(snapshots.snapshot_frame(fb["id"], fb["text"], fb["label"], fb["timestamp"]), snaps, T0)
    pd.DataFrame({"text": ["by hand"] * 3, "label": ["refund"] * 3}).to_parquet(snaps / "by-hand.parquet")
    hand = pd.DataFrame(
        {
            "id": [f"by-hand.parquet:{i}" for i in range(3)],  # the ids read_snapshots gives rows without one
            "text": ["by hand"] * 3,
            "label": ["refund"] * 3,
            "timestamp": [pd.NaT] * 3,
        }
    )
    data = tmp_path / "interim.parquet"
    _with_feedback(clean_df, pd.concat([fb, hand], ignore_index=True)).to_parquet(data)
    params = write_params(tmp_path / "params.yaml", data={"snapshots_dir": str(snaps)})
    main(params=params, data=data, out_dir=tmp_path / "split", report=tmp_path / "split.json")
    test = pd.read_parquet(tmp_path / "split" / "test.parquet")
    assert len(test) == 90 and not test["id"].isin([*fb["id"], *hand["id"]]).any()
    report = json.loads((tmp_path / "split.json").read_text())
    assert report["feedback_rows"] == {"train": 0, "val": 93, "test": 0}
