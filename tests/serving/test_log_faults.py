"""Fault injection on the prediction log, through the HTTP API where a client would see it (issue 14, item 8).

- a corrupt write-ahead segment is quarantined to a file a person can read, and the server starts;
- a full disk (``OSError(ENOSPC)`` injected on the write-ahead append, or on the Parquet part write) gives 503s
  or keeps the rows in the write-ahead file, ``/readyz`` says degraded, and nothing answered is lost;
- a poisoned ``/feedback`` body (the issue's item 1099511627776, an over-long label or id) is refused and never
  reaches the log;
- (slow) a process holding a writer is SIGKILLed mid-stream, again and again: after a restart the log holds every
  acknowledged row once (dedupe key ``(request_id, item)``).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import serving.log_writer as lw
from serving.api import build_app
from serving.log_writer import QUARANTINE_DIR, WAL_DIR
from serving.model_source import ChampionSource
from serving.prediction_log import FEEDBACK, PREDICTIONS, read_log
from serving.service import ClassifierService

LOCAL = "http://127.0.0.1"  # a Host in serve.allowed_hosts
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def app(tiny_registry, tmp_path, monkeypatch, serve_cfg):
    """``app(**serve overrides)`` -> a started TestClient with ``.service`` and ``.log_dir``."""
    monkeypatch.delenv("TICKETOPS_API_KEY", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    clients: list[TestClient] = []

    def make(**kw: object) -> TestClient:
        cfg = serve_cfg(tmp_path, **{"batching": "none", "log_flush_s": 60, "log_flush_rows": 10_000, **kw})
        service = ClassifierService(cfg, ChampionSource(tiny_registry.mlflow))
        c = TestClient(build_app(service), base_url=LOCAL)
        c.__enter__()
        clients.append(c)
        for _ in range(200):
            if service.model is not None:
                break
            time.sleep(0.05)
        c.service, c.log_dir = service, Path(cfg.log_dir)  # type: ignore[attr-defined]
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def _predict(c: TestClient, texts: list[str]):  # noqa: ANN202
    return c.post("/predict", json={"texts": texts})


def test_a_corrupt_write_ahead_segment_is_quarantined_and_the_server_starts(app, tmp_path) -> None:
    wal = tmp_path / "production" / WAL_DIR
    wal.mkdir(parents=True)
    good = {
        "kind": PREDICTIONS,
        "row": {
            "ts": "2026-03-01T10:00:00+00:00", "request_id": "a" * 32, "item": 0, "model_name": "m",
            "model_version": "1", "text_sha256": "0" * 64, "text": None, "label": "billing", "confidence": 0.9,
            "abstained": False, "probabilities": "{}", "latency_ms": 1.0, "batch_size": 1,
        },
    }  # fmt: skip
    poison = {"kind": FEEDBACK, "row": {"ts": "2026-03-01T10:00:01+00:00", "request_id": "a" * 32,
                                         "item": 1099511627776, "true_label": "billing"}}  # fmt: skip
    (wal / "20260301T100000-1-deadbeef.jsonl").write_bytes(
        (json.dumps(good) + "\n" + json.dumps(poison) + "\n").encode() + b"\x00\xff garbage\n"
    )
    c = app()
    assert c.get("/readyz").json()["status"] == "ready"
    assert _predict(c, ["refund please"]).status_code == 200
    quarantine = c.log_dir / QUARANTINE_DIR / "wal" / "20260301T100000-1-deadbeef.jsonl"
    entries = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert sorted(e["reason"] for e in entries) == ["schema", "undecodable"]
    assert "1099511627776" in json.dumps(entries)
    c.__exit__(None, None, None)
    preds = read_log(c.log_dir, PREDICTIONS)
    assert "a" * 32 in set(preds["request_id"]) and len(preds) == 2  # the good row, recovered, and the new one
    assert len(read_log(c.log_dir, FEEDBACK)) == 0
    assert not [p for p in (c.log_dir / WAL_DIR).glob("*.jsonl") if p.stat().st_size]


def test_a_full_disk_on_the_write_ahead_append_answers_503_and_loses_nothing(app, monkeypatch) -> None:
    c = app(feedback_accept_unknown=True)
    ok = _predict(c, ["my invoice is wrong"])
    assert ok.status_code == 200
    real = lw._write_all

    def full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])  # half a line reaches the file, then the disk is full
        raise ENOSPC

    monkeypatch.setattr(lw, "_write_all", full)
    r = _predict(c, ["cannot log in", "the app crashed"])
    assert r.status_code == 503 and "No space left on device" in r.json()["detail"]
    fb = c.post("/feedback", json={"request_id": ok.json()["request_id"], "item": 0, "label": "billing"})
    assert fb.status_code == 503
    ready = c.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "degraded"
    assert "append failing" in ready.json()["detail"]
    assert 'stage="append"' in c.get("/metrics").text

    monkeypatch.setattr(lw, "_write_all", real)  # space again
    again = _predict(c, ["refund please"])
    assert again.status_code == 200 and c.get("/readyz").json()["status"] == "ready"
    c.__exit__(None, None, None)
    preds = read_log(c.log_dir, PREDICTIONS)
    assert sorted(preds["request_id"]) == sorted([ok.json()["request_id"], again.json()["request_id"]])
    assert len(read_log(c.log_dir, FEEDBACK)) == 0  # the refused feedback is not half-recorded either


def test_a_full_disk_on_the_part_write_keeps_the_rows_and_says_degraded(app, monkeypatch) -> None:
    c = app(log_flush_s=0.05)
    real = lw.write_table_part

    def full(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        raise ENOSPC

    monkeypatch.setattr(lw, "write_table_part", full)
    ids = [_predict(c, [f"refund number {i}", "cannot log in"]).json()["request_id"] for i in range(3)]
    for _ in range(200):
        if c.get("/readyz").status_code == 503:
            break
        time.sleep(0.02)
    ready = c.get("/readyz").json()
    assert ready["status"] == "degraded" and "flush failing" in ready["detail"], ready
    assert not read_log(c.log_dir, PREDICTIONS).shape[0]
    monkeypatch.setattr(lw, "write_table_part", real)
    for _ in range(200):
        if c.get("/readyz").status_code == 200:
            break
        time.sleep(0.02)
    assert c.get("/readyz").json()["status"] == "ready"
    c.__exit__(None, None, None)
    preds = read_log(c.log_dir, PREDICTIONS)
    assert sorted(set(preds["request_id"])) == sorted(ids) and len(preds) == 6
    assert not preds.duplicated(["request_id", "item"]).any()


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "a" * 32, "item": 1099511627776, "label": "billing"},  # the poison
        {"request_id": "a" * 32, "item": 8, "label": "billing"},  # beyond serve.max_texts_per_request
        {"request_id": "a" * 32, "item": -1, "label": "billing"},
        {"request_id": "a" * 32, "item": 0, "label": "x" * 10_000},
        {"request_id": "a" * 32, "item": 0, "label": "bill\x00ing"},
        {"request_id": "a" * 10_000, "item": 0, "label": "billing"},
        {"request_id": "a" * 32, "item": 0, "label": "billing", "extra": "x"},
    ],
    ids=["huge-item", "item-over-max-texts", "negative-item", "long-label", "control-char", "long-id", "extra"],
)
def test_a_poisoned_feedback_body_is_refused_and_never_reaches_the_log(app, body) -> None:
    c = app(feedback_accept_unknown=True, max_texts_per_request=8)  # what serving/serve_config.yaml sets
    r = c.post("/feedback", json=body)
    assert r.status_code in (400, 422), r.text
    assert c.post("/feedback", json={"request_id": "b" * 32, "item": 0, "label": "billing"}).status_code == 200
    c.__exit__(None, None, None)
    assert read_log(c.log_dir, FEEDBACK)["request_id"].tolist() == ["b" * 32]  # the log stays writable
    assert not (c.log_dir / QUARANTINE_DIR).exists()


# ---------------------------------------------------------------------------------------------------- kill -9
APPENDER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import datetime, timezone
    from serving.log_writer import LogWriter
    from serving.prediction_log import PREDICTIONS, prediction_row

    async def main(root, run):
        w = LogWriter(root, flush_rows=7, flush_s=0.01)
        await w.start()
        print("started", flush=True)
        i = 0
        while True:
            rid = f"{run:08x}{i:024x}"
            rows = [prediction_row(ts=datetime.now(timezone.utc), request_id=rid, item=k, model_name="m",
                                   model_version="1", text=f"text {i} {k}", stored_text=None, classes=["a", "b"],
                                   proba=[0.4, 0.6], latency_ms=1.0, batch_size=3) for k in range(3)]
            w.append(PREDICTIONS, rows)
            print(rid, flush=True)  # acknowledged: the rows are in the write-ahead file
            i += 1
            await asyncio.sleep(0)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_under_load_then_restart_keeps_every_acknowledged_row_once(tmp_path) -> None:
    root = tmp_path / "production"
    script = tmp_path / "appender.py"
    script.write_text(APPENDER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "TICKETOPS_HASH_KEY": "k" * 32}
    acked: list[str] = []
    for run, stop_after in enumerate((150, 333, 501, 777)):  # each run also recovers the runs before it
        proc = subprocess.Popen(
            [sys.executable, str(script), str(root), str(run)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        mine = []
        for line in proc.stdout:
            mine.append(line.strip())
            if len(mine) >= stop_after:
                break
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: appends and flushes are running
        proc.wait(30)
        mine += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]  # acked before death
        acked += mine
    assert lw.recover(root) >= 0  # the restart: orphaned segments become parts
    preds = read_log(root, PREDICTIONS)
    assert not preds.duplicated(["request_id", "item"]).any(), "a row was written twice"
    logged = set(preds["request_id"])
    assert set(acked) <= logged, f"{len(set(acked) - logged)} acknowledged request(s) lost"
    extra = logged - set(acked)  # appended, but killed before it could print the acknowledgement
    assert len(extra) <= 4, extra
    assert (preds.groupby("request_id")["item"].count() == 3).all()  # one append is all rows or none
    assert not [p for p in (root / WAL_DIR).glob("*.jsonl")]


@pytest.mark.parametrize("field", ["category", "priority", "product", "order_id", "summary"])
def test_generative_feedback_fields_are_bounded_before_they_reach_the_log(field) -> None:
    from pydantic import ValidationError

    from serving.llm.openai_schemas import GenerativeFeedback

    rid = "chatcmpl-" + "a" * 32
    assert GenerativeFeedback.model_validate({"request_id": rid, field: "x" * 200}).fields() == {field: "x" * 200}
    with pytest.raises(ValidationError, match="at most"):
        GenerativeFeedback.model_validate({"request_id": rid, field: "x" * 100_000})
