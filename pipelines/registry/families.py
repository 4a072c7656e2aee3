"""The model families the registry holds, as configuration only: which registered model, which gate settings.

Each family is its own registered model with its own versions and aliases (``champion``, ``challenger``,
``previous-champion``) and the same promotion machinery (:mod:`pipelines.registry.gate`); only how the gate
scores and decides differs (:mod:`pipelines.classifier.gate`, :mod:`pipelines.llm.registration`).

- ``classifier``: the ticket router, ``mlflow.registered_model``, gate settings in ``register``;
- ``llm``: the generative triage model, ``register_llm.registered_model``, gate settings in ``register_llm``.
"""

from __future__ import annotations

from typing import Literal, get_args

from pipelines.config import Params, RegisterConfig, RegisterLlmConfig
from pipelines.errors import ConfigError

Family = Literal["classifier", "llm"]
FAMILIES: tuple[str, ...] = get_args(Family)


def registered_model(cfg: Params, family: Family = "classifier") -> str:
    """The registered model name of ``family``."""
    return cfg.register_llm.registered_model if _check(family) == "llm" else cfg.mlflow.registered_model


def gate_settings(cfg: Params, family: Family = "classifier") -> RegisterConfig | RegisterLlmConfig:
    """The params section with ``family``'s gate settings (both have ``auto_promote`` and ``fail_on_refusal``)."""
    return cfg.register_llm if _check(family) == "llm" else cfg.register_


def _check(family: str) -> str:
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}: use one of {', '.join(FAMILIES)}")
    return family
