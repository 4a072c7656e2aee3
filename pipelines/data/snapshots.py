"""Labelled production snapshots: the one owner of their schema, of writing one and of reading them all.

A snapshot is ``<data.snapshots_dir>/snapshot-<utc>.parquet``: labelled production rows (monitoring
builds them from the prediction log and its feedback) that ingest appends to the raw data, so the next
``dvc repro`` trains on them. Columns (:data:`SCHEMA`):

=========  ==========================================================
id         string; unique across snapshots (``request_id:item`` for production rows)
text       string; the text as it was logged (already PII-scrubbed by serving)
label      string; the true label from feedback
timestamp  timestamp (UTC); when the text was predicted
=========  ==========================================================

A file is written once (exclusive create) and never overwritten, so the snapshot DVC recorded never
changes under it, and a row already in a snapshot is never written again (:func:`new_rows`). A file put
there by hand needs only ``text`` and ``label`` (a row without an id gets ``<file name>:<row>``).

Snapshot rows are untrusted: whoever can call ``POST /feedback`` chose their labels. They may train (the
split stage puts them in train or val, never in the test split the gate scores, through :func:`used_ids`),
and with ``data.snapshots_review: true`` ingest reads only the snapshots a person approved: a review is a
``<snapshot>.review.json`` next to it (:func:`review`; ``python -m monitoring.feedback review``) holding the
decision and the sha256 of the file approved, so a file changed after its review is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import DataConfig
from pipelines.errors import ConfigError, DataError
from pipelines.io import file_sha256

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
    ]
)
COLUMNS = tuple(SCHEMA.names)
REQUIRED = ("text", "label")  # what ingest needs from every snapshot file
FILES = "*.parquet"  # what ingest reads from the directory (snapshots written here are snapshot-<utc>.parquet)
REVIEW_SUFFIX = ".review.json"  # <snapshot>.review.json: a person's decision on that snapshot


def snapshots_dir(data: DataConfig) -> Path:
    """``data.snapshots_dir`` as a path; an error when it is null, since ingest then reads no snapshot at all
    and a retraining would silently run on unchanged data."""
    if not data.snapshots_dir:
        raise ConfigError(
            "data.snapshots_dir is null, so ingest reads no labelled production snapshots and retraining would "
            "run on unchanged data; set data.snapshots_dir (e.g. data/snapshots, as dvc.yaml's ingest deps) to retrain"
        )
    return Path(data.snapshots_dir)


def snapshot_frame(
    ids: Iterable[str], texts: Iterable[str], labels: Iterable[str], timestamps: Iterable[datetime]
) -> pd.DataFrame:
    """Rows in the snapshot's columns and types (timestamps as UTC)."""
    return pd.DataFrame(
        {
            "id": pd.Series(list(ids), dtype=object).astype(str),
            "text": pd.Series(list(texts), dtype=object).astype(str),
            "label": pd.Series(list(labels), dtype=object).astype(str),
            "timestamp": pd.to_datetime(pd.Series(list(timestamps), dtype=object), utc=True),
        },
        columns=list(COLUMNS),
    )


def read_snapshots(directory: str | Path | None, reviewed_only: bool = False) -> pd.DataFrame | None:
    """Every snapshot file of ``directory`` in one frame (the columns of :data:`COLUMNS` each file has; a row
    without an id gets ``<file name>:<row>``); None when the directory is unset, absent or holds no snapshot.
    With ``reviewed_only`` (``data.snapshots_review``) only the snapshots a review approved are read."""
    if not directory or not Path(directory).is_dir():
        return None
    files = sorted(Path(directory).glob(FILES))
    if reviewed_only:
        files = [f for f in files if approved(f)]
    if not files:
        return None
    frames = []
    for f in files:
        snap = pd.read_parquet(f)
        missing = [c for c in REQUIRED if c not in snap.columns]
        if missing:
            raise DataError(f"snapshot {f} lacks column(s) {missing}; snapshots need {list(COLUMNS)}")
        snap = snap[[c for c in COLUMNS if c in snap.columns]].reset_index(drop=True)
        fallback = pd.Series([f"{f.name}:{i}" for i in range(len(snap))], dtype=object)
        snap["id"] = snap["id"].astype(object).where(snap["id"].notna(), fallback) if "id" in snap else fallback
        frames.append(snap[[c for c in COLUMNS if c in snap.columns]])
    return pd.concat(frames, ignore_index=True)


def review_path(snapshot: str | Path) -> Path:
    return Path(f"{snapshot}{REVIEW_SUFFIX}")


def review(snapshot: str | Path, approve: bool, reviewer: str, now: datetime | None = None) -> Path:
    """Record a person's decision on ``snapshot`` (with the sha256 of the file decided on); return the record."""
    snapshot = Path(snapshot)
    if not snapshot.is_file() or not snapshot.name.endswith(".parquet"):
        raise DataError(f"{snapshot} is not a snapshot file (a .parquet file in data.snapshots_dir)")
    if not reviewer.strip():
        raise DataError("a review names its reviewer")
    record = {
        "snapshot": snapshot.name,
        "approved": bool(approve),
        "sha256": file_sha256(snapshot),
        "reviewer": reviewer.strip(),
        "reviewed_at": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
    }
    path = review_path(snapshot)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def approved(snapshot: str | Path) -> bool:
    """Whether a review approved ``snapshot`` as it is now; an error when the file changed after its review."""
    path = review_path(snapshot)
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        decision, digest = record["approved"], record["sha256"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path} is not a review record (approved, sha256); review {snapshot} again") from None
    if decision is not True:
        return False
    if digest != file_sha256(snapshot):
        raise DataError(f"snapshot {snapshot} changed after its review ({path}); review it again before it is used")
    return True


def pending_review(directory: str | Path | None) -> list[Path]:
    """Snapshot files of ``directory`` that no review decided on yet."""
    if not directory or not Path(directory).is_dir():
        return []
    return [f for f in sorted(Path(directory).glob(FILES)) if not review_path(f).is_file()]


def used_ids(directory: str | Path | None) -> set[str]:
    """Ids of every row in a snapshot of ``directory`` (reviewed or not): never written again, never in test."""
    snaps = read_snapshots(directory)
    if snaps is None or "id" not in snaps.columns:
        return set()
    return set(snaps["id"].dropna().astype(str))


def new_rows(rows: pd.DataFrame, used: set[str]) -> pd.DataFrame:
    """``rows`` without ids already used (and without repeated ids: the last one wins; the rule that picked one
    label per id is :func:`monitoring.feedback.resolve_labels`'s). A row once in a snapshot keeps its label."""
    rows = rows.drop_duplicates("id", keep="last")
    return rows[~rows["id"].isin(used)].reset_index(drop=True)


def write_snapshot(rows: pd.DataFrame, directory: str | Path, now: datetime | None = None) -> Path:
    """Write ``snapshot-<utc>.parquet`` with exactly :data:`SCHEMA` (exclusive create: never overwritten)."""
    if rows.empty:
        raise DataError("no new labelled production rows to snapshot (all labelled rows are in earlier snapshots)")
    if list(rows.columns) != list(COLUMNS):
        raise DataError(f"snapshot rows have columns {list(rows.columns)}; a snapshot has {list(COLUMNS)}")
    now = now or datetime.now(timezone.utc)
    path = Path(directory) / f"snapshot-{now:%Y%m%dT%H%M%S%fZ}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    pq.write_table(pa.Table.from_pandas(rows, schema=SCHEMA, preserve_index=False), tmp)
    try:
        os.link(tmp, path)  # fails if the name exists: never overwrite
    except FileExistsError:
        raise DataError(f"snapshot {path} already exists; not overwriting it") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
