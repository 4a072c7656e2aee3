"""Shared fixtures and the test tiers. Tests never download anything and never need ../shared/datasets to pass.

Tiers (``-m unit``, ``-m integration``, ``-m e2e``): a test module that starts processes or servers (DeepSpeed ranks,
Ray Serve, a Prefect server, stage CLIs) declares ``pytestmark = pytest.mark.integration``; whole-pipeline runs are
``e2e`` (and ``slow``). Every other test is ``unit``: in-process, on in-memory or tmp_path fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import ROOT, SHARED_DATASETS, mlflow_uris_restored

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
    """Every test leaves ``MLFLOW_TRACKING_URI``, ``MLFLOW_REGISTRY_URI`` and mlflow's URI globals as it found them.

    ``mlflow.set_tracking_uri`` and ``mlflow.set_registry_uri`` export the variables, and
    ``monkeypatch.delenv(..., raising=False)`` of an absent one records nothing to undo: a test's temporary
    registry then leaked into later tests' servers (a Prefect-served training run registered into another
    test's registry; Ray Serve replicas looked their champion up in another test's registry). Module- and
    session-scoped fixtures are set up before this snapshot: they use :func:`tests.helpers.mlflow_uris_restored`."""
    with mlflow_uris_restored():
        yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop a Prefect temporary server a flow called without a harness started (ephemeral mode) while pytest's
    streams are still open: Prefect's own atexit stop logs to a closed stream, a traceback after the summary."""
    import sys

    server = sys.modules.get("prefect.server.api.server")
    if server is not None:
        for instance in list(server.SubprocessASGIServer._instances.values()):
            instance.stop()
