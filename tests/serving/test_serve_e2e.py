"""End to end through Ray Serve on 127.0.0.1: a real registered scikit-learn champion, hot swap under load, a
replica killed with SIGKILL under load, and a prediction log that holds every answered text exactly once (by
request id and item, not a row count) after the kill, a graceful shutdown and a restart."""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import signal
import threading
import time

import numpy as np
import pytest
import requests

from pipelines.config import Params
from pipelines.io import free_port
from pipelines.registry.tracking import Registry
from serving.prediction_log import FEEDBACK, PREDICTIONS, read_log

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from serving.app import build, run_local  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


class Served:
    """Every request the server answered with 200 (request id -> number of texts) and every recorded feedback, to
    compare with the log; texts of requests that failed (they may or may not be logged: a replica killed after
    logging them) are counted apart."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answered: dict[str, int] = {}
        self.feedback_recorded: list[tuple[str, int]] = []
        self.failed_texts = 0
        self._lock = threading.Lock()

    @property
    def texts(self) -> int:
        return sum(self.answered.values())

    def predict(self, texts: list[str], **kw: object) -> requests.Response:
        try:
            r = requests.post(f"{self.url}/predict", json={"texts": texts, **kw}, timeout=30)
        except requests.RequestException:
            with self._lock:
                self.failed_texts += len(texts)
            raise
        with self._lock:
            if r.status_code == 200:
                self.answered[r.json()["request_id"]] = len(texts)
            else:
                self.failed_texts += len(texts)
        return r

    def feedback(self, request_id: str, item: int, label: str) -> requests.Response:
        body = {"request_id": request_id, "item": item, "label": label}
        r = requests.post(f"{self.url}/feedback", json=body, timeout=10)
        if r.status_code == 200:
            self.feedback_recorded.append((request_id, item))
        return r


@pytest.fixture(scope="module")
def server(tiny_registry, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", tiny_registry.uri)
    mp.delenv("TICKETOPS_API_KEY", raising=False)
    params = Params(mlflow=tiny_registry.mlflow)
    params.serve = params.serve.model_copy(
        update=dict(
            port=free_port(),
            log_dir=str(tmp / "production"),
            watch_interval_s=0.5,
            log_flush_s=1.0,
            max_batch_size=16,
            max_texts_per_request=8,
        )
    )
    overrides = params.serve.model_dump()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a `ray start` cluster
    try:
        app = _app(params, overrides, tmp)
        served = Served(run_local(params, app, wait_ready_s=120))
        served.params, served.app, served.log_dir = params, app, params.serve.log_dir  # type: ignore[attr-defined]
        yield served
    finally:
        Registry(tiny_registry.mlflow).set_alias("champion", tiny_registry.versions[0])
        serve.shutdown()
        ray.shutdown()
        mp.undo()


def _app(params: Params, overrides: dict, tmp) -> object:
    # params come from a YAML file like the real CLI: write one in the temp dir
    import yaml

    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump({"mlflow": params.mlflow.model_dump(), "serve": overrides}))
    return build({"params": str(path)})


def test_predict_equals_the_models_own_answers(server, tiny_registry) -> None:
    r = server.predict(tiny_registry.texts)
    assert r.status_code == 200, r.text
    body = r.json()
    clf = tiny_registry.models[tiny_registry.versions[0]]
    expected = clf.predict_proba(tiny_registry.texts)
    assert [p["label"] for p in body["predictions"]] == [clf.classes[i] for i in expected.argmax(1)]
    got = np.array([[p["probabilities"][c] for c in clf.classes] for p in body["predictions"]])
    assert np.allclose(got, expected, atol=1e-5)
    assert body["model_version"] == tiny_registry.versions[0]
    assert requests.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]["/predict"]


def test_bad_requests_are_4xx_and_server_stays_healthy(server) -> None:
    for payload in ({"texts": ["  "]}, {"texts": ["a"] * 9}, {"texts": [3]}, {"texts": ["x" * 6000]}, {}):
        r = requests.post(f"{server.url}/predict", json=payload, timeout=10)
        assert r.status_code == 422 and r.json()["detail"].startswith("invalid request:"), (payload, r.text)
    r = requests.post(
        f"{server.url}/predict", data="not json", headers={"content-type": "application/json"}, timeout=10
    )
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/readyz", timeout=10).json()["status"] == "ready"


def test_feedback(server) -> None:
    rid = server.predict(["I was billed twice"]).json()["request_id"]
    r = server.feedback(rid, 0, "billing")
    assert r.status_code == 200 and r.json()["matched"] is True
    assert server.feedback("f" * 32, 0, "billing").status_code == 404
    assert server.feedback(rid, 1099511627776, "billing").status_code == 422  # the poisoned body


def test_concurrent_load_forms_batches(server, tiny_registry) -> None:
    texts = [t * (1 + i % 3) for i, t in enumerate(tiny_registry.texts * 40)]
    with cf.ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(lambda t: server.predict([t]).status_code, texts))
    assert codes == [200] * len(texts)
    m = requests.get(f"{server.url}/metrics", timeout=10).text
    buckets = {
        float(le): float(v) for le, v in re.findall(r'ticketops_batch_size_bucket\{le="([\d.]+)"\} ([\d.e+]+)', m)
    }
    total = float(re.search(r"ticketops_batch_size_count ([\d.e+]+)", m).group(1))
    assert buckets[1.0] < total, "every model call had a single text: no batching happened"
    for name in [
        "ticketops_requests_total",
        "ticketops_request_latency_seconds_bucket",
        "ticketops_queue_depth",
        "ticketops_model_version",
        "ticketops_request_errors_total",
    ]:
        assert name in m


def test_hot_swap_under_load_fails_nothing(server, tiny_registry) -> None:
    reg = Registry(tiny_registry.mlflow)
    v1, v2 = tiny_registry.versions
    seen: list[str] = []
    failures: list[str] = []
    stop = time.monotonic() + 25

    def stream() -> None:
        while time.monotonic() < stop and not (seen and seen[-1] == v2 and seen.count(v2) > 20):
            r = server.predict(["my invoice is wrong", "cannot log in"])
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text}")
            else:
                seen.append(r.json()["model_version"])

    with cf.ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(stream) for _ in range(4)]
        time.sleep(1.0)
        reg.set_alias("champion", v2)
        for f in futs:
            f.result()
    assert not failures, failures[:3]
    assert seen[0] == v1 and seen[-1] == v2 and set(seen) == {v1, v2}
    # after the switch the answers are the new model's
    body = server.predict(tiny_registry.texts).json()
    clf2 = tiny_registry.models[v2]
    assert body["model_version"] == v2
    assert [p["label"] for p in body["predictions"]] == [
        clf2.classes[i] for i in clf2.predict_proba(tiny_registry.texts).argmax(1)
    ]
    m = requests.get(f"{server.url}/metrics", timeout=10).text
    assert f"ticketops_model_version {float(v2)}" in m and "ticketops_model_swaps_total 1.0" in m


def test_a_replica_killed_with_sigkill_under_load_comes_back(server) -> None:
    """kill -9 of the replica while requests stream in: Serve starts a new one, which recovers the dead one's
    write-ahead segment (checked against every answered request by the next test)."""
    pid = requests.get(f"{server.url}/healthz", timeout=10).json()["pid"]
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            try:
                server.predict(["my invoice is wrong", "cannot log in"])
            except requests.RequestException:
                time.sleep(0.05)

    with cf.ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(stream) for _ in range(4)]
        time.sleep(1.5)
        before = server.texts
        os.kill(pid, signal.SIGKILL)
        new_pid = None
        deadline = time.monotonic() + 180
        while new_pid is None and time.monotonic() < deadline:
            try:
                h = requests.get(f"{server.url}/healthz", timeout=5)
                if h.status_code == 200 and h.json().get("pid") != pid:
                    new_pid = h.json()["pid"]
            except requests.RequestException:
                pass
            time.sleep(0.5)
        for _ in range(200):  # some load on the new replica
            if server.texts > before + 40 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        stop.set()
        for f in futs:
            f.result()
    assert new_pid is not None, "no replica came back after kill -9"
    assert server.predict(["refund please"]).status_code == 200


def _check_log_against_answers(server: Served) -> None:
    """Every answered text is in the log exactly once (dedupe key (request_id, item)); rows of requests nobody
    got an answer for (a killed replica had logged them) are at most the texts of the failed requests."""
    preds = read_log(server.log_dir, PREDICTIONS)
    assert server.texts > 0 and len(preds) > 0
    assert not preds.duplicated(["request_id", "item"]).any(), "a row was logged twice"
    logged = preds.groupby("request_id")["item"].count().to_dict()
    wrong = {rid: (n, logged.get(rid, 0)) for rid, n in server.answered.items() if logged.get(rid, 0) != n}
    assert not wrong, f"answered requests whose rows are missing (texts, logged): {list(wrong.items())[:5]}"
    extra = sum(n for rid, n in logged.items() if rid not in server.answered)
    assert extra <= server.failed_texts, (extra, server.failed_texts)
    assert preds["text_sha256"].str.len().eq(64).all() and preds["batch_size"].ge(1).all()
    fb = read_log(server.log_dir, FEEDBACK)
    assert sorted(zip(fb["request_id"], fb["item"])) == sorted(server.feedback_recorded)


def test_log_holds_every_answer_once_after_shutdown_and_restart(server) -> None:
    # its own traffic first, so the test means something when it runs alone
    ids = [server.predict([f"refund please {i}", "crash on start"]).json()["request_id"] for i in range(5)]
    assert server.feedback(ids[0], 1, "bug_report").status_code == 200
    serve.shutdown()  # graceful: replicas drain, the lifespan flushes the log
    _check_log_against_answers(server)
    # a restart appends; nothing is lost or duplicated
    run_local(server.params, server.app, wait_ready_s=120)
    for _ in range(5):
        assert server.predict(["refund please", "crash on start"]).status_code == 200
    serve.shutdown()
    _check_log_against_answers(server)
