"""Compaction of the prediction log (monitoring/compaction.py): the same rows before and after, today's partition
untouched, idempotent, crash-safe at every step, and fewer files opened by a window read."""

from __future__ import annotations

import fcntl
import os
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from monitoring.compaction import LOCK, compact_log
from monitoring.windows import read_window_frames
from pipelines.config import MonitorConfig
from serving.log_writer import _encode, part_name, recover
from serving.prediction_log import (
    COMPACTED_PREFIX,
    FEEDBACK,
    PREDICTIONS,
    compacted_from,
    feedback_row,
    prediction_row,
    read_log,
    write_part,
)

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=timezone.utc)  # today is Mar 4: Mar 1..3 are closed
CLASSES = ["billing", "bug", "account"]
KEY = ["ts", "request_id", "item"]
CFG = MonitorConfig(window_mode="time", window_hours=24 * 7, window_size=20, min_window_rows=10)


def _rows(day: datetime, part: int, n: int, tag: str) -> tuple[list[dict], list[dict]]:
    preds, fbs = [], []
    for i in range(n):
        ts = day + timedelta(minutes=part, seconds=i)
        rid = f"{tag}-{part}-{i}"
        proba = [(i + part) % 3 + 1.0, 1.5, (i % 2) + 0.5]
        preds.append(
            prediction_row(
                ts=ts, request_id=rid, item=i % 2, model_name="ticket-router", model_version="1",
                text=f"text {rid}", stored_text=f"text {rid}" if i % 3 else None, classes=CLASSES,
                proba=[p / sum(proba) for p in proba], latency_ms=1.0 + i, batch_size=n, abstained=i % 5 == 0,
            )
        )  # fmt: skip
        if i % 2 == 0:
            fbs.append(feedback_row(ts=ts + timedelta(seconds=1), request_id=rid, item=i % 2, true_label="bug"))
    return preds, fbs


def _segment(day: datetime, part: int) -> str:
    """A write-ahead segment id as the writer makes it (``YYYYmmddTHHMMSS-<pid>-<hex8>``)."""
    return f"{day + timedelta(minutes=part):%Y%m%dT%H%M%S}-4242-{uuid.uuid4().hex[:8]}"


def _log(root: Path, days: list[datetime], parts: int, rows: int = 6) -> None:
    """``parts`` writer-named parts of predictions and feedback per day (one per flushed segment)."""
    for day in days:
        for p in range(parts):
            preds, fbs = _rows(day, p, rows, f"{day:%m%d}")
            name = part_name(_segment(day, p))
            write_part(root, PREDICTIONS, preds, day, name=name)
            write_part(root, FEEDBACK, fbs, day, name=name)


def _files(root: Path) -> dict[str, int]:
    """Every file under ``root`` (relative path -> mtime_ns)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _by_key(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values([*KEY, *[c for c in df.columns if c not in KEY]]).reset_index(drop=True)


def _originals(root: Path, kind: str) -> pd.DataFrame:
    """The independent oracle: pandas' own concat of every part file as written."""
    return pd.concat([pd.read_parquet(f) for f in sorted((root / kind).glob("date=*/part-*.parquet"))])


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same columns, dtypes and multiset of rows."""
    assert list(a.columns) == list(b.columns) and a.dtypes.equals(b.dtypes)
    pd.testing.assert_frame_equal(_by_key(a), _by_key(b))


CLOSED = [datetime(2026, 3, d, tzinfo=timezone.utc) for d in (1, 2, 3)]
TODAY = datetime(2026, 3, 4, tzinfo=timezone.utc)


@pytest.fixture
def log(tmp_path):
    _log(tmp_path, CLOSED, parts=12)
    _log(tmp_path, [TODAY], parts=4)
    expected = {kind: _originals(tmp_path, kind) for kind in (PREDICTIONS, FEEDBACK)}
    return tmp_path, expected, read_window_frames(tmp_path, "1", CFG, NOW)


def _check_rows(root: Path, expected: dict[str, pd.DataFrame], before: tuple) -> None:
    after = read_window_frames(root, "1", CFG, NOW)
    for got, want in zip(after, before):
        _same(got, want)
    _same(after[0], expected[PREDICTIONS])
    _same(after[2], expected[FEEDBACK])
    for kind in (PREDICTIONS, FEEDBACK):  # and the whole-log reader (the feedback snapshot's)
        _same(read_log(root, kind), expected[kind])


def test_compaction_keeps_every_row_and_leaves_today_alone(log):
    root, expected, before = log
    assert len(before[0]) == 40 * 6 and len(expected[FEEDBACK]) == 40 * 3  # every day (3 x 12 + 4 parts) is read
    today = {k: v for k, v in _files(root).items() if "date=2026-03-04" in k}
    done = compact_log(root, NOW)
    assert done.note() == "compaction: 6 partition(s), 72 part(s) -> 6 file(s)"
    for kind in (PREDICTIONS, FEEDBACK):
        for day in CLOSED:
            files = sorted(p.name for p in (root / kind / f"date={day:%Y-%m-%d}").glob("*.parquet"))
            assert len(files) == 1 and files[0].startswith(COMPACTED_PREFIX), files
            assert len(compacted_from(root / kind / f"date={day:%Y-%m-%d}" / files[0])) == 12
    assert {k: v for k, v in _files(root).items() if "date=2026-03-04" in k} == today  # not touched
    _check_rows(root, expected, before)


def test_a_second_pass_is_a_no_op(log, monkeypatch):
    root, expected, before = log
    compact_log(root, NOW)
    files = _files(root)
    seen = _opened(monkeypatch)
    again = compact_log(root, NOW)
    assert again.note() is None and again.partitions == [] and _files(root) == files
    assert seen == set()  # an already compacted day costs a directory listing, no file opened
    monkeypatch.undo()
    _check_rows(root, expected, before)


def test_a_naive_now_and_a_non_utc_now_are_judged_in_utc_days(log):
    root, _, _ = log
    late_evening = datetime(2026, 3, 3, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # Mar 4 04:30 UTC
    assert len(compact_log(root, late_evening).partitions) == 6
    assert compact_log(root, NOW.replace(tzinfo=None)).partitions == []


@pytest.mark.parametrize("deleted_before_crash", [0, 5, 11])
def test_a_crash_while_deleting_the_parts_loses_and_duplicates_nothing(log, monkeypatch, deleted_before_crash):
    root, expected, before = log
    real, calls = Path.unlink, []

    def crashing_unlink(self, *a, **k):
        if self.name.startswith("part-"):
            calls.append(self)
            if len(calls) > deleted_before_crash:
                raise RuntimeError("power cut")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", crashing_unlink)
    with pytest.raises(RuntimeError, match="power cut"):
        compact_log(root, NOW)
    monkeypatch.undo()
    # the first partition holds its compacted file and the parts not yet deleted: readers skip those
    first = root / PREDICTIONS / "date=2026-03-01"
    names = sorted(p.name for p in first.glob("part-*.parquet"))
    assert sum(n.startswith(COMPACTED_PREFIX) for n in names) == 1 and len(names) == 1 + 12 - deleted_before_crash
    _check_rows(root, expected, before)
    # the next pass finishes the job
    done = compact_log(root, NOW)
    assert done.leftovers == 12 - deleted_before_crash and len(done.partitions) == 5
    for kind in (PREDICTIONS, FEEDBACK):
        for day in CLOSED:
            assert len(list((root / kind / f"date={day:%Y-%m-%d}").glob("part-*.parquet"))) == 1
    _check_rows(root, expected, before)
    assert compact_log(root, NOW).note() is None


def test_a_crash_before_the_rename_leaves_the_old_parts_and_the_next_pass_redoes_it(log, monkeypatch):
    root, expected, before = log
    import monitoring.compaction as compaction

    def crash(*a, **k):
        raise RuntimeError("power cut")

    monkeypatch.setattr(compaction.os, "replace", crash)  # the temporary file is written and fsynced, not renamed
    with pytest.raises(RuntimeError, match="power cut"):
        compact_log(root, NOW)
    monkeypatch.undo()
    first = root / PREDICTIONS / "date=2026-03-01"
    assert len(list(first.glob(".part-compacted-*.tmp"))) == 1 and len(list(first.glob("part-*.parquet"))) == 12
    _check_rows(root, expected, before)
    done = compact_log(root, NOW)
    assert done.leftovers == 1 and len(done.partitions) == 6
    assert not list(first.glob(".*.tmp")) and len(list(first.glob("part-*.parquet"))) == 1
    _check_rows(root, expected, before)


def test_late_parts_and_a_replayed_segment_are_merged_never_read_twice(tmp_path):
    """A dead writer's segment recovered after its day was compacted (the crash came before the writer deleted the
    segment, so its part is written again with the same rows), and a late part of a new segment."""
    day = CLOSED[0]
    _log(tmp_path, [day], parts=3)
    seg = _segment(day, 30)
    preds, fbs = _rows(day, 30, 6, "wal")
    wal = tmp_path / "_wal"
    wal.mkdir()
    lines = "".join(_encode(PREDICTIONS, r) + "\n" for r in preds) + "".join(_encode(FEEDBACK, r) + "\n" for r in fbs)
    (wal / f"{seg}.jsonl").write_text(lines)
    assert recover(tmp_path) == 9
    expected = {kind: _originals(tmp_path, kind) for kind in (PREDICTIONS, FEEDBACK)}
    before = read_window_frames(tmp_path, "1", CFG, NOW)
    assert len(compact_log(tmp_path, NOW).partitions) == 2
    (wal / f"{seg}.jsonl").write_text(lines)  # the same segment again: its part reappears beside the compacted file
    assert recover(tmp_path) == 9
    part = tmp_path / PREDICTIONS / "date=2026-03-01" / part_name(seg)
    assert part.is_file()
    _check_rows(tmp_path, expected, before)  # ignored: the compacted file holds it
    # a late part (a segment opened before midnight, flushed after): read, and merged by the next pass
    late_p, late_f = _rows(day, 40, 4, "late")
    write_part(tmp_path, PREDICTIONS, late_p, day, name=part_name(_segment(day, 40)))
    write_part(tmp_path, FEEDBACK, late_f, day, name=part_name(_segment(day, 40)))
    for kind, late in ((PREDICTIONS, late_p), (FEEDBACK, late_f)):
        expected[kind] = pd.concat([expected[kind], pd.DataFrame(late).astype(expected[kind].dtypes)])
    after_late = read_window_frames(tmp_path, "1", CFG, NOW)
    done = compact_log(tmp_path, NOW)
    assert done.leftovers == 2 and done.parts_in == 4  # the replayed parts; compacted file + late part per kind
    folder = tmp_path / PREDICTIONS / "date=2026-03-01"
    (only,) = folder.glob("part-*.parquet")
    assert part_name(seg) in compacted_from(only) and len(compacted_from(only)) == 3 + 1 + 1 + 1
    _check_rows(tmp_path, expected, after_late)


def _opened(monkeypatch) -> set[str]:
    """The distinct files a read opens (pyarrow's read_table and read_metadata: every log read goes through them)."""
    seen: set[str] = set()
    for name in ("read_table", "read_metadata"):
        real = getattr(pq, name)
        monkeypatch.setattr(pq, name, lambda f, *a, _real=real, **k: seen.add(str(f)) or _real(f, *a, **k))
    return seen


def test_a_window_read_opens_one_file_per_closed_partition_after_compaction(tmp_path, monkeypatch):
    _log(tmp_path, CLOSED[1:], parts=40, rows=2)
    seen = _opened(monkeypatch)
    before = read_window_frames(tmp_path, "1", CFG, NOW)
    assert len(seen) == 2 * 40 * 2  # predictions + feedback, two days of 40 parts
    monkeypatch.undo()
    assert compact_log(tmp_path, NOW).parts_in == 160
    seen = _opened(monkeypatch)
    after = read_window_frames(tmp_path, "1", CFG, NOW)
    assert len(seen) == 2 * 2  # one compacted file per kind and day
    for got, want in zip(after, before):
        _same(got, want)


def test_a_partition_another_pass_is_compacting_is_skipped(tmp_path):
    _log(tmp_path, CLOSED[:1], parts=3)
    folder = tmp_path / PREDICTIONS / "date=2026-03-01"
    fd = os.open(folder / LOCK, os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        done = compact_log(tmp_path, NOW)
    finally:
        os.close(fd)
    assert done.partitions == ["feedback/date=2026-03-01"]
    assert len(list(folder.glob("part-*.parquet"))) == 3


def test_a_monitoring_pass_compacts_and_reports_it(repo):
    from monitoring.run import monitor_once
    from tests.helpers.monitoring import T0, hash_encoder, tickets, write_window

    params = repo["params"]
    for i, seed in enumerate((100, 101)):  # two flushes on T0's day (closed: the pass runs now)
        write_window(params.monitor.log_dir, repo["model"], tickets(150, seed), repo["version"], T0, tag=f"w{i}")
    off = params.model_copy(update={"monitor": params.monitor.model_copy(update={"log_compact": False})})
    s, _ = monitor_once(off, encode=hash_encoder, log_mlflow=False)
    assert not any(n.startswith("compaction") for n in s["notes"])
    assert len(list(Path(params.monitor.log_dir).glob("*/date=*/part-*.parquet"))) == 4
    s, _ = monitor_once(params, encode=hash_encoder, log_mlflow=False)
    assert "compaction: 2 partition(s), 4 part(s) -> 2 file(s)" in s["notes"]
    assert s["window"]["log_rows"] == 300  # every row read once


def test_the_generative_kinds_are_compacted_and_read_once(tmp_path):
    """The generation log and its feedback are merged like the classifier's, and read_generations reads each row
    once (a leftover part a compacted file holds is skipped)."""
    from serving.llm import records

    day = NOW - timedelta(days=2)
    for p in range(4):
        gens = [
            records.generation_row(
                ts=day + timedelta(minutes=p, seconds=i), request_id=f"chatcmpl-{p}-{i}", endpoint="chat",
                model_name="triage-lm", model_version="2", prompt=f"prompt {p} {i}", stored_prompt=None,
                output='{"category": "billing"}', stored_output=None, response_format="json_object",
                prompt_tokens=10 + i, completion_tokens=5, ttft_ms=12.5, latency_ms=40.0, finish_reason="stop",
                max_tokens=64, temperature=0.0,
            )
            for i in range(3)
        ]  # fmt: skip
        fbs = [
            records.generation_feedback_row(
                ts=day + timedelta(minutes=p, seconds=9), request_id=f"chatcmpl-{p}-0",
                fields={"category": "refund"}, matched=True,
            )
        ]  # fmt: skip
        name = part_name(_segment(day, p))
        records.write_part(tmp_path, records.GENERATIONS, gens, day, name=name)
        records.write_part(tmp_path, records.GENERATION_FEEDBACK, fbs, day, name=name)
    before = {k: records.read_generations(tmp_path, k) for k in (records.GENERATIONS, records.GENERATION_FEEDBACK)}
    parts = sorted((tmp_path / records.GENERATIONS).rglob("part-*.parquet"))
    kept = parts[0].read_bytes()  # a part that survives deletion (a crash, a replay) must not be read twice

    done = compact_log(tmp_path, NOW)
    assert sorted(done.partitions) == sorted(
        f"{k}/date={day:%Y-%m-%d}" for k in (records.GENERATIONS, records.GENERATION_FEEDBACK)
    )
    parts[0].write_bytes(kept)
    for kind, df in before.items():
        assert len(df) == (12 if kind == records.GENERATIONS else 4)
        pd.testing.assert_frame_equal(records.read_generations(tmp_path, kind), df)
