"""The prediction log writer: batched part files, exactly once (no row lost, none written twice), and rows that
could not be written are refused at the door or quarantined, never left to block the rest."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timezone

import pytest
from prometheus_client import CollectorRegistry

from serving.log_writer import QUARANTINE_DIR, WAL_DIR, LogRowError, LogWriter, recover
from serving.prediction_log import FEEDBACK, PREDICTIONS, read_log


def _row(i: int, item: int = 0) -> dict:
    return {
        "ts": datetime.now(timezone.utc),
        "request_id": f"{i:032x}",
        "item": item,
        "model_name": "m",
        "model_version": "1",
        "text_sha256": "0" * 64,
        "text": None,
        "label": "a",
        "confidence": 0.9,
        "abstained": False,
        "probabilities": "{}",
        "latency_ms": 1.0,
        "batch_size": 1,
    }


def _fb(i: int, item: int = 0) -> dict:
    return {"ts": datetime.now(timezone.utc), "request_id": f"{i:032x}", "item": item, "true_label": "b"}


def _parts(root, kind: str = PREDICTIONS) -> list:
    return sorted((root / kind).glob("date=*/part-*.parquet"))


def _wal(root) -> list:
    return sorted((root / WAL_DIR).glob("*.jsonl"))


async def _until(check, what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def _die(w: LogWriter) -> None:
    """The process dies: no flush, the flusher stops, the locks go away with the file descriptors."""
    w._task.cancel()
    for seg in [*w._sealed, w._segment]:
        if seg is not None:
            seg.close()


def test_a_part_every_flush_rows_and_the_rest_on_close(tmp_path) -> None:
    async def go():
        w = LogWriter(tmp_path, flush_rows=10, flush_s=60)
        await w.start()
        w.append(PREDICTIONS, [_row(i) for i in range(10)])
        await _until(lambda: len(_parts(tmp_path)) == 1, "the first part")
        w.append(PREDICTIONS, [_row(i) for i in range(10, 20)])
        await _until(lambda: len(_parts(tmp_path)) == 2, "the second part")
        w.append(PREDICTIONS, [_row(i) for i in range(20, 25)])
        assert len(_parts(tmp_path)) == 2  # 5 rows: below flush_rows, written on close
        await w.close()
        assert w.healthy and w.rows_written == 25

    asyncio.run(go())
    assert len(read_log(tmp_path, PREDICTIONS)) == 25 and len(_parts(tmp_path)) == 3
    assert not _wal(tmp_path)


def test_a_crash_between_flushes_loses_nothing(tmp_path) -> None:
    async def crash():
        w = LogWriter(tmp_path, flush_rows=1000, flush_s=60)
        await w.start()
        w.append(PREDICTIONS, [_row(i) for i in range(7)])
        w.append(FEEDBACK, [_fb(0)])
        _die(w)

    asyncio.run(crash())
    assert len(read_log(tmp_path, PREDICTIONS)) == 0
    assert recover(tmp_path) == 8
    assert len(read_log(tmp_path, PREDICTIONS)) == 7 and len(read_log(tmp_path, FEEDBACK)) == 1
    assert recover(tmp_path) == 0  # recovered once, not twice


def test_a_live_writers_segment_is_not_stolen(tmp_path) -> None:
    async def go():
        w = LogWriter(tmp_path, flush_rows=1000, flush_s=60)
        await w.start()
        w.append(PREDICTIONS, [_row(1)])
        stolen = recover(tmp_path)
        await w.close()
        return stolen

    assert asyncio.run(go()) == 0
    assert len(read_log(tmp_path, PREDICTIONS)) == 1


def test_a_row_outside_the_schema_is_refused_at_append_and_nothing_is_recorded(tmp_path) -> None:
    """The issue's poison: item 1099511627776 does not fit the int32 column. It used to be accepted, then failed
    every flush and every start-up; now append refuses it and the log stays writable."""

    async def go():
        w = LogWriter(tmp_path, flush_rows=1000, flush_s=60)
        await w.start()
        w.append(PREDICTIONS, [_row(1)])
        with pytest.raises(LogRowError, match="feedback row"):
            w.append(FEEDBACK, [_fb(1, item=1099511627776)])
        with pytest.raises(LogRowError, match="no kind"):
            w.append("nonsense", [_fb(1)])
        w.append(FEEDBACK, [_fb(1)])
        await w.close()
        assert w.healthy

    asyncio.run(go())
    assert len(read_log(tmp_path, PREDICTIONS)) == 1
    assert read_log(tmp_path, FEEDBACK)["item"].tolist() == [0]
    assert not _wal(tmp_path)


def test_a_replayed_segment_replaces_its_parts_instead_of_duplicating_rows(tmp_path, monkeypatch) -> None:
    """Predictions written, feedback failed, the process died with the segment still there: recovery writes the
    segment again and the predictions are in the log once (dedupe key (request_id, item))."""
    import serving.log_writer as lw

    real = lw.write_table_part

    def feedback_fails(root, kind, table, now=None, *, name=None):  # noqa: ANN001, ANN202
        if kind == FEEDBACK:
            raise OSError(28, "No space left on device")
        return real(root, kind, table, now, name=name)

    async def go():
        w = LogWriter(tmp_path, flush_rows=1000, flush_s=60)
        await w.start()
        w.append(PREDICTIONS, [_row(i, item) for i in range(5) for item in range(2)])
        w.append(FEEDBACK, [_fb(3, 1)])
        monkeypatch.setattr(lw, "write_table_part", feedback_fails)
        with pytest.raises(OSError):
            await w.flush()
        assert len(read_log(tmp_path, PREDICTIONS)) == 10  # the predictions part is written (isolated per kind)
        assert not w.healthy and "No space left" in w.problem()
        _die(w)

    asyncio.run(go())
    monkeypatch.setattr(lw, "write_table_part", real)
    assert len([p for p in _wal(tmp_path) if p.stat().st_size]) == 1  # (and the fresh, empty segment)
    assert recover(tmp_path) == 11
    preds = read_log(tmp_path, PREDICTIONS)
    assert len(preds) == 10 and not preds.duplicated(["request_id", "item"]).any()
    assert len(_parts(tmp_path)) == 1 and len(read_log(tmp_path, FEEDBACK)) == 1


def test_a_kind_that_fails_is_retried_and_reported_until_it_works(tmp_path, monkeypatch) -> None:
    import serving.log_writer as lw

    real, broken = lw.write_table_part, {"on": True}

    def flaky(root, kind, table, now=None, *, name=None):  # noqa: ANN001, ANN202
        if broken["on"] and kind == FEEDBACK:
            raise OSError(5, "Input/output error")
        return real(root, kind, table, now, name=name)

    monkeypatch.setattr(lw, "write_table_part", flaky)
    registry = CollectorRegistry()

    async def go():
        w = LogWriter(tmp_path, flush_rows=1000, flush_s=0.05, registry=registry)
        await w.start()
        w.append(PREDICTIONS, [_row(1)])
        w.append(FEEDBACK, [_fb(1)])
        await _until(lambda: not w.healthy, "the failure is reported")
        assert "flush failing: OSError" in w.problem() and w.accepting  # appends still work: rows are safe
        w.append(PREDICTIONS, [_row(2)])
        assert registry.get_sample_value("ticketops_log_healthy", {"log": "prediction log"}) == 0
        broken["on"] = False
        await _until(lambda: w.healthy and not w._sealed and not w.pending_rows(), "the retry succeeds")
        await w.close()

    asyncio.run(go())
    assert sorted(read_log(tmp_path, PREDICTIONS)["request_id"]) == [f"{1:032x}", f"{2:032x}"]
    assert len(read_log(tmp_path, FEEDBACK)) == 1
    errors = registry.get_sample_value("ticketops_log_write_errors_total", {"log": "prediction log", "stage": "flush"})
    assert errors >= 1
    assert registry.get_sample_value("ticketops_log_healthy", {"log": "prediction log"}) == 1


def test_close_drains_rows_appended_while_the_last_flush_runs(tmp_path, monkeypatch) -> None:
    """Rows that came in while close() was writing used to go to a fresh segment that close() then deleted."""
    entered, release = threading.Event(), threading.Event()
    real = LogWriter._write_segment

    def slow(self, seg):  # noqa: ANN001, ANN202
        entered.set()
        release.wait(10)
        return real(self, seg)

    monkeypatch.setattr(LogWriter, "_write_segment", slow)

    async def go():
        w = LogWriter(tmp_path, flush_rows=1000, flush_s=60)
        await w.start()
        w.append(PREDICTIONS, [_row(i) for i in range(3)])
        closing = asyncio.create_task(w.close())
        await _until(entered.is_set, "close() is writing")
        w.append(PREDICTIONS, [_row(i) for i in range(3, 5)])  # a request that finished during the flush
        release.set()
        await closing

    asyncio.run(go())
    assert len(read_log(tmp_path, PREDICTIONS)) == 5
    assert not _wal(tmp_path)


def test_rows_appended_while_a_flush_opens_the_next_segment_are_kept(tmp_path, monkeypatch) -> None:
    entered, release = threading.Event(), threading.Event()
    real, calls = LogWriter._new_segment, []

    def slow(self):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 2:  # the flush's: start() opened the first
            entered.set()
            release.wait(10)
        return real(self)

    monkeypatch.setattr(LogWriter, "_new_segment", slow)

    async def go():
        w = LogWriter(tmp_path, flush_rows=1000, flush_s=60)
        await w.start()
        w.append(PREDICTIONS, [_row(i) for i in range(3)])
        flushing = asyncio.create_task(w.flush())
        await _until(entered.is_set, "the flush is opening a segment")
        w.append(PREDICTIONS, [_row(i) for i in range(3, 5)])
        release.set()
        await flushing
        await w.close()

    asyncio.run(go())
    assert len(read_log(tmp_path, PREDICTIONS)) == 5
    assert not _wal(tmp_path)


def test_parts_and_folders_are_fsynced_before_the_segment_is_deleted(tmp_path, monkeypatch) -> None:
    import os

    import serving.log_writer as lw
    import serving.prediction_log as pl

    events: list[str] = []
    real_fsync, real_dir, real_unlink = os.fsync, pl.fsync_dir, type(tmp_path).unlink
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(pl, "fsync_dir", lambda d: (events.append(f"dir:{os.path.basename(d)}"), real_dir(d))[1])
    monkeypatch.setattr(lw, "fsync_dir", lambda d: (events.append(f"dir:{os.path.basename(d)}"), real_dir(d))[1])

    def unlink(self, missing_ok=False):  # noqa: ANN001, ANN202
        if self.suffix == ".jsonl":
            events.append("unlink-segment")
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(type(tmp_path), "unlink", unlink)

    async def go():
        w = LogWriter(tmp_path, flush_rows=1000, flush_s=60)
        await w.start()
        w.append(PREDICTIONS, [_row(1)])
        events.clear()
        await w.flush()
        await w.close()

    asyncio.run(go())
    gone = events.index("unlink-segment")
    part_dir = _parts(tmp_path)[0].parent.name
    assert "fsync" in events[:gone] and f"dir:{part_dir}" in events[:gone]


def test_recovery_quarantines_what_it_cannot_write_and_never_stops_start_up(tmp_path) -> None:
    """A segment left by the old writer with the issue's poisoned feedback row, an undecodable line and a torn
    last line: the good rows become parts, the rest goes to a quarantine file a person can read."""
    (tmp_path / WAL_DIR).mkdir()
    segment = tmp_path / WAL_DIR / "20260301T101010-123-abcdef12.jsonl"
    good = [json.dumps({"kind": PREDICTIONS, "row": {**_row(i), "ts": "2026-03-01T10:10:10+00:00"}}) for i in range(3)]
    poison = json.dumps({"kind": FEEDBACK, "row": {**_fb(9, item=1099511627776), "ts": "2026-03-01T10:10:11+00:00"}})
    segment.write_bytes(
        ("\n".join([good[0], poison, "{not json", good[1], good[2]]) + "\n").encode() + b'{"kind": "predic\xff'
    )

    async def go():
        w = LogWriter(tmp_path, flush_rows=1000, flush_s=60)
        await w.start()  # the old code raised ArrowInvalid here: the replica never started
        w.append(PREDICTIONS, [_row(10)])
        await w.close()
        return w

    w = asyncio.run(go())
    assert w.healthy
    preds = read_log(tmp_path, PREDICTIONS)
    assert len(preds) == 4 and len(read_log(tmp_path, FEEDBACK)) == 0
    assert {p.parent.name for p in _parts(tmp_path)} >= {"date=2026-03-01"}  # named after the segment's day
    quarantined = [json.loads(x) for x in (tmp_path / QUARANTINE_DIR / "wal" / f"{segment.stem}.jsonl").open()]
    assert sorted(q["reason"] for q in quarantined) == ["schema", "torn last line", "undecodable"]
    assert next(q for q in quarantined if q["reason"] == "schema")["row"]["item"] == 1099511627776
    assert not _wal(tmp_path)


def test_the_generative_writer_has_the_same_guarantees(tmp_path) -> None:
    from serving.llm.records import GENERATION_FEEDBACK, GENERATIONS, GenerationLogWriter, read_generations
    from serving.llm.records import recover as recover_llm

    row = {"ts": datetime.now(timezone.utc), "request_id": "chatcmpl-" + "a" * 32, "fields": "{}", "matched": True}

    async def go():
        w = GenerationLogWriter(tmp_path, flush_rows=1000, flush_s=60)
        await w.start()
        with pytest.raises(LogRowError):
            w.append(GENERATION_FEEDBACK, [{**row, "matched": "not a bool"}])
        w.append(GENERATION_FEEDBACK, [row])
        with pytest.raises(LogRowError, match="no kind"):
            w.append(PREDICTIONS, [_row(1)])
        _die(w)

    asyncio.run(go())
    assert recover(tmp_path) == 0  # the classifier's writer never touches a generative segment
    assert recover_llm(tmp_path) == 1 and recover_llm(tmp_path) == 0
    assert len(read_generations(tmp_path, GENERATION_FEEDBACK)) == 1
    assert len(read_generations(tmp_path, GENERATIONS)) == 0
