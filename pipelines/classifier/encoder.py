"""Frozen-encoder features: mean-pooled token embeddings of a transformer (default: the packaged MiniLM).

Used by the ``minilm_logreg`` baseline. CPU-friendly: texts are sorted by length
so a batch carries little padding (padding is most of the cost on CPU), batches
are capped at ``max_length`` tokens, and bf16 autocast is used where the CPU has
native bf16 (``baselines.embed_dtype`` for the training embeddings). At evaluation, in the gate and in serving
the encoder runs in ``evaluate.precision`` (:meth:`EncoderClassifier.set_precision`), like every torch model.
The torch model is not pickled: :class:`EncoderClassifier` keeps the base-model *name* and reloads the weights
on first use.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from pipelines.classifier.base_model import resolve_base_model
from pipelines.training.precision import bf16_supported


class MeanPoolEncoder:
    """Texts → L2-normalised mean-pooled embeddings (``(n, hidden)`` float32)."""

    def __init__(
        self,
        base_model: str = "minilm",
        *,
        max_length: int = 128,
        batch_size: int = 64,
        dtype: Literal["auto", "float32", "bfloat16"] = "auto",
        threads: int = 2,
        progress: bool = False,
    ) -> None:
        self.base_model, self.max_length, self.batch_size = base_model, max_length, batch_size
        self.dtype, self.threads, self.progress = dtype, threads, progress
        self._tok = self._model = None

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = resolve_base_model(self.base_model)
        self._tok = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()

    def uses_bf16(self) -> bool:
        """bf16 autocast: asked for (``bfloat16``), or ``auto`` on a CPU with native bf16 (the one shared test)."""
        return self.dtype == "bfloat16" or (self.dtype == "auto" and bf16_supported("cpu"))

    def encode(self, texts: list[str], *, progress: bool | None = None) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        if self._model is None:
            self._load()
        use_bf16 = self.uses_bf16()
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self._model.config.hidden_size), dtype=np.float32)
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                starts = range(0, len(texts), self.batch_size)
                show = self.progress if progress is None else progress
                for s in tqdm(starts, desc=f"embedding {len(texts):,} texts", unit="batch", disable=not show):
                    idx = order[s : s + self.batch_size]
                    enc = self._tok(
                        [texts[i] for i in idx],
                        padding=True,
                        truncation=True,
                        max_length=self.max_length,
                        return_tensors="pt",
                    )
                    hidden = self._model(**enc).last_hidden_state.float()
                    mask = enc["attention_mask"].unsqueeze(-1).float()
                    emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                    out[idx] = torch.nn.functional.normalize(emb, dim=1).numpy()
        finally:
            torch.set_num_threads(prev_threads)
        return out

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tok"] = state["_model"] = None  # weights come from base_model on load, not from the pickle
        return state


class EncoderClassifier:
    """A :class:`~pipelines.classifier.model_api.TextClassifier`: frozen encoder + a fitted scikit-learn head."""

    def __init__(self, encoder: MeanPoolEncoder, head: object, name: str = "encoder") -> None:
        self.encoder, self.head, self.name = encoder, head, name
        self.classes = [str(c) for c in head.classes_]  # type: ignore[attr-defined]

    @property
    def precision(self) -> str:
        """``bf16`` or ``fp32``: what the encoder computes in now."""
        return "bf16" if self.encoder.uses_bf16() else "fp32"

    def set_precision(self, precision: Literal["fp32", "bf16"]) -> None:
        """Inference precision (a resolved ``evaluate.precision``): bf16 autocast or plain float32."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16 (resolved), got {precision!r}")
        self.encoder.dtype = "bfloat16" if precision == "bf16" else "float32"

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, len(self.classes)))
        return np.asarray(self.head.predict_proba(self.encoder.encode(list(texts))))  # type: ignore[attr-defined]
