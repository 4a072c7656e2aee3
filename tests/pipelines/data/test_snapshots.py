"""Snapshots have one owner: its schema is what is written, what ingest reads and what monitoring produces."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.config import DataConfig
from pipelines.data import snapshots
from pipelines.errors import ConfigError, DataError

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _rows(ids: list[str]) -> pd.DataFrame:
    return snapshots.snapshot_frame(ids, [f"text {i}" for i in ids], ["billing"] * len(ids), [T0] * len(ids))


def test_a_written_snapshot_has_exactly_the_schema_and_reads_back(tmp_path):
    path = snapshots.write_snapshot(_rows(["a:0", "b:0"]), tmp_path, now=T0)
    assert path.name == "snapshot-20260301T000000000000Z.parquet"
    assert pq.read_schema(path).remove_metadata() == snapshots.SCHEMA
    back = snapshots.read_snapshots(tmp_path)
    assert list(back.columns) == list(snapshots.COLUMNS) and back["id"].tolist() == ["a:0", "b:0"]
    assert back["timestamp"].iloc[0] == pd.Timestamp(T0)


def test_snapshots_are_never_overwritten_and_hold_only_new_rows(tmp_path):
    first = snapshots.write_snapshot(_rows(["a:0"]), tmp_path, now=T0)
    before = first.read_bytes()
    with pytest.raises(DataError, match="already exists"):
        snapshots.write_snapshot(_rows(["b:0"]), tmp_path, now=T0)
    assert first.read_bytes() == before
    fresh = snapshots.new_rows(_rows(["a:0", "b:0", "b:0"]), snapshots.used_ids(tmp_path))
    assert fresh["id"].tolist() == ["b:0"]
    with pytest.raises(DataError, match="no new labelled"):
        snapshots.write_snapshot(fresh.iloc[:0], tmp_path)


def test_rows_in_other_columns_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"a snapshot has \['id', 'text', 'label', 'timestamp'\]"):
        snapshots.write_snapshot(_rows(["a:0"]).rename(columns={"label": "true_label"}), tmp_path)


def test_ingest_reads_through_the_owner_and_a_hand_made_file_needs_text_and_label(tmp_path):
    from pipelines.data.ingestion import read_snapshots

    snapshots.write_snapshot(_rows(["a:0"]), tmp_path, now=T0)
    pd.DataFrame({"text": ["by hand"], "label": ["refund"]}).to_parquet(tmp_path / "extra.parquet")
    got = read_snapshots(DataConfig(snapshots_dir=str(tmp_path)))
    pd.testing.assert_frame_equal(got, snapshots.read_snapshots(tmp_path))
    assert got["text"].tolist() == ["by hand", "text a:0"]
    # a row without an id gets one (its file and row), so the split stage can keep it out of test
    assert got["id"].tolist() == ["extra.parquet:0", "a:0"] and snapshots.used_ids(tmp_path) == {
        "a:0",
        "extra.parquet:0",
    }
    assert read_snapshots(DataConfig(snapshots_dir=None)) is None
    pd.DataFrame({"text": ["no label"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet lacks column\(s\) \['label'\]"):
        snapshots.read_snapshots(tmp_path)


def test_a_null_snapshots_dir_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"data.snapshots_dir is null.*unchanged data"):
        snapshots.snapshots_dir(DataConfig(snapshots_dir=None))
    assert str(snapshots.snapshots_dir(DataConfig(snapshots_dir="data/snaps"))) == "data/snaps"


def test_monitoring_feedback_rows_are_snapshot_rows():
    from monitoring.feedback import feedback_rows

    labelled = pd.DataFrame(
        {
            "ts": [T0, T0 + timedelta(seconds=1), T0],
            "request_id": ["r", "r", "s"],
            "item": [0, 1, 0],
            "text": ["one", "two", None],  # a row logged without text cannot train anything
            "true_label": ["billing", "refund", "billing"],
        }
    )
    rows = feedback_rows(labelled)
    assert list(rows.columns) == list(snapshots.COLUMNS) and rows["id"].tolist() == ["r:0", "r:1"]
    expected = snapshots.snapshot_frame(["r:0", "r:1"], ["one", "two"], ["billing", "refund"], labelled["ts"][:2])
    pd.testing.assert_frame_equal(rows, expected)


def test_with_review_on_only_approved_unchanged_snapshots_are_read(tmp_path):
    """data.snapshots_review: a snapshot is used once a person approved exactly that file."""
    first = snapshots.write_snapshot(_rows(["a:0"]), tmp_path, now=T0)
    second = snapshots.write_snapshot(_rows(["b:0"]), tmp_path, now=T0 + timedelta(hours=1))
    assert snapshots.read_snapshots(tmp_path, reviewed_only=True) is None
    assert snapshots.pending_review(tmp_path) == [first, second]
    record = snapshots.review(first, approve=True, reviewer="ana", now=T0)
    snapshots.review(second, approve=False, reviewer="ana", now=T0)
    assert record.name == first.name + ".review.json" and snapshots.pending_review(tmp_path) == []
    assert snapshots.read_snapshots(tmp_path, reviewed_only=True)["id"].tolist() == ["a:0"]
    assert len(snapshots.read_snapshots(tmp_path)) == 2  # review off (the default): every snapshot
    assert snapshots.used_ids(tmp_path) == {"a:0", "b:0"}  # a rejected row is never snapshotted again
    first.chmod(0o644)
    _rows(["z:0"]).to_parquet(first)  # swapped after the review
    with pytest.raises(DataError, match="changed after its review"):
        snapshots.read_snapshots(tmp_path, reviewed_only=True)
    with pytest.raises(DataError, match="names its reviewer"):
        snapshots.review(second, approve=True, reviewer=" ")
    with pytest.raises(DataError, match="not a snapshot file"):
        snapshots.review(tmp_path / "nope.parquet", approve=True, reviewer="ana")


def test_ingest_honours_the_review_param(tmp_path):
    from pipelines.data.ingestion import read_snapshots

    path = snapshots.write_snapshot(_rows(["a:0"]), tmp_path, now=T0)
    reviewed = DataConfig(snapshots_dir=str(tmp_path), snapshots_review=True)
    assert read_snapshots(reviewed) is None and len(read_snapshots(DataConfig(snapshots_dir=str(tmp_path)))) == 1
    snapshots.review(path, approve=True, reviewer="ana")
    assert read_snapshots(reviewed)["id"].tolist() == ["a:0"]
