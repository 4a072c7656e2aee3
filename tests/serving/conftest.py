"""Fixtures for serving tests: a temporary MLflow sqlite registry with two tiny scikit-learn versions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.config import MlflowConfig, ServeConfig
from tests.helpers import temporary_registry

TRAIN = [
    ("I was charged twice for my subscription this month", "billing"),
    ("the invoice amount is wrong, please fix the bill", "billing"),
    ("my card was billed two times", "billing"),
    ("payment failed but money left my account", "billing"),
    ("I cannot log in, password reset link does not work", "account_access"),
    ("locked out of my account after two factor code", "account_access"),
    ("login page says invalid password again", "account_access"),
    ("cannot sign in to my account", "account_access"),
    ("the app crashes when I open the settings page", "bug_report"),
    ("error 500 when saving a report, looks like a bug", "bug_report"),
    ("button does nothing and the page freezes", "bug_report"),
    ("export crashes with a stack trace", "bug_report"),
]


@dataclass
class TinyRegistry:
    mlflow: MlflowConfig
    uri: str
    versions: list[str]
    models: dict[str, object]  # version -> in-memory SklearnTextClassifier
    texts: list[str]


def _fit(c: float):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from pipelines.classifier.model_api import SklearnTextClassifier

    texts, labels = zip(*TRAIN)
    est = make_pipeline(TfidfVectorizer(), LogisticRegression(C=c, max_iter=500)).fit(list(texts), list(labels))
    return SklearnTextClassifier(est, name=f"tfidf_c{c}")


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> TinyRegistry:
    """Two registered versions (different C, so their probabilities differ); champion -> version 1."""
    import mlflow

    from pipelines.classifier.pyfunc import log_classifier
    from pipelines.registry.tracking import Registry

    root = tmp_path_factory.mktemp("mlflow")
    with temporary_registry(root, "serving-tests", "tiny-router") as cfg:
        reg = Registry(cfg)
        versions, models = [], {}
        for c in (1.0, 100.0):
            clf = _fit(c)
            with mlflow.start_run():
                info = log_classifier(clf, example_texts=[t for t, _ in TRAIN[:3]])
            v = reg.register(info.model_uri, tags={"c": str(c)})
            versions.append(v)
            models[v] = clf
        reg.set_alias("champion", versions[0])
    texts = ["double charge on my card", "password reset is broken", "the app crashed", "hello there"]
    return TinyRegistry(cfg, cfg.tracking_uri, versions, models, texts)


def _serve_cfg(tmp: Path, **kw: object) -> ServeConfig:
    defaults: dict = dict(log_dir=str(tmp / "production"), watch_interval_s=0.5, log_flush_s=0.5, log_flush_rows=50)
    defaults.update(kw)
    return ServeConfig(**defaults)


@pytest.fixture
def serve_cfg():
    """``serve_cfg(tmp_path, **overrides)``: a ServeConfig with a temp log dir and fast watcher/flush."""
    return _serve_cfg
