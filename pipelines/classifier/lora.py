"""A transformer sequence classifier with a LoRA adapter (transformers + peft), or fully fine-tuned.

Pooling matches the base model (``finetune.pooling``): a sentence-embedding checkpoint such as MiniLM-L6-v2
was trained on the **mean** of its token vectors, so :class:`MeanPooledClassifier` puts a linear head on that
mean; ``cls`` keeps transformers' ``AutoModelForSequenceClassification`` (the ``[CLS]`` pooler), right for
checkpoints trained that way. ``auto`` reads the sentence-transformers pooling config when the checkpoint has
one. The saved adapter says which (peft's ``task_type``: ``SEQ_CLS`` for the ``[CLS]`` head), so
:func:`load_trained` rebuilds the same model.

:func:`build_model` is the one place that puts the adapter on the base model;
:func:`expected_trainable_parameters` counts, from the base model's own layer
shapes, what LoRA *should* train (``r * (in + out)`` per targeted linear layer,
plus the classification head), and :func:`build_model` refuses a model whose
trainable count differs. A wrong ``target_modules`` list therefore fails loudly
instead of quietly training the head alone. With ``finetune.method: full`` (small encoders) there is no
adapter: every weight trains, and the saved folder is the whole model (what ``merge_adapter`` exports), which
:func:`load_trained` tells from an adapter by its missing ``adapter_config.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.config import FinetuneConfig
from pipelines.errors import ConfigError
from pipelines.training.lora import check_targets, lora_parameters, wrap_checked

HEAD_NAMES = ("classifier", "score")  # what peft keeps trainable for SEQ_CLS


class MeanPooledClassifier(nn.Module):
    """Encoder (``AutoModel``) + a linear head on the attention-masked mean of the last hidden states.

    Same call and output as a transformers sequence classifier (``input_ids``, ``attention_mask``, optional
    ``labels`` → ``.loss``/``.logits``), so the training loop, DeepSpeed and peft treat both alike."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:  # the [CLS] pooler is unused here: no LoRA on it, no compute
            encoder.pooler = None
        self.encoder = encoder
        self.config = encoder.config
        self.classifier = nn.Linear(encoder.config.hidden_size, encoder.config.num_labels)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):  # noqa: ANN001, ANN201
        from transformers.modeling_outputs import SequenceClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(pooled)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, directory: str | Path, state_dict: dict | None = None) -> None:
        """The transformers encoder, ``classifier.safetensors`` (the head) and ``pooling.json``. ``state_dict``
        (e.g. gathered across ZeRO ranks) overrides this module's own tensors."""
        from safetensors.torch import save_file

        state = {**self.state_dict(), **(state_dict or {})}
        directory = Path(directory)

        def part(prefix: str) -> dict:
            return {k[len(prefix) :]: v.detach().contiguous() for k, v in state.items() if k.startswith(prefix)}

        self.encoder.save_pretrained(str(directory), state_dict=part("encoder."))
        save_file(part("classifier."), str(directory / "classifier.safetensors"))
        labels = [str(self.config.id2label[i]) for i in range(len(self.config.id2label))]
        (directory / "pooling.json").write_text(json.dumps({"pooling": "mean", "labels": labels}, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MeanPooledClassifier:
        """What :meth:`save_pretrained` wrote."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        model = cls(AutoModel.from_pretrained(str(directory)))
        model.classifier.load_state_dict(load_file(str(Path(directory) / "classifier.safetensors")))
        return model


def unwrap(model: nn.Module) -> nn.Module:
    """The classifier under a peft wrapper (a fully fine-tuned model has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def checkpoint_pooling(path: str) -> str:
    """``mean`` or ``cls`` from a sentence-transformers checkpoint's ``1_Pooling/config.json`` (local or on the hub);
    ``cls`` when it has none (a plain transformers checkpoint: its pooler is what it was trained with)."""
    local = Path(path) / "1_Pooling" / "config.json"
    if local.is_file():
        found = local
    else:
        try:
            from huggingface_hub import hf_hub_download

            found = Path(hf_hub_download(path, "1_Pooling/config.json"))
        except Exception:  # noqa: BLE001 - no such file, offline, or not a hub id: a plain checkpoint
            return "cls"
    cfg = json.loads(found.read_text())
    return "mean" if cfg.get("pooling_mode_mean_tokens") else "cls"


def resolve_pooling(cfg: FinetuneConfig, base_path: str) -> str:
    return checkpoint_pooling(base_path) if cfg.pooling == "auto" else cfg.pooling


def load_tokenizer(path: str):  # noqa: ANN201 - a transformers tokenizer
    """The base model's tokenizer, able to pad a batch: a decoder LM's tokenizer often has no padding token
    (GPT-2, Llama 3), and then pads with its end-of-sequence token, as its sequence-classification head expects.
    One with neither is refused (:class:`ConfigError` naming ``finetune.base_model``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"finetune.base_model: the tokenizer of {path!r} has neither a padding nor an end-of-sequence "
                "token, so batches cannot be padded; give it a pad_token in its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _base(path: str, labels: list[str], on_meta: bool, pooling: str = "cls") -> nn.Module:
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    id2label = dict(enumerate(labels))
    label2id = {v: k for k, v in id2label.items()}
    try:
        config = AutoConfig.from_pretrained(path, num_labels=len(labels), id2label=id2label, label2id=label2id)
    except OSError as err:
        raise ConfigError(f"finetune.base_model: cannot load a model config from {path!r} ({err})") from None
    # the id batches are padded with (load_tokenizer's), by which a decoder's head finds the last real token: a
    # config that names none, or another one than the tokenizer pads with, would have it read a padding position
    config.pad_token_id = load_tokenizer(path).pad_token_id
    if pooling == "mean":
        if on_meta:
            with torch.device("meta"):
                return MeanPooledClassifier(AutoModel.from_config(config))
        return MeanPooledClassifier(AutoModel.from_pretrained(path, config=config))
    if on_meta:  # shapes only, no weights: cheap validation before any rank starts
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(config)
    return AutoModelForSequenceClassification.from_pretrained(path, config=config)


def expected_trainable_parameters(model: nn.Module, cfg: FinetuneConfig) -> int:
    """The analytic LoRA count: r*(in+out) per targeted linear layer, plus the classification head."""
    lora = lora_parameters(model, cfg.target_modules, cfg.lora_r, exclude=HEAD_NAMES)
    head = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in HEAD_NAMES)
    return lora + head


def head_name(model: nn.Module) -> str:
    """The attribute holding an unwrapped classifier's head (``classifier`` or ``score``), which must be one
    linear layer for ``finetune.head_init: linear_probe``; :class:`ConfigError` otherwise."""
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return name
        if head is not None:
            raise ConfigError(
                f"finetune.head_init: linear_probe needs a linear classification head; {type(model).__name__}.{name} "
                f"is a {type(head).__name__} (use head_init: random)"
            )
    raise ConfigError(f"finetune.head_init: linear_probe: {type(model).__name__} has no head named {HEAD_NAMES}")


@torch.no_grad()
def set_head(head: nn.Linear, coef: np.ndarray, intercept: np.ndarray) -> None:
    """``head`` gives the logits of a fitted scikit-learn linear classifier (``coef_``, ``intercept_``). A binary
    one has a single row (the log-odds of the second class): the head's two rows get half of it each, with
    opposite signs, so their difference, and the softmax, are the same. A head without a bias (a decoder's
    ``score``) takes a classifier fitted without an intercept (all zero)."""
    coef, intercept = np.asarray(coef, dtype=np.float32), np.asarray(intercept, dtype=np.float32)
    if head.bias is None and np.any(intercept != 0):
        raise ValueError("this head has no bias: fit the linear classifier without an intercept")
    if coef.shape[0] == 1 and head.out_features == 2:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    if coef.shape != tuple(head.weight.shape):
        raise ValueError(f"a linear classifier of shape {coef.shape} does not fit a head of {tuple(head.weight.shape)}")
    head.weight.copy_(torch.from_numpy(coef))
    if head.bias is not None:
        head.bias.copy_(torch.from_numpy(intercept))


def build_model(
    base_path: str,
    labels: list[str],
    cfg: FinetuneConfig,
    on_meta: bool = False,
    init_head: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Base model + LoRA adapter, with the trainable-parameter count checked against the analytic one; the
    base model alone, every weight trainable, with ``method: full``. ``init_head(base)`` (``head_init``), when
    given, sets the head of the loaded base model before the adapters are put on it."""
    from peft import LoraConfig, TaskType

    pooling = resolve_pooling(cfg, base_path)
    base = _base(base_path, labels, on_meta, pooling)
    if init_head is not None and not on_meta:
        init_head(base)
    if cfg.activation_checkpointing and not on_meta:
        inner = base.encoder if isinstance(base, MeanPooledClassifier) else base
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method == "full":
        return base.requires_grad_(True)
    check_targets(base, cfg.target_modules, "finetune.target_modules", exclude=HEAD_NAMES)
    expected = expected_trainable_parameters(base, cfg)
    head = {"task_type": TaskType.SEQ_CLS} if pooling == "cls" else {"modules_to_save": ["classifier"]}
    lora_cfg = LoraConfig(
        **head,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
    )
    model = wrap_checked(base, lora_cfg, expected)
    return model


def load_trained(adapter_dir: str | Path, base_path: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Base weights + the saved adapter (and head), ready for inference, pooled as it was trained; or, for a
    folder without ``adapter_config.json`` (``method: full``), the whole model saved there."""
    from peft import PeftConfig, PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        if (adapter_dir / "pooling.json").is_file():
            full = MeanPooledClassifier.from_pretrained(adapter_dir)
        else:
            from transformers import AutoModelForSequenceClassification

            full = AutoModelForSequenceClassification.from_pretrained(str(adapter_dir))
        return full.to(dtype).eval()
    labels = json.loads((adapter_dir / "labels.json").read_text())
    pooling = "cls" if PeftConfig.from_pretrained(str(adapter_dir)).task_type == "SEQ_CLS" else "mean"
    base = _base(base_path, labels, on_meta=False, pooling=pooling)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return model.to(dtype).eval()


def optimizer_groups(model: nn.Module, cfg: FinetuneConfig) -> tuple[list[dict], list[float]] | None:
    """Two optimizer groups, the adapters (or, with ``method: full``, the encoder) at ``learning_rate`` and the
    new head at ``head_learning_rate``, with their peak rates; ``None`` when no head rate is set (one group)."""
    if cfg.head_learning_rate is None:
        return None
    head, adapters = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if any(h in name.split(".") for h in HEAD_NAMES) else adapters).append(p)
    return [{"params": adapters}, {"params": head}], [cfg.learning_rate, cfg.head_learning_rate]
