"""Compaction of the prediction log: each closed day's many small parts become one Parquet file.

A busy service flushes a part per write-ahead segment (every ``serve.log_flush_s``), so a day partition
holds thousands of parts and reading a window would open thousands of files. A monitoring pass
(``monitor.log_compact``) merges every CLOSED partition of every kind the services write (``predictions``,
``feedback``, ``generations``, ``generation_feedback``) that holds more than one readable part into one file.

Which partitions are closed: those dated before ``now``'s UTC day. The writer (:mod:`serving.log_writer`) puts a
segment's part under the UTC day the segment was *opened* (``segment_day``; segment ids are
``YYYYmmddTHHMMSS-<pid>-<hex8>``), and a live writer opens its segments now, so only today's partition is being
appended to. Parts can still land in an older day (a segment opened just before midnight and flushed after it,
a dead writer's segment recovered days later, a replay of a segment whose deletion a crash prevented); the
design below stays correct for those: a pass only ever touches the parts it listed, and a late replay of a part
that was already compacted is ignored by readers and deleted by the next pass.

Names and steps, per partition ``<kind>/date=D/``, under an ``flock`` on ``.compact.lock`` there (two passes never
compact one partition at once):

1. list ``part-*.parquet``; a compacted file is ``part-compacted-<utc>-<hex8>.parquet`` (a name no writer makes:
   theirs are ``part-<digits>T...``) and its Parquet key-value metadata ``ticketops.compacted_from`` lists every
   part name it holds (:data:`serving.prediction_log.COMPACTED_FROM`);
2. finish an interrupted pass: delete the parts a compacted file already holds, and our own temporary files;
3. if more than one part is left (possibly an earlier compacted file plus late parts): stream them, in name
   order and read with the kind's schema (as readers read them), into ``.part-compacted-<id>.parquet.tmp`` in
   the same folder, with the metadata listing their names plus every name the earlier compacted files held;
   fsync it, ``os.replace`` it to ``part-compacted-<id>.parquet``, fsync the folder;
4. delete the source parts, then fsync the folder.

Crash safety: readers take a partition's parts through :func:`serving.prediction_log.live_parts`, which reads
the compacted files' lists and leaves out every part they hold. Before the rename in step 3 the new file is a
hidden temporary (not ``part-*``): readers see exactly the old parts. From the rename on, the new file and its
list appear in one atomic step, so readers see the new file and none of the parts it holds, whether the
deletions of step 4 have run, half run, or not at all. Either way every row is read exactly once, and the next
pass's step 2 finishes the deletions. The list is kept across re-compactions, so a part rewritten by a late
replay of its segment (the same rows) stays ignored forever.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from serving.llm.records import GENERATION_FEEDBACK, GENERATIONS
from serving.llm.records import SCHEMAS as GENERATION_SCHEMAS
from serving.prediction_log import (
    COMPACTED_FROM,
    COMPACTED_PREFIX,
    FEEDBACK,
    PREDICTIONS,
    SCHEMAS,
    compacted_from,
    fsync_dir,
)

log = logging.getLogger(__name__)

KINDS = (PREDICTIONS, FEEDBACK, GENERATIONS, GENERATION_FEEDBACK)  # every kind the services write
LOCK = ".compact.lock"
TMP_PREFIX = f".{COMPACTED_PREFIX}"
BATCH_ROWS = 65_536  # rows buffered per row group: memory stays bounded however big the day


@dataclass
class Compaction:
    """What a pass did: ``partitions`` compacted (``kind/date=...``), the parts merged, files written, and the
    leftovers of an interrupted pass it removed."""

    partitions: list[str] = field(default_factory=list)
    parts_in: int = 0
    files_out: int = 0
    leftovers: int = 0

    def note(self) -> str | None:
        """The line a pass reports (None when nothing was done)."""
        if not self.partitions and not self.leftovers:
            return None
        line = f"compaction: {len(self.partitions)} partition(s), {self.parts_in} part(s) -> {self.files_out} file(s)"
        if self.leftovers:
            line += f"; {self.leftovers} leftover file(s) of an interrupted compaction removed"
        return line


def _dated(root: Path, kind: str) -> list[tuple[date, Path]]:
    """The ``<kind>/date=YYYY-MM-DD`` partitions, oldest first (other names are not the writer's: left alone)."""
    out = []
    for d in (root / kind).glob("date=*"):
        try:
            out.append((date.fromisoformat(d.name.removeprefix("date=")), d))
        except ValueError:
            continue
    return sorted(out)


def compact_log(root: str | Path, now: datetime, kinds: tuple[str, ...] = KINDS) -> Compaction:
    """Compact every closed (dated before ``now``'s UTC day) partition of ``kinds`` under ``root``."""
    root, done = Path(root), Compaction()
    today = (now.astimezone(timezone.utc) if now.tzinfo else now).date()  # the writer's days are UTC days
    for kind in kinds:
        for day, d in _dated(root, kind):
            if day < today and d.is_dir():
                compact_partition(d, kind, done)
    return done


def compact_partition(directory: Path, kind: str, done: Compaction | None = None) -> Compaction:
    """Steps 1-4 of the module docstring for one partition (skipped while another pass holds its lock)."""
    done = done if done is not None else Compaction()
    if len(list(directory.glob("part-*.parquet"))) <= 1 and not any(directory.glob(f"{TMP_PREFIX}*.tmp")):
        return done  # the usual case of an old day: already one file, nothing opened
    with open(directory / LOCK, "a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("compaction: %s is being compacted by another pass; skipped", directory)
            return done
        files = sorted(directory.glob("part-*.parquet"))
        held: set[str] = set()
        for f in files:
            if f.name.startswith(COMPACTED_PREFIX):
                held |= compacted_from(f)
        # 2. finish what an interrupted pass left: parts already held by a compacted file, our temporaries
        stale = [f for f in files if f.name in held] + sorted(directory.glob(f"{TMP_PREFIX}*.tmp"))
        for f in stale:
            f.unlink(missing_ok=True)
        if stale:
            fsync_dir(directory)
            done.leftovers += len(stale)
        live = [f for f in files if f.name not in held]
        if len(live) <= 1:
            return done
        # 3. one new file holding the live parts' rows, listing them and everything earlier files held
        manifest = sorted(held | {f.name for f in live})
        name = f"{COMPACTED_PREFIX}{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        path, tmp = directory / name, directory / f".{name}.tmp"
        _write(live, kind, tmp, manifest)
        os.replace(tmp, path)
        fsync_dir(directory)
        # 4. the sources: readers already skip them (the new file lists them); a crash here is finished next pass
        for f in live:
            f.unlink(missing_ok=True)
        fsync_dir(directory)
    done.partitions.append(f"{kind}/{directory.name}")
    done.parts_in += len(live)
    done.files_out += 1
    log.info("compaction: %s/%s: %d parts -> %s", kind, directory.name, len(live), name)
    return done


def _write(files: list[Path], kind: str, tmp: Path, manifest: list[str]) -> None:
    """The rows of ``files`` (in order, read with the kind's schema) as ``tmp``, fsynced."""
    schema = {**SCHEMAS, **GENERATION_SCHEMAS}[kind]
    meta = {COMPACTED_FROM: json.dumps(manifest).encode("utf-8")}
    try:
        with open(tmp, "wb") as fh:
            with pq.ParquetWriter(fh, schema.with_metadata(meta)) as writer:
                buf: list[pa.Table] = []
                for f in files:
                    buf.append(pq.read_table(f, schema=schema))
                    if sum(t.num_rows for t in buf) >= BATCH_ROWS:
                        writer.write_table(pa.concat_tables(buf))
                        buf = []
                if buf:
                    writer.write_table(pa.concat_tables(buf))
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
