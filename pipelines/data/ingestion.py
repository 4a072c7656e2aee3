"""Library of the ``ingest`` stage (its CLI is :mod:`pipelines.ingest`).

ingest: read the raw source, map columns to the canonical schema, clean and scrub text.

Canonical schema (``data/interim/dataset.parquet``):

=========  ==========================================================
id         string; the mapped id column, or ``row-<n>`` when none
text       string; the mapped text column(s) joined, HTML stripped, PII scrubbed
label      string
timestamp  datetime64[ns] (only when mapped)
group      string (only when mapped), e.g. a customer id
split      string ``train``/``val``/``test`` (only when the data gives its own splits: ``data.split_paths``,
           one file per split inside ``data.path``, or a ``data.columns.split`` column whose values
           ``data.split_values`` name); snapshot rows join ``train``
...        every other source column, unchanged (the leakage stage inspects them)
=========  ==========================================================

PII is replaced by placeholders (``<EMAIL>``, ``<PHONE>``, ``<CARD>``, ``<IBAN>``, ``<ID>``, ``<IP>``, ``<NAME>``)
here, before anything downstream stores the text: :func:`scrub_pii` (:mod:`pipelines.data.pii`, the one scrubber
of ingest, snapshots, the chat data and serving). The per-text cleaning is :func:`clean_text`; with
``compute.engine: ray`` the stage runs it as a Ray Data pipeline (:mod:`pipelines.data.distributed`), same result.

Long texts (``ingest.max_text_chars``): a text above it is cut to it (``ingest.over_long: truncate``) or its row
dropped (``drop``) before any cleaning or pattern runs, so one pasted log costs its first characters only; both
are counted and the first rows named in the summary (``over_long``).

Broken records (``ingest.bad_rows``): a row without a label, a row without any text (the other half of a
record split across two lines), a date that does not parse, a row without its split, and (CSV/TSV) a line
with more fields than the header (a file whose every line has more is refused either way, naming the lines and
their numbers of fields: its header is wrong). ``refuse`` (the default) stops the stage naming the rows (the file
and the record's number in it) or the line; a row without text is dropped as an empty text (``ingest.drop_empty_text``)
as before. ``quarantine`` moves every such row to a CSV a person can inspect (:func:`ingest_with_quarantine`):
the reason, the file, the record's number (1: the first record after the header) or the line that did not
parse, and the row's fields, PII-scrubbed like the text; the summary counts them.
"""

from __future__ import annotations

import codecs
import csv
import re
import warnings
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.config import ColumnMap, DataConfig, IngestConfig
from pipelines.data import snapshots
from pipelines.data.pii import EMAIL_RE, scrub_pii  # noqa: F401 (both also imported from here by serving, tests)
from pipelines.errors import DataError

CANONICAL = ("id", "text", "label", "timestamp", "group", "split")


SPLIT_NAMES = ("train", "val", "test")


# Where each raw row came from: added by read_source, used for the quarantine and dropped by ingest.
SOURCE_FILE, SOURCE_ROW, SOURCE_SPLIT = "_source_file", "_source_row", "_source_split"
SOURCE_LINE, RAW_LINE = "_source_line", "_raw_line"  # a line the CSV/TSV parser could not split (quarantine only)
PROVENANCE = (SOURCE_FILE, SOURCE_ROW, SOURCE_SPLIT, SOURCE_LINE, RAW_LINE)
QUARANTINE_META = ("quarantine_reason", "source_file", "source_row", "source_line", "raw_line")


EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


# [^<>]: a start that finds no ">" stops at the next "<", so "<a <a <a ..." costs its length, not its square
TAG_HINT_RE = re.compile(r"</?[a-zA-Z][^<>]*>|&[a-zA-Z]+;|&#\d+;")


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


def _read_delimited(path: Path, kind: str, cfg: DataConfig, quarantine: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CSV/TSV as strings; with ``quarantine`` the lines with more fields than the header are skipped and
    returned (``SOURCE_LINE``, ``RAW_LINE``) instead of failing the file."""
    kwargs = dict(
        sep="\t" if kind == "tsv" else ",",
        quoting=csv.QUOTE_MINIMAL if cfg.csv_quoting else csv.QUOTE_NONE,
        encoding=cfg.encoding,
        dtype=str,
        keep_default_na=False,
        na_values=[""],
    )
    if not quarantine:
        try:
            df = pd.read_csv(path, **kwargs)
        except pd.errors.ParserError as err:
            _refuse_extra_fields(path, kwargs, parser=str(err).splitlines()[0].removeprefix("Error tokenizing data. "))
            raise
        _refuse_implicit_index(df, path, kwargs)
        return df, pd.DataFrame(columns=[SOURCE_LINE, RAW_LINE])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        df = pd.read_csv(path, on_bad_lines="warn", **kwargs)
    _refuse_implicit_index(df, path, kwargs)
    numbers = sorted(
        {int(n) for w in caught for n in re.findall(r"Skipping line (\d+):", str(w.message))}
    )  # the C parser's physical line numbers (1: the header)
    lines = path.read_bytes().split(b"\n") if numbers else []
    raw = [lines[n - 1].decode(cfg.encoding, errors="replace").rstrip("\r") for n in numbers]
    return df, pd.DataFrame({SOURCE_LINE: numbers, RAW_LINE: raw})


def _field_counts(path: Path, kwargs: dict) -> tuple[int, list[tuple[int, int]]]:
    """The header's number of fields, and (line, fields) of every record with more (read with :mod:`csv` in the
    same dialect; the line is where the record starts, 1 being the header)."""
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # a 2 MB field is a record, not an error, here
    try:
        with open(path, encoding=kwargs["encoding"], errors="replace", newline="") as fh:
            reader = csv.reader(fh, delimiter=kwargs["sep"], quoting=kwargs["quoting"])
            header = next(reader, [])
            extra, start = [], reader.line_num + 1
            for record in reader:
                if len(record) > len(header):
                    extra.append((start, len(record)))
                start = reader.line_num + 1
    finally:
        csv.field_size_limit(limit)
    return len(header), extra


def _refuse_extra_fields(path: Path, kwargs: dict, some: bool = True, parser: str = "") -> None:
    """Raise a DataError naming the lines with more fields than the header, and how many (none: return).
    ``some``: other lines are fine, so ``ingest.bad_rows: quarantine`` could set these aside; ``parser``: what
    pandas said of the first."""
    header, extra = _field_counts(path, kwargs)
    if not extra:
        return
    shown = ", ".join(f"line {line}: {n} fields" for line, n in extra[:10])
    more = f" and {len(extra) - 10} more" if len(extra) > 10 else ""
    said = f" (the parser: {parser})" if parser else ""
    kind = "TSV" if kwargs["sep"] == "\t" else "CSV"
    raise DataError(
        f"{path}: cannot be parsed as {kind}: the header has {header} field(s) but {len(extra)} line(s) have more "
        f"({shown}{more}){said}; fix the "
        "header, quote the fields that contain the separator, or check data.format (csv/tsv)"
        + ("; ingest.bad_rows: quarantine sets such lines aside" if some else "")
    )


def _refuse_implicit_index(df: pd.DataFrame, path: Path, kwargs: dict) -> None:
    """Every record has more fields than the header: pandas took the first ones as the index (no error)."""
    if not isinstance(df.index, pd.RangeIndex):
        _refuse_extra_fields(path, kwargs, some=False)
        raise DataError(f"{path}: the rows have more fields than the header (pandas read the first as an index)")


def _read_one(path: Path, cfg: DataConfig, quarantine: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One file's records, and the lines a quarantine set aside (see :func:`_read_delimited`)."""
    kind = detect_format(path, cfg.format)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    no_lines = pd.DataFrame(columns=[SOURCE_LINE, RAW_LINE])
    try:
        if kind == "parquet":
            return pd.read_parquet(path, engine="pyarrow"), no_lines
        if kind == "jsonl":
            return pd.read_json(path, lines=True, encoding=cfg.encoding, dtype=False), no_lines
        return _read_delimited(path, kind, cfg, quarantine)
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
        hint = "" if quarantine or kind not in ("csv", "tsv") else "; ingest.bad_rows: quarantine sets such lines aside"
        raise DataError(f"{path}: cannot be parsed as {kind.upper()} ({str(err).splitlines()[0]}){hint}") from None


def _files(path: Path, key: str) -> list[Path]:
    """``path`` itself, or every supported file under it (a directory), sorted."""
    if not path.exists():
        raise DataError(f"{key}: {path} does not exist")
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise DataError(f"{key}: directory {path} holds no {'/'.join(sorted(EXTENSIONS))} files")
    return files


def source_files(cfg: DataConfig) -> list[tuple[str | None, Path]]:
    """(split, file) for every file ingest reads: ``data.path``'s, or each split's of ``data.split_paths``."""
    root = Path(cfg.path)
    if cfg.split_paths is None:
        return [(None, f) for f in _files(root, "data.path")]
    if not root.is_dir():
        raise DataError(
            f"data.path: {root} {'is a file' if root.exists() else 'does not exist'}; with data.split_paths it is "
            "the directory that holds the split files (DVC tracks it as the ingest stage's data)"
        )
    given = {k: v for k, v in cfg.split_paths.model_dump().items() if v is not None}
    return [(name, f) for name, rel in given.items() for f in _files(root / rel, f"data.split_paths.{name}")]


def read_source(cfg: DataConfig, quarantine: bool = False) -> pd.DataFrame:
    """Read a file, a directory of files (same columns) or the split files into one frame.

    Each row carries its provenance (``SOURCE_FILE``, ``SOURCE_ROW``: 1 is the first record after the header;
    ``SOURCE_SPLIT`` with ``data.split_paths``); ingest drops those columns. With ``quarantine``, CSV/TSV lines
    with more fields than the header become rows with only ``SOURCE_LINE`` and ``RAW_LINE`` (and provenance).
    """
    try:
        codecs.lookup(cfg.encoding)
    except LookupError:
        raise DataError(f"data.encoding: unknown encoding {cfg.encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    files = source_files(cfg)
    frames, unparsed, first = [], [], None
    for split, f in files:
        df, lines = _read_one(f, cfg, quarantine)
        first = list(df.columns) if first is None else first
        if set(df.columns) != set(first):
            raise DataError(f"{f}: columns {sorted(df.columns)} differ from {files[0][1]}'s {sorted(first)}")
        frames.append(df.assign(**{SOURCE_FILE: str(f), SOURCE_ROW: range(1, len(df) + 1), SOURCE_SPLIT: split}))
        if len(lines):
            unparsed.append(lines.assign(**{SOURCE_FILE: str(f), SOURCE_SPLIT: split}))
    if sum(map(len, frames + unparsed)) == 0:
        raise DataError(f"{cfg.path}: no rows")
    for split in {s for s, _ in files} - {None}:
        if not sum(len(fr) for (s, _), fr in zip(files, frames) if s == split):
            raise DataError(f"data.split_paths.{split}: {Path(cfg.path) / getattr(cfg.split_paths, split)} has no rows")
    df = pd.concat(frames + unparsed, ignore_index=True) if len(frames) + len(unparsed) > 1 else frames[0]
    if cfg.split_paths is None:
        df = df.drop(columns=SOURCE_SPLIT)
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


def normalise_whitespace(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def clean_text(text: str, cfg: IngestConfig) -> tuple[str, int]:
    """One text as ingest stores it: markup stripped (``ingest.strip_html``), PII scrubbed (``ingest.scrub_pii``),
    whitespace normalised; and how many PII values were replaced. The one implementation of the per-text work:
    :func:`clean_texts` maps it here, the Ray Data path (:mod:`pipelines.data.distributed`) on a cluster."""
    if cfg.strip_html:
        text = strip_html(text)
    found = 0
    if cfg.scrub_pii:
        text, found = scrub_pii(text)
    return normalise_whitespace(text), found


def clean_texts(texts: pd.Series, cfg: IngestConfig) -> pd.DataFrame:
    """A batch of texts → ``text`` (:func:`clean_text`), ``pii`` (values replaced) and ``html`` (the raw text
    had markup), on the same index."""
    raw = texts.astype(str)
    done = [clean_text(t, cfg) for t in raw]
    return pd.DataFrame(
        {
            "text": pd.Series([t for t, _ in done], index=raw.index, dtype="string"),
            "pii": pd.Series([n for _, n in done], index=raw.index, dtype="int64"),
            "html": raw.str.contains(TAG_HINT_RE).astype(bool),
        }
    )


TextCleaner = Callable[[pd.Series, IngestConfig], pd.DataFrame]  # clean_texts, or its Ray Data twin


def map_columns(df: pd.DataFrame, columns: ColumnMap) -> pd.DataFrame:
    """Rename the user's columns to the canonical names; other columns are kept as they are."""
    wanted = {
        "label": columns.label,
        "timestamp": columns.timestamp,
        "group": columns.group,
        "id": columns.id,
        "split": columns.split,
    }
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
    return snapshots.read_snapshots(data.snapshots_dir, reviewed_only=data.snapshots_review)


def given_splits(df: pd.DataFrame, raw: pd.DataFrame, data: DataConfig) -> pd.Series | None:
    """Each row's given split (``train``/``val``/``test``, null where missing), or None when the data gives none.

    ``data.split_paths``: the split whose file the row came from. ``data.columns.split``: the column's value
    through ``data.split_values``; a value that names no split is a configuration problem, refused."""
    if data.split_paths is not None:
        if SOURCE_SPLIT not in raw:
            raise DataError("data.split_paths is set, but the frame was not read from them (read_source)")
        return raw[SOURCE_SPLIT].astype("string")
    if not data.columns.split:
        return None
    names = {getattr(data.split_values, k): k for k in SPLIT_NAMES}
    values = df["split"].astype("string").str.strip().replace("", pd.NA)
    unknown = sorted(set(values.dropna()) - set(names))
    if unknown:
        raise DataError(
            f"split column {data.columns.split!r} has value(s) {unknown[:5]} that data.split_values does not name "
            f"({', '.join(f'{k}: {v!r}' for v, k in names.items())}); set data.split_values to the file's values"
        )
    return values.map(names, na_action="ignore").astype("string")


def _where(raw: pd.DataFrame, mask: pd.Series, n: int = 5) -> str:
    """'train.csv row 3, train.csv row 9' for the first rows of ``mask`` (in-memory frames: 'row 3')."""
    rows = raw.loc[mask].head(n)
    if SOURCE_FILE not in rows:
        return ", ".join(f"row {i + 1}" for i in rows.index)
    return ", ".join(f"{Path(f).name} row {int(r)}" for f, r in zip(rows[SOURCE_FILE], rows[SOURCE_ROW]))


def broken_rows(df: pd.DataFrame, raw: pd.DataFrame, data: DataConfig, split: pd.Series | None) -> dict[str, pd.Series]:
    """Masks of the broken records of the mapped frame ``df`` (raw text, before cleaning), by reason."""
    unparsed = raw[RAW_LINE].notna() if RAW_LINE in raw else pd.Series(False, index=df.index)
    blank = lambda s: s.astype("string").str.strip().fillna("").eq("")  # noqa: E731
    masks = {
        "unparsed_line": unparsed,
        "missing_label": blank(df["label"]) & ~unparsed,
        "missing_text": blank(df["text"]) & ~unparsed,
    }
    if split is not None:
        masks["missing_split"] = split.isna() & ~unparsed
    if "timestamp" in df:
        ts = pd.to_datetime(df["timestamp"], errors="coerce", utc=True)
        masks["bad_timestamp"] = ts.isna() & df["timestamp"].notna() & ~unparsed
    return {k: m.astype(bool) for k, m in masks.items()}


def quarantine_frame(raw: pd.DataFrame, masks: dict[str, pd.Series], cfg: IngestConfig) -> pd.DataFrame:
    """The broken rows as a person reads them: reason(s), file, record number or unparsed line, then the
    source columns as read (every text cell PII-scrubbed when ``ingest.scrub_pii``)."""
    bad = pd.concat(masks, axis=1).any(axis=1) if masks else pd.Series(False, index=raw.index)
    reasons = pd.Series("", index=raw.index)
    for reason, mask in masks.items():
        reasons = reasons.where(~mask, reasons.where(reasons.eq(""), reasons + ";") + reason)
    rows = raw.loc[bad]
    meta = pd.DataFrame(
        {
            "quarantine_reason": reasons.loc[bad].str.lstrip(";"),
            "source_file": rows.get(SOURCE_FILE),
            "source_row": rows.get(SOURCE_ROW),
            "source_line": rows.get(SOURCE_LINE),
            "raw_line": rows.get(RAW_LINE),
        },
        index=rows.index,
    )
    for col in ("source_row", "source_line"):
        meta[col] = pd.to_numeric(meta[col]).astype("Int64")
    fields = rows.drop(columns=[c for c in PROVENANCE if c in rows])
    fields.columns = [f"{c}_src" if c in QUARANTINE_META else c for c in fields.columns]
    out = pd.concat([meta, fields], axis=1)
    for col in out.columns[out.dtypes.eq(object) | out.dtypes.astype(str).eq("string")]:
        cut = out[col].map(lambda v: v[: cfg.max_text_chars] if isinstance(v, str) else v)  # a 2 MB line too
        out[col] = cut.map(lambda v: scrub_pii(v)[0] if isinstance(v, str) else v) if cfg.scrub_pii else cut
    return out.reset_index(drop=True)


def over_long(texts: pd.Series, cfg: IngestConfig) -> pd.Series:
    """Mask of the texts longer than ``ingest.max_text_chars``."""
    return texts.astype("string").str.len().fillna(0).gt(cfg.max_text_chars)


def _longest(texts: pd.Series, mask: pd.Series) -> int:
    return int(texts[mask].astype("string").str.len().max()) if mask.any() else 0


def ingest(
    raw: pd.DataFrame,
    data: DataConfig,
    cfg: IngestConfig,
    snapshots: pd.DataFrame | None = None,
    clean: TextCleaner = clean_texts,
) -> tuple[pd.DataFrame, dict]:
    """Pure stage function: raw frame (+ labelled snapshots) → canonical, cleaned frame and a summary dict.

    With ``ingest.bad_rows: quarantine`` the broken rows are left out and counted in the summary; the stage
    itself calls :func:`ingest_with_quarantine`, which also returns them. ``clean``: the per-text cleaning,
    :func:`clean_texts` here or :func:`pipelines.data.distributed.scrub_texts_ray` (``compute.engine: ray``)."""
    df, summary, _ = ingest_with_quarantine(raw, data, cfg, snapshots, clean)
    return df, summary


def ingest_with_quarantine(
    raw: pd.DataFrame,
    data: DataConfig,
    cfg: IngestConfig,
    snapshots: pd.DataFrame | None = None,
    clean: TextCleaner = clean_texts,
) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """:func:`ingest`, plus the broken rows moved aside (an empty frame unless ``ingest.bad_rows: quarantine``)."""
    df = map_columns(raw.drop(columns=[c for c in PROVENANCE if c in raw]), data.columns)
    long = over_long(df["text"], cfg)  # bounded first: every later step (patterns included) sees at most the limit
    summary_long = {
        "action": cfg.over_long,
        "max_text_chars": cfg.max_text_chars,
        "rows": int(long.sum()),
        "longest_chars": _longest(df["text"], long),
        "first": _where(raw, long) if long.any() else "",
    }
    df["text"] = df["text"].str.slice(0, cfg.max_text_chars)
    split = given_splits(df, raw, data)
    if split is not None:
        df["split"] = split
    summary: dict = {
        "rows_read": int(len(raw)),
        "source_columns": [str(c) for c in raw.columns if c not in PROVENANCE],
        "snapshot_rows": 0 if snapshots is None else int(len(snapshots)),
    }
    masks = broken_rows(df, raw, data, split)
    if cfg.bad_rows == "refuse":
        if masks["missing_label"].any():
            raise DataError(
                f"label column {data.columns.label!r} has {int(masks['missing_label'].sum())} null or empty value(s) "
                f"(first: {_where(raw, masks['missing_label'])}); label every row or remove them "
                "(ingest.bad_rows: quarantine sets such rows aside in a file)"
            )
        if "missing_split" in masks and masks["missing_split"].any():
            raise DataError(
                f"split column {data.columns.split!r} has {int(masks['missing_split'].sum())} null or empty "
                f"value(s) (first: {_where(raw, masks['missing_split'])}); "
                "ingest.bad_rows: quarantine sets such rows aside"
            )
        masks = {}  # rows without text are dropped as empty texts below; bad dates are refused below
    masks = {k: m for k, m in masks.items() if m.any()}
    quarantined = quarantine_frame(raw, masks, cfg)
    if masks:
        df = df[~pd.concat(masks, axis=1).any(axis=1)]
    summary["bad_rows"] = {
        "action": cfg.bad_rows,
        "quarantined": int(len(quarantined)),
        "reasons": {k: int(m.sum()) for k, m in masks.items()},
    }
    summary["quarantined_rows"] = int(len(quarantined))
    if cfg.over_long == "drop":
        df = df[~long.reindex(df.index, fill_value=False)]
    if "id" not in df:  # the row's position in the source: stable whatever is set aside or appended
        df["id"] = pd.Series([f"row-{i}" for i in df.index], index=df.index, dtype="string")
    if snapshots is not None and len(snapshots):
        snap = snapshots.copy()
        snap_long = over_long(snap["text"], cfg)
        if snap_long.any():
            where = ", ".join(f"snapshot row {i + 1}" for i in np.flatnonzero(snap_long.to_numpy())[:5])
            summary_long["rows"] += int(snap_long.sum())
            summary_long["longest_chars"] = max(summary_long["longest_chars"], _longest(snap["text"], snap_long))
            summary_long["first"] = ", ".join(w for w in (summary_long["first"], where) if w)
        snap["text"] = snap["text"].astype("string").str.slice(0, cfg.max_text_chars)
        if cfg.over_long == "drop":
            snap = snap[~snap_long]
        if "timestamp" in snap and "timestamp" not in df:
            snap = snap.drop(columns="timestamp")
        if "timestamp" in snap:  # naive UTC like the normalised primary column; the primary is checked below
            snap["timestamp"] = pd.to_datetime(snap["timestamp"], utc=True).dt.tz_localize(None)
        if split is not None:  # labelled production rows are new training data; the given val/test stay as given
            snap["split"] = "train"
        df = pd.concat([df, snap], ignore_index=True)
    summary["over_long"] = summary_long
    summary["over_long_rows"] = summary_long["rows"]

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

    cleaned = clean(df["text"], cfg)
    df["text"] = cleaned["text"].astype("string")
    summary.update(
        html_rows=int(cleaned["html"].sum()),
        pii_rows=int((cleaned["pii"] > 0).sum()),
        pii_replaced=int(cleaned["pii"].sum()),
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
    df["id"] = df["id"].astype("string")
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
    if "split" in df:
        counts = df["split"].value_counts()
        summary["split_rows"] = {k: int(counts.get(k, 0)) for k in SPLIT_NAMES}
    return df, summary, quarantined
