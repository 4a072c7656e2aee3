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

Files larger than memory (``ingest.batch_rows``): the stage reads the source in batches (:func:`iter_source`:
CSV/TSV and JSONL in pandas chunks, Parquet by Arrow record batches; a JSONL file's keys are gathered in a
first line-by-line pass, so every batch has the whole file's columns) and feeds them to an :class:`IngestRun`,
which does per batch what :func:`ingest_with_quarantine` does to a frame (that function *is* a run of one
batch). Every check here is per row except these, which span batches and keep small state: the counts and first
rows a message or the summary names (five at most), the unknown split values (five), the set of labels (a single
class is refused), the first bad date, the class and split counts, and the first date value (pandas guesses a
date column's format from its first value: every batch is parsed with it, :class:`_BatchDates`). A refusal is
raised after the last batch, with the message of the source in one piece. No check uses a sample. The labelled
snapshots (``data.snapshots_dir``) are read whole, as before, and come after the source's last batch.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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


def _csv_kwargs(kind: str, cfg: DataConfig) -> dict:
    return dict(
        sep="\t" if kind == "tsv" else ",",
        quoting=csv.QUOTE_MINIMAL if cfg.csv_quoting else csv.QUOTE_NONE,
        encoding=cfg.encoding,
        dtype=str,
        keep_default_na=False,
        na_values=[""],
    )


def _delimited_batches(
    path: Path, kind: str, cfg: DataConfig, quarantine: bool, batch_rows: int, unparsed: list[int]
) -> Iterator[pd.DataFrame]:
    """CSV/TSV as strings, ``batch_rows`` records at a time; with ``quarantine`` the lines with more fields than
    the header are skipped and their numbers (the C parser's physical lines, 1: the header) added to
    ``unparsed`` instead of failing the file."""
    kwargs = _csv_kwargs(kind, cfg)
    any_rows = False
    try:
        with pd.read_csv(path, chunksize=batch_rows, on_bad_lines="warn" if quarantine else "error", **kwargs) as rd:
            while True:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", pd.errors.ParserWarning)
                    df = next(rd, None)
                unparsed += [int(n) for w in caught for n in re.findall(r"Skipping line (\d+):", str(w.message))]
                if df is None:
                    break
                _refuse_implicit_index(df, path, kwargs)
                any_rows = True
                yield df
    except pd.errors.ParserError as err:
        if not quarantine:
            _refuse_extra_fields(path, kwargs, parser=str(err).splitlines()[0].removeprefix("Error tokenizing data. "))
        raise
    if not any_rows:  # a header without records: its columns still count (the files must agree)
        yield pd.read_csv(path, nrows=0, **kwargs)


def _lines(path: Path, numbers: list[int], encoding: str) -> list[str]:
    """The raw text of the physical lines ``numbers`` (1: the header), read line by line."""
    wanted, found = set(numbers), {}
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, start=1):
            if n in wanted:
                found[n] = line.removesuffix(b"\n").decode(encoding, errors="replace").rstrip("\r")
                if len(found) == len(wanted):
                    break
    return [found.get(n, "") for n in numbers]


def _jsonl_keys(path: Path, encoding: str) -> list[str]:
    """Every key of a JSONL file in the order first seen (pandas' columns for the whole file), read line by line;
    a line that does not parse ends the scan (pandas names it when it reads that batch)."""
    keys: dict[str, None] = {}
    with open(path, encoding=encoding) as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                break
            if isinstance(record, dict):
                keys.update(dict.fromkeys(record))
    return list(keys)


def _file_batches(
    path: Path, cfg: DataConfig, quarantine: bool, batch_rows: int, unparsed: list[int]
) -> Iterator[pd.DataFrame]:
    """One file's records, at most ``batch_rows`` at a time (at least one frame, maybe empty, with its columns)."""
    kind = detect_format(path, cfg.format)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    try:
        if kind == "parquet":
            pf = pq.ParquetFile(path, buffer_size=1 << 20)  # column chunks streamed, not read whole
            empty = True
            for batch in pf.iter_batches(batch_size=batch_rows):
                empty = False
                yield batch.to_pandas()
            if empty:
                yield pf.schema_arrow.empty_table().to_pandas()
        elif kind == "jsonl":
            keys = _jsonl_keys(path, cfg.encoding)
            with pd.read_json(path, lines=True, encoding=cfg.encoding, dtype=False, chunksize=batch_rows) as rd:
                for df in rd:  # a batch lacks the keys none of its records has: the whole file's columns
                    yield df.reindex(columns=keys + [c for c in df.columns if c not in keys])
        else:
            yield from _delimited_batches(path, kind, cfg, quarantine, batch_rows, unparsed)
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


def iter_source(cfg: DataConfig, quarantine: bool = False, batch_rows: int | None = None) -> Iterator[pd.DataFrame]:
    """:func:`read_source` in batches of at most ``batch_rows`` rows (None: one per file), in the same order,
    each indexed by its rows' positions in the whole source, so a file larger than memory can be ingested.

    The checks of the whole source (the files' columns agree, some rows, rows in every split file) are made as
    the batches go; a later batch can still raise."""
    try:
        codecs.lookup(cfg.encoding)
    except LookupError:
        raise DataError(f"data.encoding: unknown encoding {cfg.encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    files = source_files(cfg)
    size = batch_rows or 2**62
    first: list | None = None
    offset, per_split, unparsed = 0, Counter(), []
    keep = [SOURCE_FILE, SOURCE_ROW] + ([SOURCE_SPLIT] if cfg.split_paths is not None else [])
    for split, f in files:
        lines: list[int] = []
        row = 0
        for df in _file_batches(f, cfg, quarantine, size, lines):
            first = list(df.columns) if first is None else first
            if set(df.columns) != set(first):
                raise DataError(f"{f}: columns {sorted(df.columns)} differ from {files[0][1]}'s {sorted(first)}")
            n = len(df)
            per_split[split] += n
            if not n:
                continue
            df = df[first].assign(**{SOURCE_FILE: str(f), SOURCE_ROW: range(row + 1, row + n + 1)})
            df[SOURCE_SPLIT] = split
            df.index = pd.RangeIndex(offset, offset + n)
            row, offset = row + n, offset + n
            yield df[first + keep]
        if lines:  # their numbers only: the lines themselves are read when their batch comes
            unparsed.append((split, f, sorted(set(lines))))
    if not offset and not unparsed:
        raise DataError(f"{cfg.path}: no rows")
    for split in {s for s, _ in files} - {None}:
        if not per_split[split]:
            raise DataError(f"data.split_paths.{split}: {Path(cfg.path) / getattr(cfg.split_paths, split)} has no rows")
    # the lines the parser could not split come last (as read_source has always put them), in batches too
    columns = (first or []) + keep + [SOURCE_LINE, RAW_LINE]
    for split, f, numbers in unparsed:
        for start in range(0, len(numbers), size):
            chunk = numbers[start : start + size]
            part = pd.DataFrame({SOURCE_LINE: chunk, RAW_LINE: _lines(f, chunk, cfg.encoding), SOURCE_FILE: str(f)})
            part = part.assign(**{SOURCE_SPLIT: split}).reindex(columns=columns)
            part.index = pd.RangeIndex(offset, offset + len(part))
            offset += len(part)
            yield part


def read_source(cfg: DataConfig, quarantine: bool = False) -> pd.DataFrame:
    """Read a file, a directory of files (same columns) or the split files into one frame.

    Each row carries its provenance (``SOURCE_FILE``, ``SOURCE_ROW``: 1 is the first record after the header;
    ``SOURCE_SPLIT`` with ``data.split_paths``); ingest drops those columns. With ``quarantine``, CSV/TSV lines
    with more fields than the header become rows with only ``SOURCE_LINE`` and ``RAW_LINE`` (and provenance).
    The whole source in memory: the stage itself reads it in batches (:func:`iter_source`).
    """
    parts = list(iter_source(cfg, quarantine))
    return pd.concat(parts) if len(parts) > 1 else parts[0]


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


def given_splits(df: pd.DataFrame, raw: pd.DataFrame, data: DataConfig) -> tuple[pd.Series | None, list[str]]:
    """Each row's given split (``train``/``val``/``test``, null where missing), or None when the data gives none;
    and the values that name no split.

    ``data.split_paths``: the split whose file the row came from. ``data.columns.split``: the column's value
    through ``data.split_values``; a value that names no split is a configuration problem, refused
    (:func:`_unknown_splits`, once every batch is read)."""
    if data.split_paths is not None:
        if SOURCE_SPLIT not in raw:
            raise DataError("data.split_paths is set, but the frame was not read from them (read_source)")
        return raw[SOURCE_SPLIT].astype("string"), []
    if not data.columns.split:
        return None, []
    names = {getattr(data.split_values, k): k for k in SPLIT_NAMES}
    values = df["split"].astype("string").str.strip().replace("", pd.NA)
    unknown = sorted(set(values.dropna()) - set(names))
    return values.map(names, na_action="ignore").astype("string"), unknown


def _unknown_splits(unknown: list[str], data: DataConfig) -> DataError:
    names = {getattr(data.split_values, k): k for k in SPLIT_NAMES}
    return DataError(
        f"split column {data.columns.split!r} has value(s) {unknown[:5]} that data.split_values does not name "
        f"({', '.join(f'{k}: {v!r}' for v, k in names.items())}); set data.split_values to the file's values"
    )


def _places(raw: pd.DataFrame, mask: pd.Series, n: int = 5) -> list[str]:
    """['train.csv row 3', 'train.csv row 9'] for the first rows of ``mask`` (in-memory frames: 'row 3')."""
    rows = raw.loc[mask].head(n)
    if SOURCE_FILE not in rows:
        return [f"row {i + 1}" for i in rows.index]
    return [f"{Path(f).name} row {int(r)}" for f, r in zip(rows[SOURCE_FILE], rows[SOURCE_ROW])]


def _dates(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, errors="coerce", utc=True)


def broken_rows(
    df: pd.DataFrame,
    raw: pd.DataFrame,
    data: DataConfig,
    split: pd.Series | None,
    parse: Callable[[pd.Series], pd.Series] = _dates,
) -> dict[str, pd.Series]:
    """Masks of the broken records of the mapped frame ``df`` (raw text, before cleaning), by reason.
    ``parse``: the timestamps as dates (NaT: not a date)."""
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
        ts = parse(df["timestamp"])
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


def _first_non_null(values: np.ndarray) -> int:
    """The position of the value pandas guesses a column's date format from (-1: none): its first value that is
    not null, empty, a NaT string, "now" or "today" (the rule of pandas' own ``first_non_null``)."""
    skip = {"", "NaT", "nat", "NAT", "nan", "NaN", "NAN", "now", "today"}
    return next((i for i, v in enumerate(values) if not (pd.isna(v) or (isinstance(v, str) and v in skip))), -1)


class _BatchDates:
    """:func:`_dates` of a column fed in batches, as of the whole column: pandas guesses a text column's date format
    from its first value (:func:`_first_non_null`) and holds every other value to it, so each later batch is
    parsed with that value of the whole column in front."""

    def __init__(self) -> None:
        self.anchor: object = None
        self.found = False

    def __call__(self, values: pd.Series) -> pd.Series:
        if not self.found:
            i = _first_non_null(values.to_numpy(dtype=object))
            self.found, self.anchor = i >= 0, values.iloc[i] if i >= 0 else None
            return _dates(values)  # this batch holds the first such value: pandas finds it itself
        both = pd.concat([pd.Series([self.anchor], dtype=object), values.astype(object)], ignore_index=True)
        return pd.Series(_dates(both).iloc[1:].to_numpy(), index=values.index)


@dataclass
class _Places:
    """How many rows a check found and where the first five are: bounded, however many batches."""

    n: int = 0
    first: list[str] = field(default_factory=list)

    def add(self, raw: pd.DataFrame, mask: pd.Series) -> None:
        if mask.any():
            self.n += int(mask.sum())
            self.first += _places(raw, mask, 5 - len(self.first)) if len(self.first) < 5 else []

    def __str__(self) -> str:
        return ", ".join(self.first)


class IngestRun:
    """One ingest fed batch by batch: :meth:`add` the source's batches (:func:`iter_source`) in order, then
    :meth:`add_snapshots`, then :meth:`finish`. Each call returns its rows as ingest writes them; what spans
    batches is kept small (counters, the first rows a message names, the set of labels, the first date seen),
    so the output and the summary are those of the whole source in one piece, at any batch size.

    A problem that refuses the source (a missing label or split, an unknown split value, a bad date, a single
    class) is counted over every batch and raised by :meth:`finish` with the message of the whole source; once
    one is certain the batches are only counted, not cleaned."""

    def __init__(self, data: DataConfig, cfg: IngestConfig, clean: TextCleaner = clean_texts) -> None:
        self.data, self.cfg, self.clean = data, cfg, clean
        self.rows_read = self.snapshot_rows = self.kept = self.quarantined = 0
        self.source_columns: list[str] = []
        self.long, self.longest, self.snapshot_long = _Places(), 0, ""
        self.unknown_splits: list[str] = []
        self.refused = {"missing_label": _Places(), "missing_split": _Places()}
        self.reasons: dict[str, int] = {}
        self.null_labels, self.null_label_rows = 0, []
        self.labels: set[str] = set()
        self.first_label: str | None = None
        self.counts: Counter = Counter()
        self.bad_dates, self.first_bad_date = 0, None
        self.class_counts: Counter = Counter()
        self.split_counts: Counter = Counter()
        self.raw_dates, self.dates = _BatchDates(), _BatchDates()
        self.has_split = data.split_paths is not None or bool(data.columns.split)

    def _refused(self) -> bool:
        return bool(self.unknown_splits) or any(p.n for p in self.refused.values())

    def add(self, raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """One batch of the source (index: the rows' positions in it) → its canonical rows, its broken rows set
        aside (:func:`quarantine_frame`)."""
        data, cfg = self.data, self.cfg
        df = map_columns(raw.drop(columns=[c for c in PROVENANCE if c in raw]), data.columns)
        if not self.rows_read:
            self.source_columns = [str(c) for c in raw.columns if c not in PROVENANCE]
        self.rows_read += len(raw)
        long = over_long(df["text"], cfg)  # bounded first: every later step (patterns included) sees at most it
        self.long.add(raw, long)
        self.longest = max(self.longest, _longest(df["text"], long))
        df["text"] = df["text"].str.slice(0, cfg.max_text_chars)
        split, unknown = given_splits(df, raw, data)
        self.unknown_splits = sorted(set(self.unknown_splits) | set(unknown))[:5]
        if split is not None:
            df["split"] = split
        masks = broken_rows(df, raw, data, split, self.raw_dates)
        if cfg.bad_rows == "refuse":
            for reason, places in self.refused.items():
                if reason in masks:
                    places.add(raw, masks[reason])
            masks = {}  # rows without text are dropped as empty texts below; bad dates are refused below
        for reason, mask in masks.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + int(mask.sum())
        masks = {k: m for k, m in masks.items() if m.any()}
        quarantined = quarantine_frame(raw, masks, cfg)
        self.quarantined += len(quarantined)
        if masks:
            df = df[~pd.concat(masks, axis=1).any(axis=1)]
        if cfg.over_long == "drop":
            df = df[~long.reindex(df.index, fill_value=False)]
        if "id" not in df:  # the row's position in the source: stable whatever is set aside or appended
            df["id"] = pd.Series([f"row-{i}" for i in df.index], index=df.index, dtype="string")
        self.kept += len(df)
        return self._finish(df), quarantined

    def add_snapshots(self, snapshots: pd.DataFrame | None) -> pd.DataFrame | None:
        """The labelled production rows, after every batch of the source: cleaned the same way (None: none)."""
        cfg = self.cfg
        self.snapshot_rows = 0 if snapshots is None else int(len(snapshots))
        if not self.snapshot_rows:
            return None
        snap = snapshots.copy()
        snap_long = over_long(snap["text"], cfg)
        if snap_long.any():
            self.snapshot_long = ", ".join(f"snapshot row {i + 1}" for i in np.flatnonzero(snap_long.to_numpy())[:5])
            self.long.n += int(snap_long.sum())
            self.longest = max(self.longest, _longest(snap["text"], snap_long))
        snap["text"] = snap["text"].astype("string").str.slice(0, cfg.max_text_chars)
        if cfg.over_long == "drop":
            snap = snap[~snap_long]
        if "timestamp" in snap and not self.data.columns.timestamp:
            snap = snap.drop(columns="timestamp")
        if "timestamp" in snap:  # naive UTC like the normalised primary column; the primary is checked below
            snap["timestamp"] = pd.to_datetime(snap["timestamp"], utc=True).dt.tz_localize(None)
        if self.has_split:  # labelled production rows are new training data; the given val/test stay as given
            snap["split"] = "train"
        snap.index = pd.RangeIndex(self.kept, self.kept + len(snap))  # their rows after the source's
        return self._finish(snap)

    def _finish(self, df: pd.DataFrame) -> pd.DataFrame:
        """Labels checked, texts cleaned, empty texts dropped, dates and types normalised: the rows as written."""
        labels = df["label"]
        null_labels = labels.isna() | labels.astype("string").str.strip().eq("")
        if null_labels.any():
            self.null_labels += int(null_labels.sum())
            self.null_label_rows += list(df.index[null_labels][: 5 - len(self.null_label_rows)])
        df["label"] = labels.astype("string").str.strip()
        self.labels.update(df["label"].dropna())
        if self.first_label is None and len(df):
            self.first_label = df["label"].iloc[0]
        if self._refused() or self.null_labels or df.empty:
            return df.iloc[:0]

        cfg = self.cfg
        cleaned = self.clean(df["text"], cfg)
        df["text"] = cleaned["text"].astype("string")
        self.counts["html_rows"] += int(cleaned["html"].sum())
        self.counts["pii_rows"] += int((cleaned["pii"] > 0).sum())
        self.counts["pii_replaced"] += int(cleaned["pii"].sum())
        empty = df["text"].str.len().fillna(0).eq(0)
        self.counts["empty_text_rows"] += int(empty.sum())
        if cfg.drop_empty_text:
            df = df[~empty].copy()

        if "timestamp" in df:
            ts = self.dates(df["timestamp"])
            bad = ts.isna() & df["timestamp"].notna()
            if bad.any():
                self.bad_dates += int(bad.sum())
                if self.first_bad_date is None:
                    self.first_bad_date = df.loc[bad, "timestamp"].iloc[0]
            df["timestamp"] = ts.dt.tz_localize(None).astype("datetime64[ns]")
        if "group" in df:
            df["group"] = df["group"].astype("string")
        df["id"] = df["id"].astype("string")
        for col in df.columns:
            if df[col].dtype == object:
                df[col] = df[col].astype("string")
        df = df[[c for c in CANONICAL if c in df] + [c for c in df.columns if c not in CANONICAL]]
        self.class_counts.update(df["label"].value_counts().to_dict())
        if "split" in df:
            self.split_counts.update(df["split"].value_counts().to_dict())
        return df

    def check(self) -> None:
        """Raise the DataError that refuses the source, if any: the one the source in one piece would raise first."""
        data = self.data
        if self.unknown_splits:
            raise _unknown_splits(self.unknown_splits, data)
        label, split = self.refused["missing_label"], self.refused["missing_split"]
        if label.n:
            raise DataError(
                f"label column {data.columns.label!r} has {label.n} null or empty value(s) "
                f"(first: {label}); label every row or remove them "
                "(ingest.bad_rows: quarantine sets such rows aside in a file)"
            )
        if split.n:
            raise DataError(
                f"split column {data.columns.split!r} has {split.n} null or empty "
                f"value(s) (first: {split}); "
                "ingest.bad_rows: quarantine sets such rows aside"
            )
        if self.null_labels:
            raise DataError(
                f"label column {data.columns.label!r} has {self.null_labels} null or empty value(s) "
                f"(first rows: {self.null_label_rows}); label every row or remove them"
            )
        if len(self.labels) < 2:
            raise DataError(
                f"label column {data.columns.label!r} has a single class ({self.first_label!r}); "
                "a classifier needs at least two"
            )
        if self.bad_dates:
            raise DataError(
                f"timestamp column {data.columns.timestamp!r}: {self.bad_dates} value(s) are not dates "
                f"(e.g. {self.first_bad_date!r})"
            )

    def finish(self, schema: dict[str, str]) -> dict:
        """The summary of the whole run (``schema``: the written columns' dtypes), after :meth:`check`."""
        self.check()
        cfg = self.cfg
        reasons = {k: n for k, n in self.reasons.items() if n}
        summary: dict = {
            "rows_read": self.rows_read,
            "source_columns": self.source_columns,
            "snapshot_rows": self.snapshot_rows,
            "bad_rows": {"action": cfg.bad_rows, "quarantined": self.quarantined, "reasons": reasons},
            "quarantined_rows": self.quarantined,
            "over_long": {
                "action": cfg.over_long,
                "max_text_chars": cfg.max_text_chars,
                "rows": self.long.n,
                "longest_chars": self.longest,
                "first": ", ".join(w for w in (str(self.long), self.snapshot_long) if w),
            },
            "over_long_rows": self.long.n,
            **{k: self.counts[k] for k in ("html_rows", "pii_rows", "pii_replaced", "empty_text_rows")},
            "empty_text_dropped": self.counts["empty_text_rows"] if cfg.drop_empty_text else 0,
            "rows_written": sum(self.class_counts.values()),
            "n_classes": len(self.class_counts),
            "class_counts": {k: self.class_counts[k] for k in sorted(self.class_counts)},
            "schema": schema,
        }
        if "split" in schema:
            summary["split_rows"] = {k: self.split_counts.get(k, 0) for k in SPLIT_NAMES}
        return summary


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

    With ``ingest.bad_rows: quarantine`` the broken rows are left out and counted in the summary;
    :func:`ingest_with_quarantine` also returns them. ``clean``: the per-text cleaning, :func:`clean_texts` here or
    :func:`pipelines.data.distributed.scrub_texts_ray` (``compute.engine: ray``)."""
    df, summary, _ = ingest_with_quarantine(raw, data, cfg, snapshots, clean)
    return df, summary


def ingest_with_quarantine(
    raw: pd.DataFrame,
    data: DataConfig,
    cfg: IngestConfig,
    snapshots: pd.DataFrame | None = None,
    clean: TextCleaner = clean_texts,
) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """:func:`ingest`, plus the broken rows moved aside (an empty frame unless ``ingest.bad_rows: quarantine``):
    the whole frame as one batch of an :class:`IngestRun` (the stage feeds it :func:`iter_source`'s batches)."""
    run = IngestRun(data, cfg, clean)
    df, quarantined = run.add(raw)
    snap = run.add_snapshots(snapshots)
    if snap is not None:
        df = pd.concat([df, snap], ignore_index=True)
        df = df[[c for c in CANONICAL if c in df] + [c for c in df.columns if c not in CANONICAL]]
    df = df.reset_index(drop=True)
    summary = run.finish({c: str(t) for c, t in df.dtypes.items()})
    return df, summary, quarantined.reset_index(drop=True)
