"""A LoRA adapter (peft) on a causal LM, with its trainable-parameter count checked against the analytic one.

:func:`expected_trainable_parameters` counts, from the base model's own layer shapes, what LoRA *should*
train: ``r * (in + out)`` per targeted linear layer (``A`` is r x in, ``B`` is out x r; no bias, no
head: the LM head stays frozen). :func:`build_lora_model` refuses target names that match no linear
layer (naming them and the model's real linear names) and a model whose trainable count differs, so a
wrong ``llm.target_modules`` fails before any training starts. ``on_meta`` builds the model from its
config on the meta device (shapes only, no weights, no memory): the check a launcher runs up front.

The same matching rule as peft's: a target is a module's full name or its last dotted component(s).
"""

from __future__ import annotations

import torch
from torch import nn

from pipelines.config import LlmConfig
from pipelines.errors import ConfigError
from pipelines.training.lora import check_targets, lora_parameters, wrap_checked


def load_causal_lm(path: str, on_meta: bool = False, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The base causal LM from a folder or HF id (see :func:`pipelines.llm.base_model.resolve_base_model`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:  # no config.json / not a transformers config
        raise ConfigError(f"llm.base_model: cannot load a model config from {path!r} ({err})") from None
    if on_meta:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    return AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype)


def adapted_layers(model: nn.Module, cfg: LlmConfig) -> list[int] | None:
    """The indices of the transformer layers that get adapters: the top ``llm.lora_layers`` (None: every layer).
    Backward then stops at the lowest of them, as nothing below needs a gradient."""
    if cfg.lora_layers is None:
        return None
    n = model.config.num_hidden_layers
    if cfg.lora_layers > n:
        raise ConfigError(f"llm.lora_layers: {cfg.lora_layers} is more than the model's {n} layers (null: all)")
    return list(range(n - cfg.lora_layers, n))


def expected_trainable_parameters(model: nn.Module, cfg: LlmConfig) -> int:
    """The analytic LoRA count: ``r * (in + out)`` summed over the targeted linear layers (the LM head stays
    frozen), of the adapted layers only when ``llm.lora_layers`` is set."""
    return lora_parameters(model, cfg.target_modules, cfg.lora_r, layers=adapted_layers(model, cfg))


def build_lora_model(model: nn.Module, cfg: LlmConfig) -> nn.Module:
    """``model`` wrapped with a LoRA adapter for causal LM; only the adapter weights require grad.

    Raises :class:`ConfigError` on unknown targets or a trainable count other than the analytic one.
    """
    from peft import LoraConfig, TaskType

    targets = list(cfg.target_modules)
    check_targets(model, targets, "llm.target_modules")
    expected = expected_trainable_parameters(model, cfg)
    lora_cfg = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        layers_to_transform=adapted_layers(model, cfg),
        bias="none",
    )
    return wrap_checked(model, lora_cfg, expected)
