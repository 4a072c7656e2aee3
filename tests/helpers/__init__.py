"""Helpers shared by the test suite (a package: ``from tests.helpers.data import make_clean``)."""

import contextlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"


@contextlib.contextmanager
def temporary_registry(root: Path, experiment: str, registered_model: str):
    """An MLflow SQLite store + artifact root under ``root``, set up as the tracking store inside the block
    (yields its :class:`~pipelines.config.MlflowConfig`); a ``MLFLOW_TRACKING_URI`` set before is restored."""
    from pipelines.config import MlflowConfig
    from pipelines.registry.tracking import setup

    cfg = MlflowConfig(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=str(root / "artifacts"),
        experiment=experiment,
        registered_model=registered_model,
    )
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")  # mlflow exports both in setup()
    old = {name: os.environ.pop(name, None) for name in names}
    try:
        setup(cfg)
        yield cfg
    finally:
        for name, value in old.items():
            if value is not None:
                os.environ[name] = value
