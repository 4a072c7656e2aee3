"""Library of the ``ingest`` stage (its CLI is :mod:`pipelines.ingest`).

ingest: read the raw source, map columns to the canonical schema, clean and scrub text.

Canonical schema (``data/interim/dataset.parquet``):

=========  ==========================================================
id         string; the mapped id column, or ``row-<n>`` when none
text       string; the mapped text column(s) joined, HTML stripped, PII scrubbed
label      string
timestamp  datetime64[ns] (only when mapped)
group      string (only when mapped), e.g. a customer id
...        every other source column, unchanged (the leakage stage inspects them)
=========  ==========================================================

PII (e-mail addresses, phone numbers) is replaced by ``<EMAIL>``/``<PHONE>`` here,
before anything downstream stores the text.
"""

from __future__ import annotations

import codecs
import csv
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipelines.config import ColumnMap, DataConfig, IngestConfig
from pipelines.data import snapshots
from pipelines.errors import DataError

CANONICAL = ("id", "text", "label", "timestamp", "group")


EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


PHONE_RE = re.compile(
    r"(?<![\w<])(?:\+?\d{1,3}[\s.-])?(?:\(\d{2,5}\)[\s.-]?|\d{2,5}[\s.-]?)\d{3,4}[\s.-]?\d{3,5}(?!\w)"
)


TAG_HINT_RE = re.compile(r"</?[a-zA-Z][^>]*>|&[a-zA-Z]+;|&#\d+;")


BLOCK_TAGS = {"p", "div", "br", "hr", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"}


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            f"use one of {sorted(EXTENSIONS)} or set data.format"
        )
    return kind


def _read_one(path: Path, cfg: DataConfig) -> pd.DataFrame:
    kind = detect_format(path, cfg.format)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    try:
        if kind == "parquet":
            return pd.read_parquet(path, engine="pyarrow")
        if kind == "jsonl":
            return pd.read_json(path, lines=True, encoding=cfg.encoding, dtype=False)
        quoting = csv.QUOTE_MINIMAL if cfg.csv_quoting else csv.QUOTE_NONE
        return pd.read_csv(
            path,
            sep="\t" if kind == "tsv" else ",",
            quoting=quoting,
            encoding=cfg.encoding,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
        )
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not valid {cfg.encoding} text (byte {err.start}: {err.reason}); "
            f"is it really {kind.upper()}? Set data.encoding if the file uses another encoding"
        ) from None
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable {kind.upper()} file ({err})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file has no columns or rows") from None
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"{path}: cannot be parsed as {kind.upper()} ({str(err).splitlines()[0]})") from None


def read_source(cfg: DataConfig) -> pd.DataFrame:
    """Read a file, or every supported file of a directory (same columns), into one frame."""
    path = Path(cfg.path)
    try:
        codecs.lookup(cfg.encoding)
    except LookupError:
        raise DataError(f"data.encoding: unknown encoding {cfg.encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not files:
            raise DataError(f"data.path: directory {path} holds no {'/'.join(sorted(EXTENSIONS))} files")
    else:
        files = [path]
    frames = [_read_one(f, cfg) for f in files]
    cols = list(frames[0].columns)
    for f, fr in zip(files[1:], frames[1:]):
        if set(fr.columns) != set(cols):
            raise DataError(f"{f}: columns {sorted(fr.columns)} differ from {files[0]}'s {sorted(cols)}")
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if df.empty:
        raise DataError(f"{path}: no rows")
    return df


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def strip_html(text: str) -> str:
    """Markup → plain text (block tags become line breaks, entities decoded). Plain text is returned as is."""
    if not TAG_HINT_RE.search(text):
        return text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)  # convert_charrefs=True already decoded entities, once


def scrub_pii(text: str) -> tuple[str, int]:
    """Replace e-mail addresses and phone numbers; return the text and how many were replaced."""
    text, n_email = EMAIL_RE.subn("<EMAIL>", text)
    text, n_phone = PHONE_RE.subn("<PHONE>", text)
    return text, n_email + n_phone


def normalise_whitespace(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def map_columns(df: pd.DataFrame, columns: ColumnMap) -> pd.DataFrame:
    """Rename the user's columns to the canonical names; other columns are kept as they are."""
    wanted = {"label": columns.label, "timestamp": columns.timestamp, "group": columns.group, "id": columns.id}
    needed = [*columns.text, *(c for c in wanted.values() if c)]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(
            f"data.columns names {missing} but the data has no such column; "
            f"available columns: {list(map(str, df.columns))}"
        )
    out = pd.DataFrame(index=df.index)
    text_parts = [df[c].astype("string").fillna("") for c in columns.text]
    joined = text_parts[0]
    for part in text_parts[1:]:
        joined = joined.str.cat(part, sep="\n")
    out["text"] = joined
    for role, col in wanted.items():
        if col:
            out[role] = df[col]
    used = set(needed)
    for col in df.columns:
        if col not in used:
            out[f"{col}_src" if col in CANONICAL else col] = df[col]
    return out


def read_snapshots(data: DataConfig) -> pd.DataFrame | None:
    """Labelled production snapshots in ``data.snapshots_dir`` (none when it is null); their schema, and how
    they are read, belong to :mod:`pipelines.data.snapshots`."""
    return snapshots.read_snapshots(data.snapshots_dir)


def ingest(
    raw: pd.DataFrame, data: DataConfig, cfg: IngestConfig, snapshots: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, dict]:
    """Pure stage function: raw frame (+ labelled snapshots) → canonical, cleaned frame and a summary dict."""
    df = map_columns(raw, data.columns)
    summary: dict = {
        "rows_read": int(len(raw)),
        "source_columns": list(map(str, raw.columns)),
        "snapshot_rows": 0 if snapshots is None else int(len(snapshots)),
    }
    if snapshots is not None and len(snapshots):
        snap = snapshots.copy()
        if "timestamp" in snap and "timestamp" not in df:
            snap = snap.drop(columns="timestamp")
        if "timestamp" in snap:  # naive UTC like the normalised primary column; the primary is checked below
            snap["timestamp"] = pd.to_datetime(snap["timestamp"], utc=True).dt.tz_localize(None)
        df = pd.concat([df, snap], ignore_index=True)

    labels = df["label"]
    null_labels = labels.isna() | labels.astype("string").str.strip().eq("")
    if null_labels.any():
        rows = list(df.index[null_labels][:5])
        raise DataError(
            f"label column {data.columns.label!r} has {int(null_labels.sum())} null or empty value(s) "
            f"(first rows: {rows}); label every row or remove them"
        )
    df["label"] = labels.astype("string").str.strip()
    if df["label"].nunique() < 2:
        raise DataError(
            f"label column {data.columns.label!r} has a single class ({df['label'].iloc[0]!r}); "
            "a classifier needs at least two"
        )

    texts = df["text"].astype(str)
    html_rows = texts.str.contains(TAG_HINT_RE)
    if cfg.strip_html:
        texts = texts.map(strip_html)
    pii_counts = pd.Series(0, index=df.index)
    if cfg.scrub_pii:
        scrubbed = texts.map(scrub_pii)
        texts, pii_counts = scrubbed.str[0], scrubbed.str[1].astype(int)
    df["text"] = texts.map(normalise_whitespace).astype("string")
    summary.update(
        html_rows=int(html_rows.sum()), pii_rows=int((pii_counts > 0).sum()), pii_replaced=int(pii_counts.sum())
    )

    empty = df["text"].str.len().fillna(0).eq(0)
    summary["empty_text_rows"] = int(empty.sum())
    if cfg.drop_empty_text:
        df = df[~empty]
    summary["empty_text_dropped"] = int(empty.sum()) if cfg.drop_empty_text else 0

    if "timestamp" in df:
        ts = pd.to_datetime(df["timestamp"], errors="coerce", utc=True)
        bad = ts.isna() & df["timestamp"].notna()
        if bad.any():
            raise DataError(
                f"timestamp column {data.columns.timestamp!r}: {int(bad.sum())} value(s) are not dates "
                f"(e.g. {df.loc[bad, 'timestamp'].iloc[0]!r})"
            )
        df["timestamp"] = ts.dt.tz_localize(None).astype("datetime64[ns]")
    if "group" in df:
        df["group"] = df["group"].astype("string")
    if "id" in df:
        df["id"] = df["id"].astype("string")
    else:
        df["id"] = pd.Series([f"row-{i}" for i in df.index], index=df.index, dtype="string")
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].astype("string")
    df = df.reset_index(drop=True)
    df = df[[c for c in CANONICAL if c in df] + [c for c in df.columns if c not in CANONICAL]]

    summary.update(
        rows_written=int(len(df)),
        n_classes=int(df["label"].nunique()),
        class_counts={k: int(v) for k, v in df["label"].value_counts().sort_index().items()},
        schema={c: str(t) for c, t in df.dtypes.items()},
    )
    return df, summary
