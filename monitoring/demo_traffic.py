"""Traffic for the drift demo: generated tickets sent to the Ray Serve endpoint (or logged in-process),
with feedback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

import pandas as pd

from pipelines.config import DataConfig, GenerateConfig, IngestConfig, Params
from pipelines.errors import DataError
from pipelines.io import free_port
from pipelines.registry.aliases import CHAMPION


def period(n: int, seed: int, drift: bool) -> pd.DataFrame:
    """``n`` generated tickets (period B when ``drift``), cleaned as ingest cleans training data: text, label."""
    from pipelines.data.generator import generate_tickets
    from pipelines.data.ingestion import ingest

    raw = generate_tickets(GenerateConfig(n_rows=max(100, n), seed=seed, n_customers=max(50, n // 3)), drift=drift)
    df, _ = ingest(raw, DataConfig(), IngestConfig())
    return df[["text", "label"]].astype(str).head(n).reset_index(drop=True)


class Sender:
    """POST /predict + /feedback to ``python -m serving.app`` in this repository, or write the log in-process."""

    def __init__(self, params: Params, in_process: bool = False, wait_s: float = 180.0) -> None:
        self.params, self.proc, self.url = params, None, ""
        self.mode = "in-process (serving.prediction_log.write_part)"
        if not in_process:
            self._start(wait_s)

    def _start(self, wait_s: float) -> None:
        import requests

        port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.app", "--params", "params.yaml", "--port", str(port)],
            stdout=open("serve.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url, deadline = f"http://127.0.0.1:{port}", time.time() + wait_s
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.mode = f"through the Ray Serve endpoint {self.url} (log: serve.log)"
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        print(
            f"[demo] the endpoint did not become ready in {wait_s:.0f} s (see serve.log); logging in-process",
            flush=True,
        )
        self.close()

    def send(self, df: pd.DataFrame) -> None:
        """Predict every text and send its true label as feedback."""
        if self.proc is None:
            return self._in_process(df)
        import requests

        texts, labels = df["text"].tolist(), df["label"].tolist()
        for s in range(0, len(texts), 32):
            r = requests.post(f"{self.url}/predict", json={"texts": texts[s : s + 32]}, timeout=120)
            r.raise_for_status()
            rid = r.json()["request_id"]
            for i, label in enumerate(labels[s : s + 32]):
                requests.post(
                    f"{self.url}/feedback", json={"request_id": rid, "item": i, "label": label}, timeout=30
                ).raise_for_status()
        time.sleep(self.params.serve.log_flush_s + 2.0)  # the replica flushes its log buffer on a timer

    def _in_process(self, df: pd.DataFrame) -> None:
        """What serving would log: the served version (``serve.model_alias``) predicts, feedback follows."""
        from pipelines.classifier.pyfunc import load_registered
        from pipelines.registry import tracking
        from serving.prediction_log import FEEDBACK, PREDICTIONS, feedback_row, prediction_row, write_part

        reg = tracking.Registry(self.params.mlflow)
        version = reg.alias(self.params.serve.model_alias)
        if version is None:
            raise DataError(f"'{reg.name}' has no '{self.params.serve.model_alias}' alias (serve.model_alias)")
        model = load_registered(reg, version)
        proba, now = model.predict_proba(df["text"].tolist()), datetime.now(timezone.utc)
        preds, fbs = [], []
        for text, label, p in zip(df["text"], df["label"], proba):
            rid = uuid.uuid4().hex
            preds.append(
                prediction_row(
                    ts=now,
                    request_id=rid,
                    item=0,
                    model_name=reg.name,
                    model_version=version,
                    text=text,
                    stored_text=text,  # already cleaned as ingest cleans (period())
                    classes=model.classes,
                    proba=p,
                    latency_ms=0.0,
                    batch_size=len(df),
                )
            )
            fbs.append(feedback_row(ts=now, request_id=rid, item=0, true_label=label))
        write_part(self.params.monitor.log_dir, PREDICTIONS, preds, now)
        write_part(self.params.monitor.log_dir, FEEDBACK, fbs, now)

    def close(self) -> None:
        """SIGINT the server we started (it drains and flushes the log), then make sure it is gone."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def before_after(params: Params) -> str:
    """Old vs new champion on fresh period-B and period-A tickets."""
    from pipelines.classifier.pyfunc import load_registered
    from pipelines.metrics import evaluate
    from pipelines.registry import tracking
    from pipelines.registry.gate import HISTORY_TAG

    reg = tracking.Registry(params.mlflow)
    history = [v for v in reg.model_tag(HISTORY_TAG).split(",") if v]
    first, now = history[0], reg.alias(CHAMPION)
    lines = [f"  {'model':<22}{'B accuracy':>12}{'B macro-F1':>12}{'A accuracy':>12}{'A macro-F1':>12}"]
    b, a = period(1000, 999, drift=True), period(1000, 998, drift=False)
    for name, v in (("before (v" + first + ")", first), ("after  (v" + str(now) + ")", now)):
        model = load_registered(reg, v)
        mb, _ = evaluate(model, b["text"].tolist(), b["label"].tolist(), split="B", allow_unseen=True)
        ma, _ = evaluate(model, a["text"].tolist(), a["label"].tolist(), split="A", allow_unseen=True)
        lines.append(
            f"  {name:<22}{mb['accuracy']:>12.4f}{mb['macro_f1']:>12.4f}{ma['accuracy']:>12.4f}{ma['macro_f1']:>12.4f}"
        )
    if now == first:
        lines.append("  (the retrained challenger was not promoted: see reports/promotion.md)")
    return "\n".join(lines)
