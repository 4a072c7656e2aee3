"""What a monitoring pass compares against, prepared once per served version.

The served model (``models:/<name>@<serve.model_alias>``: monitoring judges exactly what serving
serves, the champion unless params say otherwise), its values at registration (the register run's
``test_accuracy`` / ``test_macro_f1`` metrics, else the ``gate.test_macro_f1`` tag), the
reference sample of train with its descriptors and embedding projection, and the model's
performance on validation (per-class F1 is not stored at registration, so it is measured there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from monitoring.decision import performance
from monitoring.features import DESCRIPTORS, EmbeddingProjector, Encode, descriptors, minilm_encoder, vocabulary
from monitoring.windows import Reference, build_reference
from pipelines.config import Params
from pipelines.errors import DataError
from pipelines.io import read_split
from pipelines.registry.aliases import CHAMPION


@dataclass
class Context:
    reference: Reference
    vocab: frozenset[str]
    projector: EmbeddingProjector | None
    ref_features: pd.DataFrame  # descriptors (+ embedding components) of reference.train
    val_perf: dict[str, Any]
    registered: dict[str, Any]

    @property
    def text_columns(self) -> list[str]:
        return [*DESCRIPTORS, *(self.projector.columns if self.projector else [])]

    def features(self, texts: list[str]) -> pd.DataFrame:
        """Descriptors (+ embedding components) of ``texts``, the same columns as the reference."""
        out = descriptors(texts, self.vocab)
        if self.projector is not None:
            out = pd.concat([out, self.projector.transform(texts)], axis=1)
        return out


def registered_values(reg: Any, version: str) -> dict[str, Any]:
    """Accuracy and macro-F1 version ``version`` had at registration (test split), from the registry."""
    mv = reg.version(version)
    run_id = mv.tags.get("source_run_id") or mv.run_id
    metrics = reg.client.get_run(run_id).data.metrics if run_id else {}
    out: dict[str, Any] = {"source": f"registry v{version} run {run_id}"}
    if "test_accuracy" in metrics:
        out["accuracy"] = float(metrics["test_accuracy"])
    if "test_macro_f1" in metrics:
        out["macro_f1"] = float(metrics["test_macro_f1"])
    elif "gate.test_macro_f1" in mv.tags:
        out["macro_f1"], out["source"] = (
            float(mv.tags["gate.test_macro_f1"]),
            f"registry v{version} tag gate.test_macro_f1",
        )
    return out


def served_model(params: Params) -> tuple[Any, str, str, Any]:
    """``(registry, alias, version, loaded model)`` of the model serving serves (``serve.model_alias``)."""
    from pipelines.classifier.pyfunc import load_registered
    from pipelines.registry import tracking

    alias = params.serve.model_alias
    tracking.setup(params.mlflow)
    reg = tracking.Registry(params.mlflow)
    version = reg.alias(alias) if reg.exists() else None
    if version is None:
        hint = "run `dvc repro` (register)" if alias == CHAMPION else f"set the alias '{alias}' in the registry"
        raise DataError(
            f"no '{alias}' version of '{reg.name}' in {reg.uri} (serve.model_alias): {hint} before monitoring"
        )
    return reg, alias, version, load_registered(reg, version)


def prepare(
    params: Params,
    reg: Any,
    version: str,
    model: Any,
    *,
    encode: Encode | None = None,
    processed: Path = Path("data/processed"),
) -> Context:
    """Build the reference for ``version`` (the slow part: embeddings of the reference sample)."""
    cfg = params.monitor
    ref = build_reference(read_split(processed, "train"), read_split(processed, "val"), model, version, cfg)
    vocab = vocabulary(ref.vocab_texts)
    projector = None
    feats = descriptors(ref.train["text"].tolist(), vocab)
    if cfg.embeddings:
        projector = EmbeddingProjector(
            encode or minilm_encoder(params.baselines.torch_threads), cfg.embedding_components, cfg.seed
        )
        feats = pd.concat([feats, projector.fit_transform(ref.train["text"].tolist())], axis=1)
    val_perf = performance(ref.val["label"], ref.val["prediction"], ref.classes)
    registered = registered_values(reg, version) if reg is not None else {}
    return Context(ref, vocab, projector, feats, val_perf, registered)
