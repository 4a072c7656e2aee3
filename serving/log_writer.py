"""Buffered, crash-safe writer for the prediction log (:mod:`serving.prediction_log`).

Rows are buffered and written as one Parquet part per kind every ``flush_rows`` rows or
``flush_s`` seconds. Until then each row also sits in a small write-ahead file
(``<root>/_wal/<segment>.jsonl``, one JSON line per row, flushed to the OS on every
append), so a replica that dies between flushes loses nothing: the next writer that
starts under the same root turns orphaned segments into part files. A live writer
holds an ``flock`` on its segment, so another replica never steals it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import IO

from serving.prediction_log import FEEDBACK, PREDICTIONS, write_part

log = logging.getLogger(__name__)
WAL_DIR = "_wal"


def _encode(kind: str, row: dict) -> str:
    return json.dumps(
        {"kind": kind, "row": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}}
    )


def _decode(line: str) -> tuple[str, dict]:
    rec = json.loads(line)
    row = rec["row"]
    row["ts"] = datetime.fromisoformat(row["ts"])
    return rec["kind"], row


class _Segment:
    """One write-ahead file, locked while its writer lives."""

    def __init__(self, directory: Path, kinds: tuple[str, ...] = (PREDICTIONS, FEEDBACK)) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.fh: IO[str] = open(self.path, "a", encoding="utf-8")
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.rows: dict[str, list[dict]] = {kind: [] for kind in kinds}

    def append(self, kind: str, rows: list[dict]) -> None:
        self.fh.write("".join(_encode(kind, r) + "\n" for r in rows))
        self.fh.flush()
        self.rows[kind].extend(rows)

    def count(self) -> int:
        return sum(map(len, self.rows.values()))

    def seal(self) -> None:
        os.fsync(self.fh.fileno())

    def remove(self) -> None:
        self.fh.close()  # releases the lock
        self.path.unlink(missing_ok=True)


def recover(root: str | Path) -> int:
    """Write the rows of orphaned write-ahead segments (their writer died) as part files; return the row count."""
    return LogWriter.recover(root)


class LogWriter:
    """Append rows now, get Parquet parts in batches; ``close()`` writes everything that is left.

    A subclass logs other kinds under its own write-ahead folder (so two writers never recover each other's
    rows) by setting ``WAL_DIR``, ``KINDS``, ``NAME`` and ``write_part``."""

    WAL_DIR = WAL_DIR
    KINDS: tuple[str, ...] = (PREDICTIONS, FEEDBACK)
    NAME = "prediction log"
    write_part = staticmethod(write_part)

    @classmethod
    def recover(cls, root: str | Path) -> int:
        """Orphaned write-ahead segments under ``root`` (their writer died) as part files; the row count."""
        directory = Path(root) / cls.WAL_DIR
        n = 0
        for path in sorted(directory.glob("*.jsonl")):
            with open(path, "r+", encoding="utf-8") as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer owns it
                rows: dict[str, list[dict]] = {kind: [] for kind in cls.KINDS}
                for line in fh:
                    try:
                        kind, row = _decode(line)
                        rows[kind].append(row)
                    except (ValueError, KeyError):
                        continue  # a torn last line from a crash mid-write
                for kind, kind_rows in rows.items():
                    cls.write_part(root, kind, kind_rows)
                    n += len(kind_rows)
            path.unlink(missing_ok=True)
        if n:
            log.warning("%s: recovered %d rows from write-ahead files under %s", cls.NAME, n, directory)
        return n

    def __init__(self, root: str | Path, flush_rows: int = 256, flush_s: float = 5.0) -> None:
        self.root, self.flush_rows, self.flush_s = Path(root), flush_rows, flush_s
        self._segment: _Segment | None = None
        self._task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self.rows_written = 0

    async def start(self) -> None:
        self._lock = asyncio.Lock()
        await asyncio.to_thread(self.recover, self.root)
        self._segment = self._new_segment()
        self._task = asyncio.create_task(self._timer(), name=self.NAME.replace(" ", "-") + "-flush")

    def _new_segment(self) -> _Segment:
        return _Segment(self.root / self.WAL_DIR, self.KINDS)

    def append(self, kind: str, rows: list[dict]) -> None:
        """Record rows (durable in the write-ahead file on return); a flush is scheduled when the buffer is full."""
        if self._segment is None:
            raise RuntimeError("log writer is not started")
        self._segment.append(kind, rows)
        if self._segment.count() >= self.flush_rows:
            asyncio.get_running_loop().create_task(self.flush())

    async def flush(self) -> None:
        """Seal the current segment, start a new one, write the sealed rows as part files, drop the segment."""
        async with self._lock:  # type: ignore[union-attr]
            old = self._segment
            if old is None or old.count() == 0:
                return
            self._segment = self._new_segment()
            await asyncio.to_thread(self._write, old)

    def _write(self, seg: _Segment) -> None:
        seg.seal()
        for kind, rows in seg.rows.items():
            self.write_part(self.root, kind, rows)
            self.rows_written += len(rows)
        seg.remove()

    async def _timer(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - rows stay in the write-ahead file; retried next tick
                log.exception("%s flush failed; rows kept in the write-ahead file", self.NAME)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._segment is not None:
            await self.flush()
            self._segment.remove()
            self._segment = None
