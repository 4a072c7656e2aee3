"""The generative model's records in the prediction log, through the classifier's durable writer.

Layout beside the classifier's kinds under ``serve.log_dir`` (``data/production/``)::

    generations/date=YYYY-MM-DD/part-<segment>.parquet           one row per answered /v1 request
    generation_feedback/date=YYYY-MM-DD/part-<segment>.parquet   corrected triage fields (POST /feedback)

Rows are made only by :func:`generation_row` and :func:`generation_feedback_row` (fixed pyarrow schemas).
:class:`GenerationLogWriter` is :class:`serving.log_writer.LogWriter` (schema-checked appends, write-ahead file,
idempotent atomic part files, quarantine of bad rows, recovery of a dead replica's rows) with these two kinds
and its own write-ahead folder (``_wal_llm``), so the classifier's writer, which knows only its own kinds, never
recovers a generative segment and the reverse.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from serving.log_writer import LogWriter
from serving.prediction_log import live_parts, text_hash, write_table_part

log = logging.getLogger(__name__)

GENERATIONS = "generations"
GENERATION_FEEDBACK = "generation_feedback"
WAL_DIR = "_wal_llm"

GENERATION_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),  # chatcmpl-<hex> | cmpl-<hex>, what the client got as "id"
        ("endpoint", pa.string()),  # chat | completion
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("prompt_sha256", pa.string()),  # text_hash (keyed HMAC-SHA256) of the prompt as sent (chat: messages as JSON)
        ("prompt", pa.string()),  # PII-scrubbed; chat: JSON list of {role, content}; null when log_text is off
        ("output_sha256", pa.string()),
        ("output", pa.string()),  # PII-scrubbed answer; null when log_text is off
        ("response_format", pa.string()),  # text | json_object | json_schema
        ("json_valid", pa.bool_()),  # the answer parses as JSON (null: a text answer)
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("ttft_ms", pa.float64()),  # time to first token, inside the replica
        ("latency_ms", pa.float64()),  # whole request, inside the replica
        ("finish_reason", pa.string()),  # stop | length | abort (the client went away)
        ("max_tokens", pa.int32()),
        ("temperature", pa.float64()),
    ]
)

GENERATION_FEEDBACK_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),
        ("fields", pa.string()),  # JSON of the corrected fields the client sent (null values kept)
        ("category", pa.string()),  # the corrected category, when given (the classifier's label)
        ("matched", pa.bool_()),  # the request id is a recent answer of the replica that recorded it
    ]
)

SCHEMAS = {GENERATIONS: GENERATION_SCHEMA, GENERATION_FEEDBACK: GENERATION_FEEDBACK_SCHEMA}


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def json_valid(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def generation_row(
    *,
    ts: datetime,
    request_id: str,
    endpoint: str,
    model_name: str,
    model_version: str,
    prompt: str,
    stored_prompt: str | None,
    output: str,
    stored_output: str | None,
    response_format: str,
    prompt_tokens: int,
    completion_tokens: int,
    ttft_ms: float | None,
    latency_ms: float,
    finish_reason: str,
    max_tokens: int,
    temperature: float,
    hash_key: bytes | None = None,
) -> dict[str, Any]:
    """One row of :data:`GENERATION_SCHEMA`; ``prompt``/``output`` are hashed (:func:`text_hash` under ``hash_key``,
    the writer's; default: the process's), ``stored_*`` are what is kept."""
    return {
        "ts": _utc(ts),
        "request_id": str(request_id),
        "endpoint": str(endpoint),
        "model_name": str(model_name),
        "model_version": str(model_version),
        "prompt_sha256": text_hash(prompt, hash_key),
        "prompt": stored_prompt,
        "output_sha256": text_hash(output, hash_key),
        "output": stored_output,
        "response_format": str(response_format),
        "json_valid": None if response_format == "text" else json_valid(output),
        "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(completion_tokens),
        "ttft_ms": None if ttft_ms is None else float(ttft_ms),
        "latency_ms": float(latency_ms),
        "finish_reason": str(finish_reason),
        "max_tokens": int(max_tokens),
        "temperature": float(temperature),
    }


def generation_feedback_row(
    *, ts: datetime, request_id: str, fields: dict[str, str | None], matched: bool
) -> dict[str, Any]:
    return {
        "ts": _utc(ts),
        "request_id": str(request_id),
        "fields": json.dumps(fields, sort_keys=True),
        "category": fields.get("category"),
        "matched": bool(matched),
    }


def write_part(
    root: str | Path, kind: str, rows: list[dict], now: datetime | None = None, *, name: str | None = None
) -> Path | None:
    """One Parquet part of ``kind`` (atomic and fsynced, as the classifier's; ``name`` replaces a part)."""
    if not rows:
        return None
    return write_table_part(root, kind, pa.Table.from_pylist(rows, schema=SCHEMAS[kind]), now, name=name)


def read_generations(root: str | Path, kind: str = GENERATIONS) -> pd.DataFrame:
    """Every row of ``kind`` under ``root``, oldest first (an empty frame with the columns when none)."""
    files = [f for d in sorted((Path(root) / kind).glob("date=*")) for f in live_parts(d)]  # compacted: once
    if not files:
        return SCHEMAS[kind].empty_table().to_pandas()
    df = pa.concat_tables([pq.read_table(f, schema=SCHEMAS[kind]) for f in files]).to_pandas()
    return df.sort_values(["ts", "request_id"], kind="stable").reset_index(drop=True)


class GenerationLogWriter(LogWriter):
    """:class:`~serving.log_writer.LogWriter` for :data:`GENERATIONS` and :data:`GENERATION_FEEDBACK`, under its
    own write-ahead folder."""

    WAL_DIR = WAL_DIR
    SCHEMAS = SCHEMAS
    NAME = "generation log"


def recover(root: str | Path) -> int:
    """Rows of write-ahead segments whose writer died, written as part files (a live writer's are skipped)."""
    return GenerationLogWriter.recover(root)
