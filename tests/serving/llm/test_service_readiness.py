"""The generative model's health in the classifier's ``/readyz``: an unwritable generation log or a generative
champion that failed to load makes it ``degraded`` (503, the reason in ``detail``, never the tracking URI), and it
is ready again once the fault is gone; a disabled LM, or one with no champion registered yet, degrades nothing.
Also: the generation log hashes under the key the app builder resolved, not the replica's environment. Fakes of
tests/serving/llm/conftest.py (no registry, no weights, no Ray)."""

from __future__ import annotations

import asyncio
import errno
import os
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pipelines.config import LlmConfig, ServeConfig, ServeLlmConfig
from serving import log_writer
from serving.api import build_app
from serving.llm.openai_api import LocalBackend, UnavailableBackend, attach
from serving.llm.records import read_generations
from serving.llm.service import LLMService
from serving.prediction_log import text_hash
from serving.service import ClassifierService
from tests.serving.llm.conftest import FakeLoader, FakeSource, fake_service

LOCAL = "http://127.0.0.1"  # a Host in serve.allowed_hosts
URI = "sqlite:////srv/secret-store/mlflow.db"
COMPLETION = {"model": "tiny-triage", "prompt": "hello", "max_tokens": 2}


class _Model:
    name, version, classes = "router", "1", ["billing", "refund"]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.tile([0.6, 0.4], (len(texts), 1))


class _ClassifierSource:
    """The classifier's champion: always loads (this file is about the generative side)."""

    uri = URI

    def resolve(self) -> str:
        return "1"

    def load(self, version: str) -> _Model:
        return _Model()

    def describe(self) -> str:
        return "models:/router@champion"


class _LMSource(FakeSource):
    uri = URI  # what watch_champion and the service redact


def _classifier(tmp_path) -> ClassifierService:  # noqa: ANN001
    cfg = ServeConfig(log_dir=str(tmp_path / "production"), watch_interval_s=0, log_flush_s=0.2)
    return ClassifierService(cfg, _ClassifierSource())  # type: ignore[arg-type]


class _App:
    """The classifier's app with the LM attached as in a replica (LocalBackend: the LM in this process)."""

    def __init__(self, tmp_path, lm: LLMService | None) -> None:  # noqa: ANN001
        self.lm = lm
        clf = _classifier(tmp_path)
        backend = LocalBackend(lm) if lm is not None else UnavailableBackend("the generative model is disabled")
        self.client = TestClient(attach(build_app(clf), backend, None, clf.metrics), base_url=LOCAL)

    def __enter__(self) -> TestClient:
        c = self.client.__enter__()
        if self.lm is not None:
            c.portal.call(self.lm.start)  # on the app's event loop (the LM is its own deployment under Ray)
        return c

    def __exit__(self, *exc: object) -> None:
        if self.lm is not None:
            self.client.portal.call(self.lm.stop)
        self.client.__exit__(*exc)


def _wait(c: TestClient, status: int, path: str = "/readyz") -> dict:
    for _ in range(200):
        r = c.get(path)
        if r.status_code == status:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"{path} never answered {status}: {r.status_code} {r.text}")


def _loaded(c: TestClient) -> None:
    """Ready, and the generative champion loaded. A champion still loading is not a readiness problem (the
    classifier serves; ``/v1`` answers 503 + Retry-After meanwhile), so ``/readyz`` alone does not say it."""
    _wait(c, 200)
    _wait(c, 200, "/v1/models")


def test_an_unwritable_generation_log_makes_readyz_degraded(tmp_path, tokenizer, monkeypatch) -> None:
    lm = fake_service(tmp_path, tokenizer)
    with _App(tmp_path, lm) as c:
        _loaded(c)
        real = log_writer._write_all

        def full(fd: int, data: bytes) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(log_writer, "_write_all", full)
        assert c.post("/v1/completions", json=COMPLETION).status_code == 200  # answered; its row is not logged
        body = _wait(c, 503)
        assert body["status"] == "degraded" and body["model_version"] == "1", body  # the classifier still serves
        assert "generation log append failing" in body["detail"] and "No space left" in body["detail"], body
        monkeypatch.setattr(log_writer, "_write_all", real)  # the disk has room again
        assert c.post("/v1/completions", json=COMPLETION).status_code == 200
        assert _wait(c, 200)["status"] == "ready"


def test_a_generative_champion_that_fails_to_load_makes_readyz_degraded_without_the_tracking_uri(
    tmp_path, tokenizer
) -> None:
    cfg = ServeLlmConfig(watch_interval_s=0.1)
    scfg = ServeConfig(log_dir=str(tmp_path / "production"), log_flush_s=0.2)
    loader = FakeLoader(cfg, tokenizer)
    lm = LLMService(cfg, scfg, _LMSource(), system_template=LlmConfig().system_prompt, loader=loader)
    load = loader.load

    def broken(v):  # noqa: ANN001, ANN202
        raise OSError(f"cannot read {URI}/artifacts/adapter of version {v.version}")

    with _App(tmp_path, lm) as c:
        _loaded(c)
        loader.load = broken
        lm.source.version = "2"  # a new champion, which cannot be loaded
        body = _wait(c, 503)
        assert body["status"] == "degraded" and "generative model: loading" in body["detail"], body
        assert "OSError" in body["detail"] and "still serving version 1" in body["detail"], body
        assert URI not in c.get("/readyz").text and "secret-store" not in c.get("/readyz").text
        answer = c.post("/v1/completions", json=COMPLETION).json()
        assert answer["model"] == "tiny-triage:1"  # the old version still answers
        loader.load = load  # the registry is readable again: the swap happens, ready
        assert _wait(c, 200)["status"] == "ready"
        assert c.post("/v1/completions", json=COMPLETION).json()["model"] == "tiny-triage:2"


def test_an_engine_process_that_died_is_503_degraded_and_reloaded_at_the_next_refresh(tmp_path, tokenizer) -> None:
    lm = fake_service(tmp_path, tokenizer, watch_interval_s=0)  # refreshed by hand below
    with _App(tmp_path, lm) as c:
        _loaded(c)
        dead = lm.loader.engines[-1]
        dead.lost = "the engine process exited (exit code -9)"
        r = c.post("/v1/completions", json=COMPLETION)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
        assert r.json()["error"]["code"] == "engine_lost" and "exit code -9" in r.json()["error"]["message"]
        body = _wait(c, 503)
        assert body["status"] == "degraded" and "exit code -9" in body["detail"], body
        assert c.portal.call(lm.refresh) is True  # the same version, loaded again in a new engine
        assert len(lm.loader.engines) == 2 and dead.stopped
        assert c.post("/v1/completions", json=COMPLETION).status_code == 200
        assert _wait(c, 200)["status"] == "ready"
        assert c.portal.call(lm.refresh) is False  # a healthy engine on the champion: nothing to do


def test_no_generative_champion_yet_or_the_lm_disabled_degrades_nothing(tmp_path, tokenizer) -> None:
    with _App(tmp_path / "a", fake_service(tmp_path / "a", tokenizer, version=None)) as c:
        assert _wait(c, 200)["status"] == "ready"
        assert c.get("/v1/models").status_code == 503  # /v1 says why; the classifier is ready
    with _App(tmp_path / "b", None) as c:
        assert _wait(c, 200)["status"] == "ready"


def test_the_generation_log_hashes_under_the_key_it_was_given(tmp_path, tokenizer, monkeypatch) -> None:
    """The replica's environment has no key (serve deploy): rows use the builder's key from the config."""
    from serving import prediction_log

    monkeypatch.delenv("TICKETOPS_HASH_KEY", raising=False)
    monkeypatch.setattr(prediction_log, "_hash_key", None)  # a fresh replica process
    cfg = ServeLlmConfig(watch_interval_s=0.2)
    scfg = ServeConfig(log_dir=str(tmp_path / "production"), log_flush_s=0.2, hash_key="the-builders-key-0123")
    lm = LLMService(
        cfg, scfg, FakeSource(), system_template=LlmConfig().system_prompt, loader=FakeLoader(cfg, tokenizer)
    )
    with _App(tmp_path, lm) as c:
        _loaded(c)
        assert c.post("/v1/completions", json=COMPLETION).status_code == 200
    row = read_generations(scfg.log_dir).iloc[0]
    assert row["prompt_sha256"] == text_hash("hello", b"the-builders-key-0123")
    assert row["prompt_sha256"] != text_hash("hello")  # not this process's own (random) key


def test_the_ray_handle_backend_reports_the_lm_replicas_health() -> None:
    """Under Ray Serve the ingress asks the LM deployment through its handle; a busy replica is not a fault."""
    from ray.serve.exceptions import BackPressureError

    from serving.app import HandleBackend

    class Method:
        def __init__(self, answer) -> None:  # noqa: ANN001
            self.answer = answer

        def remote(self):  # noqa: ANN202
            async def call():  # noqa: ANN202
                if self.answer == "slow":
                    await asyncio.sleep(5)
                if isinstance(self.answer, BaseException):
                    raise self.answer
                return self.answer

            return call()

    class Handle:
        def __init__(self, answer) -> None:  # noqa: ANN001
            self.health = Method(answer)

        def options(self, **kw):  # noqa: ANN003, ANN202
            return self

    def health(answer, **kw) -> str | None:  # noqa: ANN001, ANN003
        return asyncio.run(HandleBackend(Handle(answer)).health(**kw))

    assert health(None) is None
    assert health("generation log flush failing: OSError") == "generation log flush failing: OSError"
    assert health("slow", timeout_s=0.05) is None
    assert health(BackPressureError(num_queued_requests=8, max_queued_requests=8)) is None
    assert "did not answer: RuntimeError" in health(RuntimeError("actor died"))


@pytest.mark.parametrize("failing", ["log", "refresh"])
def test_the_service_problem_names_what_fails(tmp_path, tokenizer, failing) -> None:
    lm = fake_service(tmp_path, tokenizer)
    assert lm.problem() is None
    if failing == "log":
        lm.log._failing["flush"] = "OSError: disk full"
        assert lm.problem() == "generation log flush failing: OSError: disk full"
    else:
        lm.source.uri = URI
        lm.refresh_error = f"loading models:/tiny-triage@champion failed: OSError: {URI}"
        assert lm.problem().startswith("generative model: loading") and URI not in lm.problem()
