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
there by hand needs only ``text`` and ``label``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import DataConfig
from pipelines.errors import ConfigError, DataError

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


def read_snapshots(directory: str | Path | None) -> pd.DataFrame | None:
    """Every snapshot file of ``directory`` in one frame (the columns of :data:`COLUMNS` each file has);
    None when the directory is unset, absent or holds no snapshot."""
    if not directory or not Path(directory).is_dir():
        return None
    files = sorted(Path(directory).glob(FILES))
    if not files:
        return None
    frames = []
    for f in files:
        snap = pd.read_parquet(f)
        missing = [c for c in REQUIRED if c not in snap.columns]
        if missing:
            raise DataError(f"snapshot {f} lacks column(s) {missing}; snapshots need {list(COLUMNS)}")
        frames.append(snap[[c for c in COLUMNS if c in snap.columns]])
    return pd.concat(frames, ignore_index=True)


def used_ids(directory: str | Path) -> set[str]:
    """Ids of every row already in a snapshot of ``directory``."""
    snaps = read_snapshots(directory)
    if snaps is None or "id" not in snaps.columns:
        return set()
    return set(snaps["id"].dropna().astype(str))


def new_rows(rows: pd.DataFrame, used: set[str]) -> pd.DataFrame:
    """``rows`` without ids already used (and without repeated ids: the last one wins)."""
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
