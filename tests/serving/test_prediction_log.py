"""The prediction-log row has one owner: the builders make every row, and what serving logs is exactly the schema."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import numpy as np
import pytest

from pipelines.errors import DataError
from serving.prediction_log import (
    FEEDBACK,
    PREDICTIONS,
    feedback_row,
    prediction_row,
    read_log,
    text_hash,
    write_part,
)
from tests.helpers.monitoring import check_log_rows

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _row(**kw):
    args = dict(
        ts=T0,
        request_id="r",
        item=np.int64(1),
        model_name="m",
        model_version=3,
        text="my card was charged twice",
        stored_text="my card was charged twice",
        classes=["billing", "refund"],
        proba=np.array([0.25, 0.75], dtype=np.float32),
        latency_ms=np.float64(4),
        batch_size=np.int32(2),
    )
    return prediction_row(**{**args, **kw})


def test_the_builders_make_exactly_the_schema_and_agree_with_their_probabilities(tmp_path):
    row = _row()
    check_log_rows(PREDICTIONS, [row])
    assert row["label"] == "refund" and row["confidence"] == 0.75 and row["model_version"] == "3"
    assert row["text_sha256"] == text_hash("my card was charged twice")
    assert _row(stored_text=None)["text"] is None  # serve.log_text: false keeps the hash only
    fb = feedback_row(ts=T0, request_id="r", item=np.int64(1), true_label="billing")
    check_log_rows(FEEDBACK, [fb])
    write_part(tmp_path, PREDICTIONS, [row])
    write_part(tmp_path, FEEDBACK, [fb])
    assert read_log(tmp_path, PREDICTIONS)["label"].tolist() == ["refund"]
    assert read_log(tmp_path, FEEDBACK)["true_label"].tolist() == ["billing"]


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(DataError, match="timezone-aware"):
        feedback_row(ts=datetime(2026, 3, 1), request_id="r", item=0, true_label="billing")
    with pytest.raises(DataError, match=r"one probability per class \['billing', 'refund'\]"):
        _row(proba=[1.0])


def test_the_service_logs_rows_of_exactly_the_schema(tiny_registry, tmp_path, monkeypatch, serve_cfg):
    from serving.model_source import ChampionSource
    from serving.schemas import FeedbackRequest, PredictResponse
    from serving.service import ClassifierService

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    service = ClassifierService(serve_cfg(tmp_path, batching="none"), ChampionSource(tiny_registry.mlflow))
    logged: dict[str, list[dict]] = {PREDICTIONS: [], FEEDBACK: []}
    monkeypatch.setattr(service.log, "append", lambda kind, rows: logged[kind].extend(rows))

    async def traffic() -> PredictResponse:
        await service.runner.start()
        await service.refresh()
        try:
            answer = await service.predict(tiny_registry.texts)
        finally:
            await service.runner.stop()
        service.feedback(FeedbackRequest(request_id=answer.request_id, item=1, label="account_access"))
        return answer

    answer = asyncio.run(traffic())
    check_log_rows(PREDICTIONS, logged[PREDICTIONS])
    check_log_rows(FEEDBACK, logged[FEEDBACK])
    assert [r["label"] for r in logged[PREDICTIONS]] == [p.label for p in answer.predictions]
    assert [r["item"] for r in logged[PREDICTIONS]] == list(range(len(tiny_registry.texts)))


def test_text_hashes_are_keyed_so_a_guessed_text_cannot_be_confirmed(monkeypatch):
    """The log used to hold a bare sha256: anyone with the log could confirm a guessed card number or name."""
    import hashlib

    from serving import prediction_log

    card = "my card 4111111111111111 was charged twice"
    assert text_hash(card) != hashlib.sha256(card.encode()).hexdigest()
    assert text_hash(card, b"k" * 32) == text_hash(card, b"k" * 32) != text_hash(card, b"j" * 32)
    monkeypatch.setattr(prediction_log, "_hash_key", None)
    monkeypatch.setenv("MY_HASH_KEY", "s3cret-s3cret-s3cret")
    assert prediction_log.configure_hash_key("MY_HASH_KEY") is True
    assert text_hash(card) == text_hash(card, b"s3cret-s3cret-s3cret")
    assert _row(text=card)["text_sha256"] == text_hash(card, b"s3cret-s3cret-s3cret")
    monkeypatch.setenv("MY_HASH_KEY", "short")
    with pytest.raises(DataError, match="MY_HASH_KEY is too short"):
        prediction_log.configure_hash_key("MY_HASH_KEY")
    monkeypatch.setattr(prediction_log, "_hash_key", None)
    monkeypatch.delenv("MY_HASH_KEY")
    assert prediction_log.configure_hash_key("MY_HASH_KEY") is False  # a random key of this process
    assert text_hash(card) != text_hash(card, b"s3cret-s3cret-s3cret")


def test_a_writer_given_a_key_hashes_under_it_and_falls_back_to_the_process_key(tmp_path, monkeypatch):
    """The app builder's key (serve.hash_key in the replica's config) is the writer's; only a writer given none
    uses this process's key (hash_key_env here, else random)."""
    from serving import prediction_log
    from serving.log_writer import LogWriter

    monkeypatch.setattr(prediction_log, "_hash_key", None)
    monkeypatch.delenv("TICKETOPS_HASH_KEY", raising=False)
    given = LogWriter(tmp_path, hash_key="the-builders-key-0123")
    assert given.hash_key == b"the-builders-key-0123" and prediction_log._hash_key is None
    card = "4111111111111111"
    assert _row(text=card, hash_key=given.hash_key)["text_sha256"] == text_hash(card, b"the-builders-key-0123")
    fallback = LogWriter(tmp_path)
    assert fallback.hash_key == prediction_log._hash_key != given.hash_key  # a random key of this process
    with pytest.raises(DataError, match="hash key is too short"):
        LogWriter(tmp_path, hash_key="short")


def test_the_row_builders_refuse_values_the_log_cannot_hold():
    with pytest.raises(DataError, match=r"'item' must be in \[0, 2147483647\]"):
        feedback_row(ts=T0, request_id="r", item=1099511627776, true_label="billing")
    with pytest.raises(DataError, match="'item'"):
        _row(item=-1)
    with pytest.raises(DataError, match="'true_label' must have 1 to 200 characters"):
        feedback_row(ts=T0, request_id="r", item=0, true_label="x" * 201)
    with pytest.raises(DataError, match="'request_id'"):
        _row(request_id="r" * 129)


def test_text_is_not_logged_by_default_and_the_log_is_git_ignored():
    import subprocess

    from pipelines.config import ServeConfig, ServeLlmConfig

    assert ServeConfig().log_text is False and ServeLlmConfig().log_text is False
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "data/production/predictions/date=2026-03-01/part-x.parquet"], check=False
    )
    assert ignored.returncode == 0, "data/production/ is not in .gitignore: `git add .` would commit the log"
