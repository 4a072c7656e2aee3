"""The prediction log writer: batched part files, and nothing lost when a replica dies between flushes."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from serving.log_writer import WAL_DIR, LogWriter, recover
from serving.prediction_log import FEEDBACK, PREDICTIONS, read_log


def _row(i: int) -> dict:
    return {
        "ts": datetime.now(timezone.utc),
        "request_id": f"{i:032x}",
        "item": 0,
        "model_name": "m",
        "model_version": "1",
        "text_sha256": "0" * 64,
        "text": None,
        "label": "a",
        "confidence": 0.9,
        "probabilities": "{}",
        "latency_ms": 1.0,
        "batch_size": 1,
    }


def test_flush_every_n_rows_and_on_close(tmp_path) -> None:
    async def go():
        w = LogWriter(tmp_path, flush_rows=10, flush_s=60)
        await w.start()
        for i in range(25):
            w.append(PREDICTIONS, [_row(i)])
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        parts_before_close = len(list((tmp_path / PREDICTIONS).glob("date=*/part-*.parquet")))
        await w.close()
        return parts_before_close

    assert asyncio.run(go()) == 2
    assert len(read_log(tmp_path, PREDICTIONS)) == 25
    assert not list((tmp_path / WAL_DIR).glob("*.jsonl"))


def test_a_crash_between_flushes_loses_nothing(tmp_path) -> None:
    async def crash():
        w = LogWriter(tmp_path, flush_rows=1000, flush_s=60)
        await w.start()
        w.append(PREDICTIONS, [_row(i) for i in range(7)])
        w.append(FEEDBACK, [{"ts": datetime.now(timezone.utc), "request_id": "a" * 32, "item": 0, "true_label": "b"}])
        w._task.cancel()
        w._segment.fh.close()  # the process dies: no flush, the lock goes away with it

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
