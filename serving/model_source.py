"""Which model to serve: the registry alias (``models:/<name>@champion``) resolved and loaded through the pipeline's
:class:`~pipelines.registry.tracking.Registry`, seen through the common
:class:`~pipelines.classifier.model_api.TextClassifier`, in ``evaluate.precision`` (the precision the gate judged
it in), with the abstention rule registered with it."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field

import numpy as np

from pipelines.abstention import NEVER, AbstentionRule
from pipelines.classifier.model_api import TextClassifier
from pipelines.config import MlflowConfig
from pipelines.registry.tracking import Registry, tracking_uri


@dataclass(eq=False)
class ModelHandle:
    """One loaded registry version. Requests pin the handle they started with, so a swap never mixes versions."""

    name: str
    version: str
    classifier: TextClassifier
    torch_threads: int | None = None
    _tuned: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def classes(self) -> list[str]:
        return self.classifier.classes

    @property
    def abstention(self) -> AbstentionRule:
        """The rule registered with the model (a model without one never abstains)."""
        return getattr(self.classifier, "abstention", NEVER)

    def token_lengths(self, texts: list[str]) -> list[int] | None:
        """Texts' lengths in the model's tokens, truncation applied (None for a model without tokens)."""
        return self.classifier.token_lengths(texts) if hasattr(self.classifier, "token_lengths") else None

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if self.torch_threads and not getattr(self._tuned, "done", False):
            # OpenMP thread counts are per calling thread: set it in the thread that runs the model
            # (Ray starts workers with OMP_NUM_THREADS=1, which halved throughput here)
            if "torch" in sys.modules:
                import torch

                torch.set_num_threads(self.torch_threads)
            self._tuned.done = True
        return self.classifier.predict_proba(texts)


class ChampionSource:
    """Resolve an alias to a version number, and load a version (both blocking: call them in a thread)."""

    def __init__(
        self,
        cfg: MlflowConfig,
        alias: str = "champion",
        torch_threads: int | None = None,
        precision: str | None = None,
    ) -> None:
        """``precision``: ``evaluate.precision`` (None: each version in the precision it was registered with)."""
        self.cfg, self.alias, self.torch_threads, self.precision = cfg, alias, torch_threads, precision
        self.uri = tracking_uri(cfg)
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            # mlflow.pyfunc.load_model("models:/...") reads the process-wide URIs: make both the configured one
            # (a stale MLFLOW_REGISTRY_URI in the environment would otherwise look the model up elsewhere)
            os.environ["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_REGISTRY_URI"] = self.uri
            self._registry = Registry(self.cfg)
        return self._registry

    @property
    def model_name(self) -> str:
        return self.cfg.registered_model

    def resolve(self) -> str | None:
        """The version the alias points to now, or None (no such model or alias yet)."""
        if not self.registry.exists():
            return None
        return self.registry.alias(self.alias)

    def load(self, version: str) -> ModelHandle:
        """Load exactly ``version`` (not the alias: it may move while we load)."""
        from pipelines.classifier.pyfunc import load_registered

        classifier = load_registered(self.registry, version, precision=self.precision)
        return ModelHandle(self.model_name, str(version), classifier, self.torch_threads)

    def describe(self) -> str:
        """What is served, for messages a client may see: never the tracking URI (it may hold credentials)."""
        return f"models:/{self.model_name}@{self.alias}"
