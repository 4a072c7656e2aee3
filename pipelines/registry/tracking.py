"""MLflow tracking and registry, embedded (SQLite + a local artifact root). The one module that talks to MLflow
(besides the pyfunc wrappers of each model family: :mod:`pipelines.classifier.pyfunc`, :mod:`pipelines.llm.pyfunc`).

Nothing happens at import time: call :func:`setup` (tracking URI from ``params.yaml: mlflow``,
``MLFLOW_TRACKING_URI`` overrides; the experiment is created with the configured artifact
root if missing). Runs carry lineage tags (git commit, DVC md5s of the data from ``dvc.lock``,
stage). :class:`Registry` wraps one registered model with aliases (never stages); it knows no model
family: it hands out URIs and raw pyfunc models, and each family wraps them (the classifier:
:func:`pipelines.classifier.pyfunc.load_registered`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import MlflowConfig
from pipelines.errors import PipelineError

DATA_OUTS = ("data/processed/train.parquet", "data/processed/val.parquet", "data/processed/test.parquet")


class RegistryError(PipelineError):
    """A registered model, version or alias that does not exist, or a registry operation that cannot be done."""


class RegistryConflict(RegistryError):
    """An alias moved between being read and being moved (compare-and-swap refused): nothing was moved."""


def tracking_uri(cfg: MlflowConfig) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``params.yaml: mlflow.tracking_uri``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri


def setup(cfg: MlflowConfig) -> str:
    """Point MLflow at the configured store and return the experiment id (created with ``artifact_root`` if missing)."""
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is None:
        exp_id = mlflow.create_experiment(cfg.experiment, artifact_location=Path(cfg.artifact_root).resolve().as_uri())
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


# --------------------------------------------------------------------------- lineage
def git_commit(cwd: str | Path = ".") -> dict[str, str]:
    """``git.commit`` and ``git.dirty`` (tracked files modified), or ``unknown`` outside a repository."""

    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {
            "git.commit": run("rev-parse", "HEAD"),
            "git.dirty": str(bool(run("status", "--porcelain", "--untracked-files=no"))).lower(),
        }
    except (OSError, subprocess.CalledProcessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}


def dvc_hashes(lock_path: str | Path = "dvc.lock", paths: tuple[str, ...] = DATA_OUTS) -> dict[str, str]:
    """md5 of each of ``paths`` as recorded in ``dvc.lock`` (outs of any stage): ``{"dvc.md5.<path>": md5}``."""
    lock = Path(lock_path)
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    found = {o["path"]: o.get("md5", "") for s in stages.values() for o in s.get("outs", []) if "path" in o}
    return {f"dvc.md5.{p}": found[p] for p in paths if p in found}


def lineage_tags(stage: str, lock_path: str | Path = "dvc.lock", paths: tuple[str, ...] = DATA_OUTS) -> dict[str, str]:
    """Tags every run carries: the stage, the git commit and the DVC hashes of the data it read (``paths``)."""
    return {"stage": stage, **git_commit(), **dvc_hashes(lock_path, paths)}


def flatten(d: dict, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists are joined (MLflow params are strings)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key, sep))
        else:
            out[key] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    return out


@contextlib.contextmanager
def run(
    name: str,
    stage: str,
    *,
    params: dict | None = None,
    tags: dict | None = None,
    nested: bool = False,
    run_id: str | None = None,
) -> Iterator[Any]:
    """Start an MLflow run with lineage tags and flattened params (call :func:`setup` first).

    With ``run_id``, continue that run instead (e.g. a resumed training, or evaluation after it).
    """
    import mlflow

    if run_id:
        with mlflow.start_run(run_id=run_id, nested=nested) as active:
            yield active
        return
    with mlflow.start_run(run_name=name, nested=nested, tags={**lineage_tags(stage), **(tags or {})}) as active:
        if params:
            mlflow.log_params(flatten(params))
        yield active


def log_metrics(metrics: dict[str, float], prefix: str = "", step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics(
        {
            f"{prefix}{k}": float(v)
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        },
        step=step,
    )


def log_artifacts(*paths: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    for p in map(Path, paths):
        if p.is_dir():
            mlflow.log_artifacts(str(p), artifact_path=artifact_path)
        elif p.is_file():
            mlflow.log_artifact(str(p), artifact_path=artifact_path)


# --------------------------------------------------------------------------- registry
class Registry:
    """One registered model: versions, aliases (``challenger``, ``champion``, ``previous-champion``), tags.

    ``name`` defaults to ``mlflow.registered_model`` (the classifier); the generative model passes
    ``register_llm.registered_model``. Each registered model has its own versions and aliases.
    Every write (an alias move, a tag, a new version) holds the store's registry lock (:meth:`lock`,
    :mod:`pipelines.registry.lock`).
    """

    def __init__(self, cfg: MlflowConfig, name: str | None = None) -> None:
        from mlflow import MlflowClient

        from pipelines.registry.lock import lock_path

        self.name = name or cfg.registered_model
        self.uri = tracking_uri(cfg)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.lock_file = lock_path(self.uri, cfg.registry_lock_file)
        self.lock_timeout_s = cfg.registry_lock_timeout_s

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The registry lock (one per store, shared by both families): hold it around a check-then-move."""
        from pipelines.registry.lock import file_lock

        return file_lock(self.lock_file, self.lock_timeout_s, f"registered model '{self.name}'")

    def exists(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
            return True
        except MlflowException:
            return False

    def register(self, model_uri: str, tags: dict[str, str]) -> str:
        """Create a new version of the model from ``model_uri`` (no alias is touched); return its number."""
        import mlflow

        with self.lock():
            return str(mlflow.register_model(model_uri, self.name, tags=tags).version)

    def alias(self, alias: str) -> str | None:
        """The version an alias points to, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def set_alias(self, alias: str, version: str) -> None:
        """Point ``alias`` at ``version`` (under the registry lock; a compare-and-swap holds it around this)."""
        with self.lock():
            self.client.set_registered_model_alias(self.name, alias, str(version))

    def delete_alias(self, alias: str) -> None:
        with self.lock():
            if self.alias(alias) is not None:
                self.client.delete_registered_model_alias(self.name, alias)

    def version(self, version: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException:
            raise RegistryError(
                f"registered model '{self.name}' has no version {version} (registry: {self.uri})"
            ) from None

    def tag_version(self, version: str, tags: dict[str, Any]) -> None:
        """Set tags of ``version`` (under the lock: MLflow's SQLite store fails two writers of one tag at once)."""
        with self.lock():
            for k, v in tags.items():
                self.client.set_model_version_tag(self.name, str(version), k, str(v))

    def untag_version(self, version: str, *keys: str) -> None:
        """Remove the tags ``keys`` of ``version`` (those it has)."""
        with self.lock():
            present = self.version(version).tags
            for k in keys:
                if k in present:
                    self.client.delete_model_version_tag(self.name, str(version), k)

    def model_tag(self, key: str, default: str = "") -> str:
        return self.client.get_registered_model(self.name).tags.get(key, default) if self.exists() else default

    def set_model_tag(self, key: str, value: str) -> None:
        with self.lock():
            self.client.set_registered_model_tag(self.name, key, value)

    def find_version(self, tag: str, value: str) -> str | None:
        """The newest version whose tag ``tag`` equals ``value`` (used to avoid registering the same model twice)."""
        if not self.exists():
            return None
        hits = self.client.search_model_versions(f"name = '{self.name}' and tags.`{tag}` = '{value}'")
        return str(max(int(v.version) for v in hits)) if hits else None

    def model_uri(self, ref: str) -> str:
        """``models:/<name>@<alias>`` for ``@alias``, ``models:/<name>/<version>`` for a version number.

        Raises RegistryError when the model, the alias or the version does not exist."""
        ref = str(ref)
        if not self.exists():
            raise RegistryError(
                f"no registered model named '{self.name}' (registry: {self.uri}); run the register stage first"
            )
        if ref.startswith("@"):
            if self.alias(ref[1:]) is None:
                raise RegistryError(f"registered model '{self.name}' has no alias '{ref[1:]}'")
            return f"models:/{self.name}{ref}"
        self.version(ref)
        return f"models:/{self.name}/{ref}"

    def load_pyfunc(self, ref: str) -> Any:
        """The raw ``mlflow.pyfunc`` model of ``@alias`` or a version (each family wraps it its own way)."""
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(self.model_uri(ref))
