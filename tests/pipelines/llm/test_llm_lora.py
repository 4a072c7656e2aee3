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


def test_lora_layers_adapts_only_the_top_layers_and_backward_stops_below_them(tiny_lm) -> None:
    """llm.lora_layers: 1 on the 2-layer model: adapters on layer 1 only, half the analytic count, and a
    backward pass reaches no module of layer 0 (that is the speed-up: nothing below needs a gradient)."""
    cfg = LlmConfig(lora_r=4, target_modules=ALL, lora_layers=1)
    assert expected_trainable_parameters(tiny_lm, cfg) == 2048  # one layer of test_trainable_count's 4096
    model = build_lora_model(tiny_lm, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable_parameters(model) == 2048 and all(".layers.1." in n for n in trainable)
    reached: list[str] = []
    for name, module in model.named_modules():
        if name.endswith("layers.0") or name.endswith("layers.1"):
            module.register_full_backward_hook(lambda m, gi, go, name=name: reached.append(name))
    model.train()
    ids = torch.randint(0, 100, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    assert [n.rsplit(".", 1)[-1] for n in reached] == ["1"]


def test_lora_layers_beyond_the_model_is_refused(tiny_lm) -> None:
    with pytest.raises(ConfigError, match=r"llm.lora_layers: 3 is more than the model's 2 layers"):
        build_lora_model(tiny_lm, LlmConfig(target_modules=ALL, lora_layers=3))


def test_an_adapter_on_the_top_layers_reloads_with_them(tiny_lm, tokenizer, tmp_path: Path) -> None:
    """The saved adapter names its layers (peft's adapter_config), so evaluation and serving, which load it onto
    the base, rebuild the same model."""
    from peft import PeftModel

    from tests.helpers.llm import tiny_llama

    model = build_lora_model(tiny_lm, LlmConfig(lora_r=4, target_modules=ALL, lora_layers=1))
    torch.manual_seed(2)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_llama(tokenizer), str(tmp_path)).eval()
    ids = torch.randint(0, 100, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
    assert all(".layers.1." in n for n, _ in reloaded.named_parameters() if "lora_" in n)
