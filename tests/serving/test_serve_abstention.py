"""A registered model abstains on out-of-scope texts: in its pyfunc output, through ``load_registered`` and in
``/predict`` answers and the prediction log, with the label it would have given.

The model: TF-IDF + logistic regression on two clear classes; its threshold is tuned on in-scope validation texts
(budget 0: the largest threshold that abstains on none of them). Gibberish shares no word with training, so its
probabilities are the priors (about 0.5 each), far below any in-scope text's confidence."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pipelines.abstention import AbstentionRule
from pipelines.config import AbstentionConfig, MlflowConfig
from tests.helpers import temporary_registry

BILLING = ["charged twice for my invoice", "refund the double charge on my card", "my invoice amount is wrong"]
SHIPPING = ["my parcel has not arrived", "the delivery is late, where is my package", "track my parcel delivery"]
VAL = [("invoice charged twice", "billing"), ("card charge refund", "billing"), ("parcel delivery late", "shipping")]
GIBBERISH = ["zxqv plorbt wemblo", "fnord glarp quux"]


@dataclass
class Registered:
    mlflow: MlflowConfig
    version: str
    rule: AbstentionRule
    model: object  # the in-memory classifier


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    import mlflow
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from pipelines.abstention import tune
    from pipelines.classifier.model_api import SklearnTextClassifier
    from pipelines.classifier.pyfunc import log_classifier
    from pipelines.registry.tracking import Registry

    texts, labels = BILLING * 3 + SHIPPING * 3, ["billing"] * 9 + ["shipping"] * 9
    clf = SklearnTextClassifier(make_pipeline(TfidfVectorizer(), LogisticRegression(C=20.0)).fit(texts, labels))
    val_texts, val_labels = zip(*VAL)
    rule, _ = tune(val_labels, clf.predict_proba(list(val_texts)), clf.classes, AbstentionConfig(max_in_scope_rate=0))
    root = tmp_path_factory.mktemp("abstain")
    with temporary_registry(root, "abstain", "abstaining-router") as cfg:
        with mlflow.start_run():
            info = log_classifier(clf, example_texts=list(val_texts), abstention=rule)
        reg = Registry(cfg)
        version = reg.register(info.model_uri, tags={})
        reg.set_alias("champion", version)
    return Registered(cfg, version, rule, clf)


def test_the_threshold_separates_gibberish_from_the_in_scope_texts(registered):
    clf, rule = registered.model, registered.rule
    in_scope = clf.predict_proba([t for t, _ in VAL]).max(1)
    gibberish = clf.predict_proba(GIBBERISH).max(1)
    assert rule.threshold == pytest.approx(in_scope.min()) and gibberish.max() < rule.threshold
    assert rule.oos_label is None


def test_pyfunc_output_and_load_registered_carry_the_abstention(registered, monkeypatch):
    import mlflow

    from pipelines.classifier.pyfunc import load_registered
    from pipelines.registry.tracking import Registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.mlflow.tracking_uri)
    texts = [t for t, _ in VAL] + GIBBERISH
    out = mlflow.pyfunc.load_model(f"models:/abstaining-router/{registered.version}").predict(
        pd.DataFrame({"text": texts})
    )
    assert list(out.columns[:2]) == ["label", "abstained"]
    assert out["abstained"].tolist() == [False, False, False, True, True]
    expected = registered.model.predict_proba(texts)
    assert out["label"].tolist() == [registered.model.classes[i] for i in expected.argmax(1)]  # what it would say
    loaded = load_registered(Registry(registered.mlflow), "@champion", precision="bf16")  # no torch: no change
    assert loaded.abstention == registered.rule and loaded.precision is None
    assert loaded.abstained(loaded.predict_proba(texts)).tolist() == [False, False, False, True, True]


def test_predict_answers_abstained_true_for_gibberish_and_the_log_records_it(registered, tmp_path, monkeypatch):
    from serving.api import build_app
    from serving.model_source import ChampionSource
    from serving.prediction_log import PREDICTIONS, read_log
    from serving.service import ClassifierService
    from tests.serving.conftest import _serve_cfg

    monkeypatch.delenv("TICKETOPS_API_KEY", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.mlflow.tracking_uri)
    cfg = _serve_cfg(tmp_path, batching="none")
    service = ClassifierService(cfg, ChampionSource(registered.mlflow, precision="fp32"))
    texts = ["my invoice was charged twice", GIBBERISH[0]]
    with TestClient(build_app(service), base_url="http://127.0.0.1") as c:
        for _ in range(100):
            if c.get("/readyz").status_code == 200:
                break
            time.sleep(0.1)
        body = c.post("/predict", json={"texts": texts}).json()
    answers = body["predictions"]
    assert [p["abstained"] for p in answers] == [False, True]
    proba = registered.model.predict_proba(texts)
    assert [p["label"] for p in answers] == [registered.model.classes[i] for i in proba.argmax(1)]
    assert answers[1]["confidence"] == pytest.approx(proba[1].max())
    assert answers[1]["confidence"] < registered.rule.threshold
    log = read_log(cfg.log_dir, PREDICTIONS)  # the client's exit flushed it
    mine = log[log.request_id == body["request_id"]].sort_values("item")
    assert mine["abstained"].tolist() == [False, True] and mine["label"].tolist() == [p["label"] for p in answers]
    assert np.issubdtype(log["abstained"].dtype, np.bool_)
