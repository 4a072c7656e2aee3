"""Shared fixtures and the test tiers. Tests never download anything and never need ../shared/datasets to pass.

Tiers (``-m unit``, ``-m integration``, ``-m e2e``): a test module that starts processes or servers (DeepSpeed ranks,
Ray Serve, a Prefect server, stage CLIs) declares ``pytestmark = pytest.mark.integration``; whole-pipeline runs are
``e2e`` (and ``slow``). Every other test is ``unit``: in-process, on in-memory or tmp_path fixtures.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, SHARED_DATASETS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(t) for t in TIERS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def shared_datasets() -> Path:
    return SHARED_DATASETS


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """Every test leaves ``MLFLOW_TRACKING_URI`` and ``MLFLOW_REGISTRY_URI`` as it found them.

    ``mlflow.set_tracking_uri`` and ``mlflow.set_registry_uri`` export the variables, and
    ``monkeypatch.delenv(..., raising=False)`` of an absent one records nothing to undo: a test's temporary
    registry then leaked into later tests' servers (a Prefect-served training run registered into another
    test's registry; Ray Serve replicas looked their champion up in another test's registry)."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {name: os.environ.get(name) for name in names}
    # mlflow also keeps both in module globals, which win over the variables for the rest of the process
    globals_before = [getattr(sys.modules.get(module), "_" + attr, None) for module, attr in _MLFLOW_URI_GLOBALS]
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    for (module, attr), value in zip(_MLFLOW_URI_GLOBALS, globals_before, strict=True):
        if module in sys.modules:
            setattr(sys.modules[module], "_" + attr, value)


_MLFLOW_URI_GLOBALS = (
    ("mlflow.tracking._tracking_service.utils", "tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "registry_uri"),
)
