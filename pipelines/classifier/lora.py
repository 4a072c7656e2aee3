"""A transformer sequence classifier with a LoRA adapter (transformers + peft).

:func:`build_model` is the one place that puts the adapter on the base model;
:func:`expected_trainable_parameters` counts, from the base model's own layer
shapes, what LoRA *should* train (``r * (in + out)`` per targeted linear layer,
plus the classification head), and :func:`build_model` refuses a model whose
trainable count differs. A wrong ``target_modules`` list therefore fails loudly
instead of quietly training the head alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipelines.config import FinetuneConfig
from pipelines.errors import ConfigError
from pipelines.training.lora import check_targets, lora_parameters, wrap_checked

HEAD_NAMES = ("classifier", "score")  # what peft keeps trainable for SEQ_CLS


def _base(path: str, labels: list[str], on_meta: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    id2label = dict(enumerate(labels))
    label2id = {v: k for k, v in id2label.items()}
    try:
        config = AutoConfig.from_pretrained(path, num_labels=len(labels), id2label=id2label, label2id=label2id)
    except OSError as err:
        raise ConfigError(f"finetune.base_model: cannot load a model config from {path!r} ({err})") from None
    if on_meta:  # shapes only, no weights: cheap validation before any rank starts
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(config)
    return AutoModelForSequenceClassification.from_pretrained(path, config=config)


def expected_trainable_parameters(model: nn.Module, cfg: FinetuneConfig) -> int:
    """The analytic LoRA count: r*(in+out) per targeted linear layer, plus the classification head."""
    lora = lora_parameters(model, cfg.target_modules, cfg.lora_r, exclude=HEAD_NAMES)
    head = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in HEAD_NAMES)
    return lora + head


def build_model(base_path: str, labels: list[str], cfg: FinetuneConfig, on_meta: bool = False) -> nn.Module:
    """Base model + LoRA adapter, with the trainable-parameter count checked against the analytic one."""
    from peft import LoraConfig, TaskType

    base = _base(base_path, labels, on_meta)
    check_targets(base, cfg.target_modules, "finetune.target_modules", exclude=HEAD_NAMES)
    expected = expected_trainable_parameters(base, cfg)
    if cfg.activation_checkpointing and not on_meta:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora_cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
    )
    model = wrap_checked(base, lora_cfg, expected)
    return model


def load_adapter(adapter_dir: str | Path, base_path: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Base weights + the saved adapter (and head), ready for inference."""
    import json

    from peft import PeftModel

    labels = json.loads((Path(adapter_dir) / "labels.json").read_text())
    base = _base(base_path, labels, on_meta=False)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return model.to(dtype).eval()
