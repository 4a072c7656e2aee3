"""Buffered, exactly-once writer for the prediction log (:mod:`serving.prediction_log`).

``append`` checks the rows against the kind's Arrow schema (a row that could not be written as Parquet is refused
there, before anything is durable), then writes them as one JSON line each to a write-ahead segment
(``<root>/_wal/<segment>.jsonl``, handed to the OS before ``append`` returns, so a killed process loses nothing it
acknowledged). Every ``flush_rows`` rows or ``flush_s`` seconds one flusher task seals the segment and writes one
Parquet part per kind named after it (``<kind>/date=<day>/part-<segment>.parquet``: writing a segment twice
replaces its parts, never duplicates rows), fsyncs the parts and their folders, and only then deletes the segment.

Failures are isolated and visible: a kind that cannot be written keeps its segment (retried every tick) while
the other kinds are written; a row that does not fit the schema is moved to ``<root>/_quarantine/`` (one JSON
line per row with the reason, for a person to read) instead of blocking the rest; each failure is a log line and a
Prometheus counter, and :attr:`LogWriter.healthy` / :meth:`LogWriter.problem` say what is failing (``/readyz``).
When the write-ahead file itself cannot be written (a full disk) ``append`` raises :class:`LogUnavailable`, so the
request fails (503) instead of being answered unlogged.

A writer that starts turns orphaned segments (their writer died; a live writer holds an ``flock`` on its own)
into parts; a corrupt or undecodable line is quarantined, and no error there stops the server from starting.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import re
import uuid
import weakref
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge

from serving import prediction_log
from serving.prediction_log import (
    FEEDBACK,
    PREDICTIONS,
    configure_hash_key,
    fsync_dir,
    hash_key_bytes,
    write_table_part,
)

if TYPE_CHECKING:
    from pipelines.config import ServeConfig

log = logging.getLogger(__name__)
WAL_DIR = "_wal"
QUARANTINE_DIR = "_quarantine"
_SEGMENT_ID = re.compile(r"^(\d{4})(\d{2})(\d{2})T\d{6}-")


class LogUnavailable(Exception):
    """The log cannot take rows now (write-ahead file not writable, too much unwritten, closed): answer 503."""


class LogRowError(ValueError):
    """Rows that do not fit the kind's schema (a bug in the row builder): refused before anything is written."""


class LogMetrics:
    """The writers' Prometheus series, one set per registry (a service's writers share its registry)."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, LogMetrics] = weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.errors = Counter(
            "ticketops_log_write_errors_total",
            "Prediction-log write failures by log and stage (append | flush | recover)",
            ["log", "stage"],
            registry=registry,
        )
        self.quarantined = Counter(
            "ticketops_log_rows_quarantined_total",
            "Log rows moved to _quarantine/ (undecodable or outside the schema)",
            ["log", "kind"],
            registry=registry,
        )
        self.written = Counter(
            "ticketops_log_rows_written_total", "Log rows written to Parquet parts", ["log", "kind"], registry=registry
        )
        self.healthy = Gauge(
            "ticketops_log_healthy", "1: the log writer has no failure pending", ["log"], registry=registry
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None) -> LogMetrics:
        if registry is None:
            return cls(CollectorRegistry())
        if registry not in cls._by_registry:
            cls._by_registry[registry] = cls(registry)
        return cls._by_registry[registry]


def _encode(kind: str, row: dict) -> str:
    return json.dumps(
        {"kind": kind, "row": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}}
    )


def _decode(line: str) -> tuple[str, dict]:
    rec = json.loads(line)
    row = rec["row"]
    row["ts"] = datetime.fromisoformat(row["ts"])
    return rec["kind"], row


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]


def segment_day(segment_id: str, fallback: datetime | None = None) -> datetime:
    """The UTC day a segment was opened (its parts' ``date=`` folder), from its id ``YYYYmmddTHHMMSS-...``."""
    m = _SEGMENT_ID.match(segment_id)
    if m:
        return datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=timezone.utc)
    return fallback or datetime.now(timezone.utc)


def part_name(segment_id: str) -> str:
    """The Parquet part a segment becomes, the same for every attempt (each kind has its own folder)."""
    return f"part-{segment_id}.parquet"


class _Segment:
    """One write-ahead file, ``flock``-ed while its writer lives; its rows are also kept in memory."""

    def __init__(self, directory: Path, kinds: tuple[str, ...]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = directory / f"{self.id}.jsonl"
        self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fsync_dir(directory)
        except BaseException:
            self.close()
            self.path.unlink(missing_ok=True)
            raise
        self.size = 0
        self.torn = False  # a failed append left bytes that could not be cut off: take no more rows
        self.rows: dict[str, list[dict]] = {kind: [] for kind in kinds}
        self.done: set[str] = set()  # kinds already written as parts

    def append(self, kind: str, rows: list[dict]) -> None:
        """All rows as one write: on failure the file is cut back to its last whole line (or marked torn)."""
        data = "".join(_encode(kind, r) + "\n" for r in rows).encode("utf-8")
        assert self.fd is not None
        try:
            _write_all(self.fd, data)
        except OSError:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                self.torn = True
            raise
        self.size += len(data)
        self.rows[kind].extend(rows)

    def count(self) -> int:
        return sum(map(len, self.rows.values()))

    def seal(self) -> None:
        if self.fd is not None:
            os.fsync(self.fd)

    def close(self) -> None:
        """Release the lock, keep the file (the next writer that starts recovers it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
        fsync_dir(self.path.parent)


def recover(root: str | Path) -> int:
    """Write the rows of orphaned write-ahead segments (their writer died) as part files; return the row count."""
    return LogWriter.recover(root)


class LogWriter:
    """Append rows now, get Parquet parts in batches; ``close()`` writes everything that was appended.

    A subclass logs other kinds under its own write-ahead folder (so two writers never recover each other's
    rows) by setting ``WAL_DIR``, ``SCHEMAS`` and ``NAME``."""

    WAL_DIR = WAL_DIR
    SCHEMAS: dict[str, pa.Schema] = prediction_log.SCHEMAS
    NAME = "prediction log"
    PENDING_FLUSHES = 64  # unwritten rows beyond PENDING_FLUSHES x flush_rows: append refuses (LogUnavailable)

    # ------------------------------------------------------------------ rows -> parts (shared with recovery)
    @classmethod
    def _split(cls, kind: str, rows: list[dict]) -> tuple[pa.Table, list[tuple[dict, str]]]:
        """(the rows that fit the schema as a table, [(row, why) for the rows that do not])."""
        schema = cls.SCHEMAS[kind]
        try:
            return pa.Table.from_pylist(rows, schema=schema), []
        except Exception:  # noqa: BLE001 - find the rows at fault, one by one
            pass
        good, bad = [], []
        for row in rows:
            try:
                pa.Table.from_pylist([row], schema=schema)
                good.append(row)
            except Exception as err:  # noqa: BLE001
                bad.append((row, f"{type(err).__name__}: {err}"))
        return pa.Table.from_pylist(good, schema=schema), bad

    @classmethod
    def _quarantine(cls, root: Path, segment_id: str, entries: list[dict]) -> Path:
        """``entries`` as ``<root>/_quarantine/<WAL_DIR>/<segment>.jsonl`` (whole-file replace: idempotent)."""
        directory = root / QUARANTINE_DIR / cls.WAL_DIR.lstrip("_")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{segment_id}.jsonl"
        tmp = directory / f".{segment_id}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for e in entries:
                fh.write(json.dumps({"segment": segment_id, "log": cls.NAME, **e}, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
        return path

    @classmethod
    def _write_kind(cls, root: Path, segment_id: str, kind: str, rows: list[dict]) -> tuple[int, list[dict]]:
        """One part of ``kind`` for the segment; (rows written, quarantine entries for rows outside the schema)."""
        table, bad = cls._split(kind, rows)
        if table.num_rows:
            write_table_part(root, kind, table, segment_day(segment_id), name=part_name(segment_id))
        return table.num_rows, [{"kind": kind, "reason": "schema", "error": why, "row": row} for row, why in bad]

    @classmethod
    def recover(
        cls,
        root: str | Path,
        metrics: LogMetrics | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> int:
        """Orphaned write-ahead segments under ``root`` (their writer died) as part files; the row count.

        Never raises: a segment that cannot be written now (I/O) stays for the next attempt, a line that cannot
        be decoded or a row outside the schema goes to ``_quarantine/``; both are logged (and counted)."""
        root = Path(root)
        directory = root / cls.WAL_DIR
        n = 0
        for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
            try:
                n += cls._recover_segment(root, path, metrics)
            except Exception as err:  # noqa: BLE001 - recovery must never stop a server from starting
                log.error("%s: could not recover %s (kept for the next attempt): %s: %s", cls.NAME, path,
                          type(err).__name__, err)  # fmt: skip
                if on_error is not None:
                    on_error(err)
        if n:
            log.warning("%s: recovered %d rows from write-ahead files under %s", cls.NAME, n, directory)
        return n

    @classmethod
    def _recover_segment(cls, root: Path, path: Path, metrics: LogMetrics | None) -> int:
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            return 0  # another writer recovered it meanwhile
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # a live writer owns it
            data = fh.read()
            segment_id = path.stem
            rows: dict[str, list[dict]] = {kind: [] for kind in cls.SCHEMAS}
            bad: list[dict] = []
            lines = data.split(b"\n")
            for i, raw in enumerate(lines, 1):
                if not raw.strip():
                    continue
                try:
                    kind, row = _decode(raw.decode("utf-8"))
                    rows[kind].append(row)  # KeyError: a kind this log does not have
                except Exception as err:  # noqa: BLE001
                    torn = i == len(lines) and not data.endswith(b"\n")
                    bad.append({"kind": None, "reason": "torn last line" if torn else "undecodable",
                                "error": f"{type(err).__name__}: {err}", "line_no": i,
                                "line": raw.decode("utf-8", "backslashreplace")})  # fmt: skip
            n = 0
            for kind, kind_rows in rows.items():
                written, kind_bad = cls._write_kind(root, segment_id, kind, kind_rows)
                n += written
                bad += kind_bad
                if metrics is not None and written:
                    metrics.written.labels(log=cls.NAME, kind=kind).inc(written)
            if bad:
                where = cls._quarantine(root, segment_id, bad)
                log.error("%s: %d row(s) of %s could not be logged; kept in %s", cls.NAME, len(bad), path.name, where)
                if metrics is not None:
                    for e in bad:
                        metrics.quarantined.labels(log=cls.NAME, kind=e["kind"] or "unknown").inc()
            path.unlink(missing_ok=True)  # (a writer that read it too wrote the same part names: no duplicate)
            fsync_dir(path.parent)
        return n

    # ------------------------------------------------------------------ the live writer
    @classmethod
    def from_config(cls, cfg: ServeConfig, registry: CollectorRegistry | None = None) -> LogWriter:
        """The writer a replica runs: ``serve``'s log folder, flush sizes and the hash key the app builder resolved."""
        return cls(
            cfg.log_dir, cfg.log_flush_rows, cfg.log_flush_s,
            registry=registry, hash_key_env=cfg.hash_key_env, hash_key=cfg.hash_key,
        )  # fmt: skip

    def __init__(
        self,
        root: str | Path,
        flush_rows: int = 256,
        flush_s: float = 5.0,
        *,
        registry: CollectorRegistry | None = None,
        hash_key_env: str = prediction_log.HASH_KEY_ENV,
        hash_key: str | None = None,
    ) -> None:
        self.root, self.flush_rows, self.flush_s = Path(root), flush_rows, flush_s
        self.hash_key_env = hash_key_env
        # the key the app builder resolved (serve.hash_key in the replica's config); None: this process's default
        self._hash_key: bytes | None = hash_key_bytes(hash_key) if hash_key else None
        self.metrics = LogMetrics.for_registry(registry)
        self.max_pending_rows = self.PENDING_FLUSHES * flush_rows
        self._segment: _Segment | None = None
        self._sealed: list[_Segment] = []  # rotated out, not yet written as parts (oldest first)
        self._task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._closing = self._closed = False
        self._failing: dict[str, str] = {}  # stage -> what failed, until that stage succeeds again
        self._orphans_left = False
        self.rows_written = 0
        self.metrics.healthy.labels(log=self.NAME).set(1)

    @property
    def hash_key(self) -> bytes:
        """The key of the text hashes of the rows this writer takes (rows pass it to ``text_hash``): the one it was
        given (the app builder's, the same in every replica), else the process's default
        (:func:`~serving.prediction_log.configure_hash_key`: ``hash_key_env`` of this process, else random)."""
        if self._hash_key is None:
            configure_hash_key(self.hash_key_env)
            self._hash_key = prediction_log._hash_key
        return self._hash_key  # type: ignore[return-value]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.SCHEMAS)

    @property
    def healthy(self) -> bool:
        """No write is failing and the flusher is alive (false: :meth:`problem` says why; ``/readyz`` degraded)."""
        return self.problem() is None

    def problem(self) -> str | None:
        """What is failing now (``<log> <stage> failing: <error>``), or None."""
        if self._task is not None and self._task.done() and not self._closing:
            return f"{self.NAME}: the flush task stopped"
        if self._failing:
            return "; ".join(f"{self.NAME} {stage} failing: {what}" for stage, what in self._failing.items())
        return None

    @property
    def last_error(self) -> str | None:
        return self.problem()

    @property
    def accepting(self) -> bool:
        """False while appends fail: requests that must be logged get 503."""
        return not self._closed and "append" not in self._failing

    def pending_rows(self) -> int:
        return sum(s.count() for s in self._sealed) + (self._segment.count() if self._segment else 0)

    def _fail(self, stage: str, err: BaseException) -> None:
        what = f"{type(err).__name__}: {err}"
        first = stage not in self._failing
        self._failing[stage] = what
        self.metrics.errors.labels(log=self.NAME, stage=stage).inc()
        self.metrics.healthy.labels(log=self.NAME).set(0)
        (log.error if first else log.debug)(
            "%s %s failed (rows kept in the write-ahead file): %s", self.NAME, stage, what
        )

    def _ok(self, stage: str) -> None:
        if self._failing.pop(stage, None) is not None:
            log.warning("%s %s works again", self.NAME, stage)
            if not self._failing:
                self.metrics.healthy.labels(log=self.NAME).set(1)

    def _recover_failed(self, err: BaseException) -> None:
        self._orphans_left = True
        self._fail("recover", err)

    def _recover_orphans(self) -> int:
        self._orphans_left = False
        n = self.recover(self.root, self.metrics, self._recover_failed)
        if not self._orphans_left:
            self._ok("recover")
        return n

    async def start(self) -> None:
        """Set the hash key, recover orphans (never fails start-up), open a segment, start the flusher."""
        _ = self.hash_key
        self._lock = asyncio.Lock()
        await asyncio.to_thread(self._recover_orphans)
        try:
            self._segment = await asyncio.to_thread(self._new_segment)
        except OSError as err:
            self._fail("append", err)  # appends retry opening one
        self._wake = asyncio.Event()  # appends are taken from here on
        self._task = asyncio.create_task(self._run(), name=self.NAME.replace(" ", "-") + "-flush")

    def _new_segment(self) -> _Segment:
        return _Segment(self.root / self.WAL_DIR, self.kinds)

    def append(self, kind: str, rows: list[dict]) -> None:
        """Record rows: durable in the write-ahead file when this returns, or :class:`LogUnavailable` (nothing of
        them recorded). Rows outside the kind's schema raise :class:`LogRowError` and are not recorded."""
        if self._wake is None:
            raise RuntimeError(f"{self.NAME} writer is not started")
        if self._closed:
            raise LogUnavailable(f"{self.NAME} is closed")
        if kind not in self.SCHEMAS:
            raise LogRowError(f"{self.NAME} has no kind {kind!r} (kinds: {list(self.SCHEMAS)})")
        _, bad = self._split(kind, rows)
        if bad:
            raise LogRowError(f"{self.NAME}: {len(bad)} {kind} row(s) do not fit the schema: {bad[0][1]}")
        if self.pending_rows() + len(rows) > self.max_pending_rows:
            raise LogUnavailable(
                f"{self.NAME}: {self.pending_rows()} rows are not written yet ({self.problem() or 'writing is behind'})"
            )
        try:
            if self._segment is None:
                self._segment = self._new_segment()
            self._segment.append(kind, rows)
        except OSError as err:
            self._fail("append", err)
            seg = self._segment
            if seg is not None and seg.torn:
                self._sealed.append(seg)  # its rows are kept; the torn tail goes with the file once they are written
                self._segment = None
            raise LogUnavailable(f"{self.NAME} cannot record rows: {type(err).__name__}: {err}") from err
        self._ok("append")
        if self._segment.count() >= self.flush_rows:
            self._wake.set()

    async def flush(self) -> None:
        """Seal the current segment and write every sealed one as parts; raises what failed (the rows stay)."""
        async with self._lock:  # type: ignore[union-attr]
            if self._segment is not None and self._segment.count():
                new: _Segment | None = None
                try:
                    new = await asyncio.to_thread(self._new_segment)
                except OSError as err:  # the next append opens one
                    log.debug("%s: no new segment yet: %s", self.NAME, err)
                cur = self._segment  # again: appends ran during the await (and may have rotated a torn one)
                if cur is not None and not cur.count() and new is not None:
                    new.remove()
                else:  # no await from here: no append can slip between the two assignments
                    if cur is not None:
                        self._sealed.append(cur)
                    self._segment = new
            while self._sealed:
                try:
                    await asyncio.to_thread(self._write_segment, self._sealed[0])
                except Exception as err:
                    self._fail("flush", err)
                    raise
                self._sealed.pop(0)
            self._ok("flush")
            if self._orphans_left:
                await asyncio.to_thread(self._recover_orphans)

    def _write_segment(self, seg: _Segment) -> None:
        """Parts of every kind of ``seg`` (each kind on its own: one failing keeps only itself pending), then the
        segment file is deleted. Runs in a thread."""
        seg.seal()
        errors: list[BaseException] = []
        for kind, rows in seg.rows.items():
            if kind in seg.done or not rows:
                continue
            try:
                written, bad = self._write_kind(self.root, seg.id, kind, rows)
                if bad:
                    where = self._quarantine(self.root, f"{seg.id}.{kind}", bad)
                    log.error("%s: %d %s row(s) could not be written; kept in %s", self.NAME, len(bad), kind, where)
                    self.metrics.quarantined.labels(log=self.NAME, kind=kind).inc(len(bad))
            except Exception as err:  # noqa: BLE001 - the other kinds are still written
                errors.append(err)
                log.error("%s: writing %s part of %s failed: %s: %s", self.NAME, kind, seg.id, type(err).__name__, err)
                continue
            seg.done.add(kind)
            self.rows_written += written
            self.metrics.written.labels(log=self.NAME, kind=kind).inc(written)
        if errors:
            raise errors[0]
        seg.remove()

    async def _run(self) -> None:
        """The one flusher: every ``flush_s`` or when a segment is full; failures are logged and counted (by
        ``flush``) and retried next tick."""
        assert self._wake is not None
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._closing:
                break
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - recorded by flush(); the rows stay in the write-ahead files
                pass

    async def close(self) -> None:
        """Stop the flusher, then write everything appended (also what came in during the last flush). If the
        rows cannot be written now, their write-ahead files stay for the next start and the error is logged."""
        if self._closed or self._wake is None:
            return
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except BaseException:  # noqa: BLE001 - a dead flusher is reported by problem(); drain anyway
                pass
        try:
            while (self._segment is not None and self._segment.count()) or self._sealed:
                await self.flush()
        except Exception as err:  # noqa: BLE001
            log.error(
                "%s: %d row(s) could not be written at shutdown; their write-ahead files stay under %s for the "
                "next start: %s: %s", self.NAME, self.pending_rows(), self.root / self.WAL_DIR, type(err).__name__, err,
            )  # fmt: skip
        self._closed = True
        for seg in self._sealed:
            seg.close()
        if self._segment is not None:
            if self._segment.count():
                self._segment.close()
            else:
                try:
                    self._segment.remove()
                except OSError as err:
                    log.warning("%s: could not remove the empty segment %s: %s", self.NAME, self._segment.path, err)
            self._segment = None


__all__ = ["FEEDBACK", "PREDICTIONS", "LogRowError", "LogUnavailable", "LogWriter", "recover"]
