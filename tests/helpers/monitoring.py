"""Monitoring test helpers: tiny generated tickets, a TF-IDF model, a temp registry, prediction-log writers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.classifier.model_api import SklearnTextClassifier
from pipelines.config import DataConfig, GenerateConfig, IngestConfig, Params
from pipelines.data.generator import generate_tickets
from pipelines.data.ingestion import ingest
from pipelines.registry.aliases import CHAMPION

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def tickets(n: int, seed: int, drift: bool = False) -> pd.DataFrame:
    """Generated tickets cleaned exactly as ingest cleans training data (text, label)."""
    raw = generate_tickets(GenerateConfig(n_rows=max(100, n), seed=seed, n_customers=max(25, n // 4)), drift=drift)
    df, _ = ingest(raw, DataConfig(), IngestConfig())
    return df[["text", "label"]].astype(str).head(n).reset_index(drop=True)


def train_model(df: pd.DataFrame) -> SklearnTextClassifier:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    est = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2), LogisticRegression(C=10, max_iter=1000))
    return SklearnTextClassifier(est.fit(df["text"].tolist(), df["label"].tolist()), "tfidf")


def hash_encoder(texts: list[str]) -> np.ndarray:
    """A cheap deterministic stand-in for MiniLM (hashed bag of words), so most tests skip the transformer."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=256, alternate_sign=False, norm="l2").transform(texts).toarray()


def write_window(
    root: Path,
    model: SklearnTextClassifier,
    df: pd.DataFrame,
    version: str,
    start: datetime,
    feedback: float = 1.0,
    tag: str = "w",
) -> None:
    """Log ``df`` as predictions of ``version`` (one request per text) and feedback for a share of them."""
    from serving.prediction_log import FEEDBACK, PREDICTIONS, feedback_row, prediction_row, write_part

    proba = model.predict_proba(df["text"].tolist())
    preds, fbs = [], []
    for i, (text, label, p) in enumerate(zip(df["text"], df["label"], proba)):
        ts, rid = start + timedelta(seconds=i), f"{tag}-{i}"
        preds.append(
            prediction_row(
                ts=ts,
                request_id=rid,
                item=0,
                model_name="ticket-router",
                model_version=version,
                text=text,
                stored_text=text,
                classes=model.classes,
                proba=p,
                latency_ms=5.0,
                batch_size=1,
            )
        )
        if i < feedback * len(df):
            fbs.append(feedback_row(ts=ts + timedelta(seconds=1), request_id=rid, item=0, true_label=label))
    write_part(root, PREDICTIONS, preds, now=start)
    write_part(root, FEEDBACK, fbs, now=start)


def check_log_rows(kind: str, rows: list[dict]) -> None:
    """Every row has exactly the columns of ``kind``'s schema, each value of that column's Python type."""
    import pyarrow as pa

    from serving.prediction_log import SCHEMAS

    schema = SCHEMAS[kind]
    assert rows, f"no {kind} rows"
    for row in rows:
        assert list(row) == schema.names, (list(row), schema.names)
        for name, value in row.items():
            t = schema.field(name).type
            if value is None:
                assert schema.field(name).nullable and name == "text", (name, value)
            elif pa.types.is_timestamp(t):
                assert isinstance(value, datetime) and value.utcoffset() == timedelta(0), (name, value)
            elif pa.types.is_integer(t):
                assert type(value) is int, (name, type(value))
            elif pa.types.is_floating(t):
                assert type(value) is float, (name, type(value))
            elif pa.types.is_boolean(t):
                assert type(value) is bool, (name, type(value))
            else:
                assert type(value) is str, (name, type(value))
    pa.Table.from_pylist(rows, schema=schema)  # and pyarrow takes them as they are


def make_params(tmp: Path, **monitor) -> Params:
    return Params.model_validate(
        {
            "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "artifact_root": str(tmp / "mlartifacts")},
            "monitor": {
                "log_dir": str(tmp / "production"),
                "reports_dir": str(tmp / "reports"),
                "window_size": 300,
                "min_window_rows": 150,
                "min_labelled_rows": 100,
                "reference_size": 600,
                "persistence": 2,
                **monitor,
            },
        }
    )


def register_champion(params: Params, model: SklearnTextClassifier, test: pd.DataFrame, alias: str = CHAMPION) -> str:
    """Log ``model`` as a pyfunc with its test metrics, register it and point ``alias`` (champion) at it."""
    from pipelines.classifier.pyfunc import log_classifier
    from pipelines.metrics import evaluate
    from pipelines.registry import tracking

    tracking.setup(params.mlflow)
    reg = tracking.Registry(params.mlflow)
    m, _ = evaluate(model, test["text"].tolist(), test["label"].tolist(), split="test")
    with tracking.run("register-test", "register") as active:
        tracking.log_metrics({"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}, prefix="test_")
        info = log_classifier(model, example_texts=test["text"].head(3).tolist())
        version = reg.register(info.model_uri, tags={"source_run_id": active.info.run_id})
    reg.set_alias(alias, version)
    return version
