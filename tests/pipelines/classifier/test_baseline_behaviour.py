"""Behavioural tests of the TF-IDF baseline trained on a generated sample: invariance to typos and
synonyms, and obvious cases predicted right (Made-With-ML's model tier)."""

from __future__ import annotations

import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from pipelines.classifier.classical import tfidf_features
from pipelines.classifier.model_api import SklearnTextClassifier, predict_labels
from pipelines.config import BaselinesConfig, GenerateConfig
from pipelines.data.generator import generate_tickets


@pytest.fixture(scope="module")
def model():
    df = generate_tickets(GenerateConfig(n_rows=3000))
    text = (df["subject"].fillna("") + "\n" + df["body"].fillna("")).str.strip()
    keep = text.str.len() > 0
    pipe = make_pipeline(
        tfidf_features(BaselinesConfig(max_features=20_000)),
        LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000),
    )
    pipe.fit(text[keep].tolist(), df.loc[keep, "category"].astype(str).to_numpy())
    return SklearnTextClassifier(pipe, "tfidf_logreg")  # the same features and model as the stage, without the C search


@pytest.mark.parametrize(
    "text, label",
    [
        ("Where is my order\nmy package has not arrived yet and the tracking number does not work", "shipping"),
        ("Feature idea\nit would be great if you added a dark mode and an option to export to PDF", "feature_request"),
        (
            "Suspicious login\nsomeone logged in to my account from another country, I think my account was hacked",
            "security",
        ),
        ("Cancel\nplease cancel my subscription and stop the automatic renewal", "cancellation"),
    ],
)
def test_obvious_cases(model, text: str, label: str) -> None:
    assert predict_labels(model, [text]) == [label]


@pytest.mark.parametrize(
    "original, variant",
    [
        (
            "I would like a refund for order 1234, I returned the item last week",
            "I would like a refnud for ordr 1234, I returnd the item last week",
        ),  # typos
        (
            "please cancel my subscription at the end of the month",
            "please cancel my membership at the end of the month",
        ),  # synonym
        ("my package has not arrived yet", "my parcel has not arrived yet"),  # synonym
        ("I cannot log in to my account", "I cant log in to my acount"),  # typos
    ],
)
def test_typos_and_synonyms_keep_the_label(model, original: str, variant: str) -> None:
    a, b = predict_labels(model, [original, variant])
    assert a == b, f"{original!r} -> {a}, {variant!r} -> {b}"
