"""A decoder LM as the classifier's base (README "A larger base"): ``finetune.base_model`` names a causal LM folder,
``pooling: auto`` finds no sentence-transformers pooling in it and keeps transformers' own head, which for a Llama
reads the last real token. Padding must not move that token, the LoRA count must match the analytic one, and the
saved adapter must score the same through the evaluation/serving classifier.

The base is a 2-layer, 32-wide Llama with the real SmolLM2 tokenizer (tests.helpers.llm): no download."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from pipelines.classifier.lora import build_model, load_trained, resolve_pooling
from pipelines.config import FinetuneConfig
from tests.helpers.llm import smol_tokenizer, tiny_base

LABELS = ["ham", "spam"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHORT, LONG = "see you at lunch", "WINNER!! You have won a 1000 pound prize, call now to claim before it expires"


@pytest.fixture(scope="module")
def decoder_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("decoder-base")
    return tiny_base(root / "base", smol_tokenizer(root / "tok"))


def _cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig(target_modules=TARGETS, lora_r=4, **kw)


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """LoRA's B matrices start at zero (the adapter adds nothing): give them weights so the adapter counts."""
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def test_auto_pooling_keeps_the_decoders_own_head_with_the_analytic_lora_count(decoder_base):
    cfg = _cfg()
    assert resolve_pooling(cfg, str(decoder_base)) == "cls"  # no 1_Pooling/config.json: the checkpoint's own head
    model = build_model(str(decoder_base), LABELS, cfg)
    inner = model.get_base_model()
    assert type(inner).__name__ == "LlamaForSequenceClassification"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".score." in n for n in trainable)  # the new head trains
    assert all("lora_" in n or ".score." in n for n in trainable)  # and nothing of the base but the adapters
    # build_model checked its count against expected_trainable_parameters; this one is computed by hand,
    # r * (in + out) per targeted layer: 2 layers x (q 32+32, k 32+16, v 32+16, o 32+32, gate/up 32+64, down 64+32)
    per_layer = 4 * ((32 + 32) + (32 + 16) * 2 + (32 + 32) + (32 + 64) * 3)
    head = 32 * 2  # Llama's score layer has no bias
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * per_layer + head


def test_padding_does_not_move_the_token_the_head_reads(decoder_base):
    tok = AutoTokenizer.from_pretrained(decoder_base)
    model = _trained_looking(build_model(str(decoder_base), LABELS, _cfg()))
    with torch.no_grad():
        alone = model(**tok([SHORT], return_tensors="pt")).logits
        padded = model(**tok([SHORT, LONG], padding=True, return_tensors="pt")).logits
        # the head reads the last real token: cutting the text there changes the answer, so that token is read
        cut = model(**tok([SHORT.rsplit(" ", 1)[0]], return_tensors="pt")).logits
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(cut, alone, atol=1e-4)


def test_the_saved_adapter_scores_the_same_through_the_evaluation_classifier(decoder_base, tmp_path):
    from pipelines.classifier.transformer import TransformerClassifier

    tok = AutoTokenizer.from_pretrained(decoder_base)
    model = _trained_looking(build_model(str(decoder_base), LABELS, _cfg()))
    model.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    texts = [SHORT, LONG, "ok"]
    with torch.no_grad():
        want = torch.softmax(model(**tok(texts, padding=True, return_tensors="pt")).logits, -1).numpy()
    reloaded = load_trained(tmp_path, str(decoder_base))
    assert type(reloaded.get_base_model()).__name__ == "LlamaForSequenceClassification"
    clf = TransformerClassifier(tmp_path, base_model=str(decoder_base), precision="fp32", batch_size=2)
    assert clf.classes == LABELS
    np.testing.assert_allclose(clf.predict_proba(texts), want, atol=1e-5)


def test_linear_probe_fits_a_head_without_a_bias(decoder_base, one_rank):
    """Llama's score layer has no bias: head_init linear_probe fits the regression without an intercept, and the
    head then gives that fit's probabilities (an independent fit on the last-token vectors, computed here)."""
    from sklearn.linear_model import LogisticRegression
    from transformers import DataCollatorWithPadding

    from pipelines.classifier.finetune_worker import encode, linear_probe_head
    from pipelines.classifier.lora import set_head

    tok = AutoTokenizer.from_pretrained(decoder_base)
    texts = [SHORT, LONG, "call me later", "FREE entry, txt WIN to 80086", "thanks, see you", "URGENT prize claim"]
    y = [0, 1, 0, 1, 0, 1]
    info: dict = {}
    rows = encode(tok, texts, y, 64)
    cfg = _cfg(head_init="linear_probe")
    model = build_model(
        str(decoder_base),
        LABELS,
        cfg,
        init_head=lambda m: linear_probe_head(m, rows, DataCollatorWithPadding(tok), 4, one_rank, info),
    ).eval()
    plain = build_model(str(decoder_base), LABELS, _cfg(method="full")).eval()
    plain.score = torch.nn.Identity()  # the head's input: the last real token's vector
    with torch.no_grad():
        pooled = plain(**tok(texts, padding=True, return_tensors="pt")).logits.numpy()
        proba = torch.softmax(model(**tok(texts, padding=True, return_tensors="pt")).logits, -1).numpy()
    probe = LogisticRegression(max_iter=2000, fit_intercept=False).fit(pooled, y)
    np.testing.assert_allclose(proba, probe.predict_proba(pooled), atol=1e-3)
    assert info["head_init_train_accuracy"] == probe.score(pooled, y)
    with pytest.raises(ValueError, match="no bias"):  # an intercept it cannot hold is refused, not dropped
        set_head(torch.nn.Linear(32, 2, bias=False), probe.coef_, np.array([0.5]))


def _without_special(decoder_base: Path, dest: Path, *, eos: bool, config_pad: int | None = None) -> Path:
    """A copy of the tiny base whose tokenizer has no padding token (GPT-2, Llama 3), and no end of sequence either
    when ``eos`` is false; its config names ``config_pad`` as the padding id (None: none)."""
    import shutil

    shutil.copytree(decoder_base, dest)
    tok = AutoTokenizer.from_pretrained(dest)
    tok.pad_token = None
    if not eos:
        tok.eos_token = None
    tok.save_pretrained(dest)
    config = json.loads((dest / "config.json").read_text())
    config["pad_token_id"] = config_pad
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.mark.parametrize("config_pad", [None, 0])  # 0: a config naming an id the tokenizer does not pad with
def test_a_base_without_a_padding_token_pads_with_its_end_of_sequence(decoder_base, tmp_path, config_pad):
    from pipelines.classifier.lora import load_tokenizer

    base = _without_special(decoder_base, tmp_path / "no-pad", eos=True, config_pad=config_pad)
    assert AutoTokenizer.from_pretrained(base).pad_token is None
    tok = load_tokenizer(str(base))
    assert tok.pad_token_id == tok.eos_token_id is not None
    model = _trained_looking(build_model(str(base), LABELS, _cfg()))
    assert model.get_base_model().config.pad_token_id == tok.eos_token_id
    with torch.no_grad():
        alone = model(**tok([SHORT], return_tensors="pt")).logits
        padded = model(**tok([SHORT, LONG], padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=1e-4)


def test_a_base_that_cannot_pad_is_refused_before_training(decoder_base, tmp_path):
    from pipelines.errors import ConfigError

    base = _without_special(decoder_base, tmp_path / "no-pad-no-eos", eos=False)
    with pytest.raises(ConfigError, match=r"finetune.base_model: the tokenizer of .* neither a padding nor"):
        build_model(str(base), LABELS, _cfg(), on_meta=True)  # the stage's check before any rank starts
