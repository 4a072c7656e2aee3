"""LoRA on a causal LM: the trainable count is the analytic one, only adapter weights train, targets are checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipelines.config import LlmConfig
from pipelines.errors import ConfigError
from pipelines.llm import lora
from pipelines.llm.lora import build_lora_model, expected_trainable_parameters, load_causal_lm
from pipelines.training.lora import trainable_parameters

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_trainable_count_is_the_analytic_one_and_only_adapters_train(tiny_lm) -> None:
    cfg = LlmConfig(lora_r=4, target_modules=ALL)
    frozen = {n: p.detach().clone() for n, p in tiny_lm.named_parameters()}
    # per layer (hidden 32, 2 kv heads of 8 -> k/v out 16, mlp 64): q, o 4*(32+32); k, v 4*(32+16);
    # gate, up 4*(32+64); down 4*(64+32) -> 2048; two layers
    assert expected_trainable_parameters(tiny_lm, cfg) == 2 * (2 * 256 + 2 * 192 + 3 * 384) == 4096
    model = build_lora_model(tiny_lm, cfg)
    assert trainable_parameters(model) == 4096
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 7 * 2 and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # the base weights are untouched and frozen
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in model.named_parameters()}
    for name, before in frozen.items():
        assert not base[name].requires_grad and torch.equal(base[name], before), name


def test_default_targets_on_the_smollm2_shape_on_meta(tmp_path: Path) -> None:
    """The pre-launch check: the model built from its config on the meta device (no weights), SmolLM2's shapes."""
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    ).save_pretrained(tmp_path)
    base = load_causal_lm(str(tmp_path), on_meta=True)
    assert next(base.parameters()).device.type == "meta"
    cfg = LlmConfig()  # r=8 on q/k/v/o/gate/up/down
    per_layer = 8 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3)
    assert trainable_parameters(build_lora_model(base, cfg)) == 30 * per_layer == 2_442_240


def test_missing_targets_are_named_with_the_real_linear_names(tiny_lm) -> None:
    cfg = LlmConfig(target_modules=["q_proj", "query", "dense"])
    with pytest.raises(ConfigError, match=r"\['query', 'dense'\] match no linear layer") as err:
        build_lora_model(tiny_lm, cfg)
    assert "'gate_proj'" in str(err.value) and "'q_proj'" in str(err.value)


def test_a_count_other_than_the_analytic_one_is_refused(tiny_lm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lora, "expected_trainable_parameters", lambda model, cfg: 1)
    with pytest.raises(ConfigError, match="LoRA trains 512 parameters but the analytic count is 1"):
        build_lora_model(tiny_lm, LlmConfig(lora_r=4, target_modules=["q_proj"]))


def test_an_unreadable_base_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load a model config"):
        load_causal_lm(str(tmp_path))
