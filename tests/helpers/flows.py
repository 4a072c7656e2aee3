"""Tiny registry fixtures shared by the flow tests: a two-class text split and scikit-learn candidates."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd

WORDS = {"billing": "invoice charged payment card billing", "shipping": "parcel delivery courier tracking shipped"}


def split(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(list(WORDS), size=n)
    return pd.DataFrame({"text": [" ".join(rng.choice(WORDS[y].split(), size=4)) for y in labels], "label": labels})


def register(params, clf, name: str, test: pd.DataFrame) -> str:
    """Register ``clf`` (fitted) as a new version through the register stage's own function; returns the version."""
    from pipelines.classifier.model_api import SklearnTextClassifier
    from pipelines.classifier.registration import register_candidate
    from pipelines.registry import tracking

    tracking.setup(params.mlflow)
    wrapped = SklearnTextClassifier(clf, name)
    joblib.dump(wrapped, Path(f"{name}.joblib"))
    return register_candidate(
        tracking.Registry(params.mlflow), params, name, Path(f"{name}.joblib"), wrapped, test.text.head(2).tolist()
    )


def monitor_summary(confirmed: bool, reports_dir: str, reason: str | None = None) -> dict:
    """What ``monitoring.run.monitor_once`` reports (its contract): a confirmed breach that should retrain
    carries ``retrain_reason``; monitoring itself only reports."""
    summary = {
        "at": "now",
        "model": "tiny",
        "model_alias": "champion",
        "model_version": "1",
        "window": {"rows": 500},
        "breached": ["data_drift"] if confirmed else [],
        "confirmed": confirmed,
        "notes": [],
        "persistence": "breach 3/3",
        "reports_dir": reports_dir,
        "checks": [
            {
                "metric": "data_drift",
                "value": 0.8 if confirmed else 0.1,
                "threshold": 0.5,
                "breach": confirmed,
                "detail": "drifted",
            }
        ],
    }
    if reason:
        summary["retrain_reason"] = reason
    return summary
