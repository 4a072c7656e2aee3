"""The prediction log: what serving writes and monitoring reads (no Ray import here).

Layout under ``data/production/`` (the root is ``serve.log_dir`` in params)::

    predictions/date=YYYY-MM-DD/part-<segment>.parquet     (or part-<utc>-<uuid>.parquet, written directly)
    feedback/date=YYYY-MM-DD/part-<segment>.parquet
    _wal/<segment>.jsonl                 rows not yet in a part (serving/log_writer.py)
    _quarantine/wal/<segment>.jsonl      rows that could not be logged, with the reason, for a person to read

Each part file is written whole (temporary name, fsync, ``os.replace``, fsync of the folder), so a reader
never sees half a file. The serving writer (:mod:`serving.log_writer`) names its parts after the write-ahead
segment they come from (``part-<segment>.parquet``), so writing a segment again replaces its parts. Text hashes
are keyed (HMAC-SHA256, :func:`text_hash`), so a hash cannot be reversed by hashing guessed texts without the key.
The key is resolved once by the app builder (``serve.hash_key_env``, ``serve.hash_key_file``, ``serve.hash_key``;
:func:`serving.security.resolve_hash_key`) and handed to every replica's writer, so the same text hashes the same in
every replica, the classifier's and the generative model's, and across their restarts.

A closed day's parts are merged by :mod:`monitoring.compaction` into ``part-compacted-<id>.parquet``, whose Parquet
metadata lists the parts it holds; readers take a partition's parts through :func:`live_parts`, which leaves those
out (so a row is read once while, or after a crash stopped, compaction deleting them).

Schemas are fixed pyarrow schemas (below); rows are made only by
:func:`prediction_row` and :func:`feedback_row`, so every producer writes the same columns and
types; readers get an empty frame with the right columns when nothing was logged yet.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
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

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
FEEDBACK = "feedback"

PREDICTION_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),
        ("item", pa.int32()),  # index of the text within its request
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("text_sha256", pa.string()),  # text_hash(text): HMAC-SHA256 under the key the app builder resolved
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


HASH_KEY_ENV = "TICKETOPS_HASH_KEY"
MIN_HASH_KEY_CHARS = 16
INT32_MAX = 2**31 - 1
MAX_LABEL_CHARS = 200
MAX_ID_CHARS = 128  # request ids: 32 hex (classifier), chatcmpl-/cmpl-<32 hex> (generative)
_hash_key: bytes | None = None


def hash_key_bytes(key: str) -> bytes:
    """A configured hash key as the bytes HMAC takes (a :class:`DataError` when it is too short)."""
    if len(key) < MIN_HASH_KEY_CHARS:
        raise DataError(f"the log's hash key is too short: give at least {MIN_HASH_KEY_CHARS} characters")
    return key.encode("utf-8")


def configure_hash_key(env: str = HASH_KEY_ENV) -> bool:
    """Set this process's default key of :func:`text_hash` from the environment variable ``env``.

    The fallback of a writer that was given no key (``serve.hash_key``, which the app builder resolves from
    ``serve.hash_key_env`` / ``hash_key_file`` and hands to every replica; tests and scripts build services
    without it). Without the variable, a random key of this process is used (hashes then compare only within one
    process, and a leaked log cannot be matched against guessed texts at all); True when the key came from the
    environment."""
    global _hash_key
    value = (os.environ.get(env) or "").strip()  # as the app builder reads it (serving.security.resolve_hash_key)
    if value:
        if len(value) < MIN_HASH_KEY_CHARS:
            raise DataError(f"{env} is too short for a hash key: give at least {MIN_HASH_KEY_CHARS} characters")
        _hash_key = value.encode("utf-8")
        return True
    if _hash_key is None:
        _hash_key = secrets.token_bytes(32)
        log.warning("%s is not set: text hashes in the log are keyed per process (they match only within it)", env)
    return False


def text_hash(text: str, key: bytes | None = None) -> str:
    """HMAC-SHA256 of the UTF-8 text under ``key`` (default: the key :func:`configure_hash_key` set), hex.

    Keyed, unlike a bare sha256: whoever reads the log cannot confirm a guessed text (a card number, a name)
    by hashing it. Never Python's ``hash()``, which changes per process."""
    if key is None:
        if _hash_key is None:
            configure_hash_key()
        key = _hash_key
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()  # type: ignore[arg-type]


def _bounded(field: str, value: Any, limit: int = MAX_ID_CHARS) -> str:
    value = str(value)
    if not value or len(value) > limit:
        raise DataError(f"log field {field!r} must have 1 to {limit} characters; got {len(value)}")
    return value


def _item(item: Any) -> int:
    item = int(item)
    if not 0 <= item <= INT32_MAX:
        raise DataError(f"log field 'item' must be in [0, {INT32_MAX}]; got {item}")
    return item


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
    hash_key: bytes | None = None,
) -> dict[str, Any]:
    """One row of :data:`PREDICTION_SCHEMA`, the only way rows are made (serving, the demo, tests).

    ``text`` is hashed (:func:`text_hash` under ``hash_key``, the writer's; default: the process's);
    ``stored_text`` is what the log keeps (the scrubbed text, or None when params forbid storing it). The label
    and its confidence are the argmax of ``proba`` over ``classes`` (first on ties, as serving answers), so the log
    can never disagree with its own probabilities; ``abstained`` is the served answer's flag (the label stays the
    one the model would have given).
    """
    proba = np.asarray(proba, dtype=float)
    if proba.shape != (len(classes),):
        raise DataError(f"a prediction row needs one probability per class {list(classes)}; got shape {proba.shape}")
    best = int(proba.argmax())
    return {
        "ts": _utc(ts),
        "request_id": _bounded("request_id", request_id),
        "item": _item(item),
        "model_name": str(model_name),
        "model_version": str(model_version),
        "text_sha256": text_hash(text, hash_key),
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
    return {
        "ts": _utc(ts),
        "request_id": _bounded("request_id", request_id),
        "item": _item(item),
        "true_label": _bounded("true_label", true_label, MAX_LABEL_CHARS),
    }


def _utc(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        raise DataError(f"log timestamps must be timezone-aware (UTC); got the naive {ts.isoformat()}")
    return ts.astimezone(timezone.utc)


def write_part(
    root: str | Path, kind: str, rows: list[dict], now: datetime | None = None, *, name: str | None = None
) -> Path | None:
    """Write ``rows`` as one Parquet part file of ``kind`` (predictions | feedback); atomic; returns its path.

    ``name`` (``part-<id>.parquet``) replaces a part of the same name; without it a new unique name is made."""
    if not rows:
        return None
    return write_table_part(root, kind, pa.Table.from_pylist(rows, schema=SCHEMAS[kind]), now, name=name)


def write_table_part(
    root: str | Path, kind: str, table: pa.Table, now: datetime | None = None, *, name: str | None = None
) -> Path:
    """``table`` as ``<root>/<kind>/date=<now>/<name>``: written to a temporary file, fsynced, renamed over
    ``name``, then the folder fsynced, so the part is whole and durable when this returns."""
    now = now or datetime.now(timezone.utc)
    directory = Path(root) / kind / f"date={now:%Y-%m-%d}"
    new_dirs = [d for d in (Path(root), Path(root) / kind, directory) if not d.is_dir()]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or f"part-{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    for d in reversed(new_dirs):  # a new folder's own name lives in its parent
        fsync_dir(d.parent)
    return path


def fsync_dir(directory: str | Path) -> None:
    """Make the names in ``directory`` (a rename, a new or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_parts(files: list[Path], kind: str) -> pd.DataFrame:
    """The rows of these part files of ``kind`` (in file order; the empty frame of its schema if none)."""
    schema = SCHEMAS[kind]
    if not files:
        return schema.empty_table().to_pandas()
    df = pa.concat_tables([pq.read_table(f, schema=schema) for f in files]).to_pandas()
    if "abstained" in df.columns:  # parts written before abstention existed: nothing was abstained then
        df["abstained"] = df["abstained"].eq(True)
    return df


COMPACTED_PREFIX = "part-compacted-"  # a compacted part (monitoring/compaction.py); no writer makes this name
COMPACTED_FROM = b"ticketops.compacted_from"  # its Parquet key-value metadata: JSON list of the part names it holds


def compacted_from(path: str | Path) -> set[str]:
    """The part names a compacted file holds (from its Parquet footer; empty for any other part)."""
    meta = pq.read_metadata(path).metadata or {}
    return set(json.loads(meta.get(COMPACTED_FROM, b"[]")))


def live_parts(directory: str | Path) -> list[Path]:
    """The part files of one ``<kind>/date=...`` partition a reader reads, in name order: every ``part-*.parquet``
    except those a compacted file there already holds (left only while compaction deletes them, after a crash
    stopped it, or rewritten by a late replay of their segment), so a row is never read twice."""
    for _ in range(3):  # a compacted file superseded and deleted while we looked: list again
        files = sorted(Path(directory).glob("part-*.parquet"))
        held: set[str] = set()
        try:
            for f in files:
                if f.name.startswith(COMPACTED_PREFIX):
                    held |= compacted_from(f)
        except FileNotFoundError:
            continue
        return [f for f in files if f.name not in held]
    raise DataError(f"the log partition {directory} keeps changing under compaction; read it again")


def read_log(root: str | Path, kind: str, since: datetime | None = None) -> pd.DataFrame:
    """All rows of ``kind`` under ``root`` (optionally only rows with ``ts >= since``), oldest first."""
    df = read_parts([f for d in sorted((Path(root) / kind).glob("date=*")) for f in live_parts(d)], kind)
    if since is not None:
        df = df[df["ts"] >= pd.Timestamp(since)]
    return df.sort_values(["ts", "request_id", "item"], kind="stable").reset_index(drop=True)


def labelled_predictions(root: str | Path, since: datetime | None = None) -> pd.DataFrame:
    """Predictions joined with the latest feedback label for each (request_id, item); unlabelled rows are dropped."""
    return join_labels(read_log(root, PREDICTIONS, since), read_log(root, FEEDBACK))


def join_labels(preds: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """``preds`` joined with the latest feedback label of each (request_id, item); unlabelled rows dropped."""
    fb = feedback.sort_values("ts").drop_duplicates(["request_id", "item"], keep="last")
    return preds.merge(fb[["request_id", "item", "true_label"]], on=["request_id", "item"], how="inner")
