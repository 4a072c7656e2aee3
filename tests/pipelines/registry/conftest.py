"""Fixtures of the registry tests: a throw-away SQLite MLflow store and params pointing at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import Params, parse_params


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store per test module (creating one costs seconds); each test registers its own model name."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def registry_cfg(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Params:
    """Params pointing at the store, fresh registered-model names (the test's: the classifier's, ``llm-`` the
    generative model's), a strict gate; cwd in tmp_path."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return parse_params(
        {
            "mlflow": {
                "tracking_uri": f"sqlite:///{store / 'mlflow.db'}",
                "artifact_root": str(store / "art"),
                "experiment": "t",
                "registered_model": request.node.name[:60],
            },
            "register": {"gate_macro_f1_tolerance": 0.0, "gate_class_f1_max_drop": 0.05},
            "register_llm": {"registered_model": f"llm-{request.node.name[:56]}"},
        }
    )
