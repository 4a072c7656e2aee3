"""Helpers shared by the test suite (a package: ``from tests.helpers.data import make_clean``)."""

import contextlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"


_MLFLOW_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# mlflow also keeps both in module globals, which win over the variables for the rest of the process
_MLFLOW_URI_GLOBALS = (
    ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "_registry_uri"),
)


@contextlib.contextmanager
def mlflow_uris_restored():
    """Inside the block anything may point MLflow elsewhere; after it, ``MLFLOW_TRACKING_URI``,
    ``MLFLOW_REGISTRY_URI`` and mlflow's module globals are exactly as before (a variable absent before is
    removed: ``mlflow.set_tracking_uri`` exports it, and a module- or session-scoped fixture that left it set
    pointed every later test's ``tracking_uri()`` at its own store)."""
    import sys

    env = {name: os.environ.get(name) for name in _MLFLOW_URI_ENV}
    globs = [getattr(sys.modules.get(module), attr, None) for module, attr in _MLFLOW_URI_GLOBALS]
    try:
        yield
    finally:
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for (module, attr), value in zip(_MLFLOW_URI_GLOBALS, globs, strict=True):
            if module in sys.modules:
                setattr(sys.modules[module], attr, value)


@contextlib.contextmanager
def temporary_registry(root: Path, experiment: str, registered_model: str):
    """An MLflow SQLite store + artifact root under ``root``, set up as the tracking store inside the block
    (yields its :class:`~pipelines.config.MlflowConfig`); MLflow's target is restored after it."""
    from pipelines.config import MlflowConfig
    from pipelines.registry.tracking import setup

    cfg = MlflowConfig(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=str(root / "artifacts"),
        experiment=experiment,
        registered_model=registered_model,
    )
    with mlflow_uris_restored():
        for name in _MLFLOW_URI_ENV:
            os.environ.pop(name, None)
        setup(cfg)
        yield cfg
