"""The prediction log: what serving writes and monitoring reads (no Ray import here).

Layout under ``data/production/`` (the root is ``serve.log_dir`` in params)::

    predictions/date=YYYY-MM-DD/part-<utc>-<uuid>.parquet
    feedback/date=YYYY-MM-DD/part-<utc>-<uuid>.parquet

Each part file is written whole (temporary name, then ``os.replace``), so a reader
never sees half a file. Schemas are fixed pyarrow schemas (below); rows are made only by
:func:`prediction_row` and :func:`feedback_row`, so every producer writes the same columns and
types; readers get an empty frame with the right columns when nothing was logged yet.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import DataError

PREDICTIONS = "predictions"
FEEDBACK = "feedback"

PREDICTION_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),
        ("item", pa.int32()),  # index of the text within its request
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("text_sha256", pa.string()),  # text_hash(text): stable across processes and runs
        ("text", pa.string()),  # scrubbed text, or null when params forbid storing text
        ("label", pa.string()),  # predicted label
        ("confidence", pa.float64()),  # probability of the predicted label
        ("abstained", pa.bool_()),  # the model said "none of the above" (label: what it would have given)
        ("probabilities", pa.string()),  # JSON object {class: probability}
        ("latency_ms", pa.float64()),  # request latency as the client saw it
        ("batch_size", pa.int32()),  # size of the model batch this text was computed in
    ]
)

FEEDBACK_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),
        ("item", pa.int32()),
        ("true_label", pa.string()),
    ]
)

SCHEMAS = {PREDICTIONS: PREDICTION_SCHEMA, FEEDBACK: FEEDBACK_SCHEMA}


def text_hash(text: str) -> str:
    """sha256 of the UTF-8 text (never Python's ``hash()``, which changes per process)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def probabilities_json(classes: Iterable[str], proba: Iterable[float]) -> str:
    return json.dumps({str(c): round(float(p), 6) for c, p in zip(classes, proba)}, sort_keys=True)


def prediction_row(
    *,
    ts: datetime,
    request_id: str,
    item: int,
    model_name: str,
    model_version: str,
    text: str,
    stored_text: str | None,
    classes: Sequence[str],
    proba: Sequence[float],
    latency_ms: float,
    batch_size: int,
    abstained: bool = False,
) -> dict[str, Any]:
    """One row of :data:`PREDICTION_SCHEMA`, the only way rows are made (serving, the demo, tests).

    ``text`` is hashed; ``stored_text`` is what the log keeps (the scrubbed text, or None when params forbid
    storing it). The label and its confidence are the argmax of ``proba`` over ``classes`` (first on ties,
    as serving answers), so the log can never disagree with its own probabilities; ``abstained`` is the
    served answer's flag (the label stays the one the model would have given).
    """
    proba = np.asarray(proba, dtype=float)
    if proba.shape != (len(classes),):
        raise DataError(f"a prediction row needs one probability per class {list(classes)}; got shape {proba.shape}")
    best = int(proba.argmax())
    return {
        "ts": _utc(ts),
        "request_id": str(request_id),
        "item": int(item),
        "model_name": str(model_name),
        "model_version": str(model_version),
        "text_sha256": text_hash(text),
        "text": None if stored_text is None else str(stored_text),
        "label": str(classes[best]),
        "confidence": float(proba[best]),
        "abstained": bool(abstained),
        "probabilities": probabilities_json(classes, proba),
        "latency_ms": float(latency_ms),
        "batch_size": int(batch_size),
    }


def feedback_row(*, ts: datetime, request_id: str, item: int, true_label: str) -> dict[str, Any]:
    """One row of :data:`FEEDBACK_SCHEMA`: the true label of text ``item`` of request ``request_id``."""
    return {"ts": _utc(ts), "request_id": str(request_id), "item": int(item), "true_label": str(true_label)}


def _utc(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        raise DataError(f"log timestamps must be timezone-aware (UTC); got the naive {ts.isoformat()}")
    return ts.astimezone(timezone.utc)


def write_part(root: str | Path, kind: str, rows: list[dict], now: datetime | None = None) -> Path | None:
    """Write ``rows`` as one new Parquet part file of ``kind`` (predictions | feedback); atomic; returns its path."""
    if not rows:
        return None
    schema = SCHEMAS[kind]
    now = now or datetime.now(timezone.utc)
    directory = Path(root) / kind / f"date={now:%Y-%m-%d}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"part-{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as fh:
        pq.write_table(table, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_log(root: str | Path, kind: str, since: datetime | None = None) -> pd.DataFrame:
    """All rows of ``kind`` under ``root`` (optionally only rows with ``ts >= since``), oldest first."""
    schema = SCHEMAS[kind]
    files = sorted((Path(root) / kind).glob("date=*/part-*.parquet"))
    if not files:
        return schema.empty_table().to_pandas()
    df = pa.concat_tables([pq.read_table(f, schema=schema) for f in files]).to_pandas()
    if "abstained" in df.columns:  # parts written before abstention existed: nothing was abstained then
        df["abstained"] = df["abstained"].eq(True)
    if since is not None:
        df = df[df["ts"] >= pd.Timestamp(since)]
    return df.sort_values(["ts", "request_id", "item"], kind="stable").reset_index(drop=True)


def labelled_predictions(root: str | Path, since: datetime | None = None) -> pd.DataFrame:
    """Predictions joined with the latest feedback label for each (request_id, item); unlabelled rows are dropped."""
    preds, fb = read_log(root, PREDICTIONS, since), read_log(root, FEEDBACK)
    fb = fb.sort_values("ts").drop_duplicates(["request_id", "item"], keep="last")
    return preds.merge(fb[["request_id", "item", "true_label"]], on=["request_id", "item"], how="inner")
