"""Monitoring fixtures: generated periods, a trained model, a temp repository with a registered champion."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.classifier.model_api import SklearnTextClassifier
from tests.helpers.monitoring import (
    make_params,
    register_champion,
    tickets,
    train_model,
)


@pytest.fixture(scope="session")
def period_a() -> pd.DataFrame:
    return tickets(2400, seed=1)


@pytest.fixture(scope="session")
def trained(period_a: pd.DataFrame) -> SklearnTextClassifier:
    return train_model(period_a.iloc[:1600])


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, period_a: pd.DataFrame, trained: SklearnTextClassifier):
    """A working directory with data/processed train/val/test, a registered champion and params."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    processed = tmp_path / "data" / "processed"
    processed.mkdir(parents=True)
    period_a.iloc[:1600].to_parquet(processed / "train.parquet")
    period_a.iloc[1600:2000].to_parquet(processed / "val.parquet")
    period_a.iloc[2000:].to_parquet(processed / "test.parquet")
    params = make_params(tmp_path)
    version = register_champion(params, trained, period_a.iloc[2000:])
    return {"path": tmp_path, "params": params, "version": version, "model": trained}
