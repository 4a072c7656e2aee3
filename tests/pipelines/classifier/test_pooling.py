"""Pooling that matches the base model: a mean-pooled head for sentence-embedding checkpoints, the [CLS] head
for the others; the saved adapter reloads with the pooling it was trained with; the head can learn faster."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from pipelines.classifier.base_model import resolve_base_model
from pipelines.classifier.lora import (
    MeanPooledClassifier,
    build_model,
    checkpoint_pooling,
    load_trained,
    optimizer_groups,
)
from pipelines.config import FinetuneConfig
from pipelines.training.engine import build_config

LABELS = ["refund", "login"]
TRAIN = [
    ("please refund my money for the last invoice", "refund"),
    ("i want my money back, refund the charge", "refund"),
    ("refund the duplicate payment on my card", "refund"),
    ("can you return the money you charged twice", "refund"),
    ("i cannot log in, the password reset fails", "login"),
    ("my login does not work after the password change", "login"),
    ("locked out of my account, sign in fails", "login"),
    ("two factor code rejected when i sign in", "login"),
]
HELD_OUT = [("send the refund for my charge", "refund"), ("password does not let me log in", "login")]


def test_auto_pooling_reads_the_checkpoint(tmp_path):
    minilm = resolve_base_model("minilm")
    assert checkpoint_pooling(minilm) == "mean"  # a sentence-transformers checkpoint trained on the token mean
    AutoConfig.from_pretrained(minilm).save_pretrained(tmp_path)  # a plain transformers checkpoint: no pooling config
    assert checkpoint_pooling(str(tmp_path)) == "cls"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert checkpoint_pooling(str(tmp_path)) == "cls"
    model = build_model(minilm, LABELS, FinetuneConfig(), on_meta=True)
    assert isinstance(model.get_base_model(), MeanPooledClassifier)


def test_mean_pooled_count_has_no_pooler_and_cls_count_has_it():
    base = resolve_base_model("minilm")
    per_layer = 3 * (384 + 384) + (384 + 384) + (384 + 1536) + (1536 + 384)
    head = 384 * 2 + 2
    count = {
        pooling: sum(
            p.numel()
            for p in build_model(base, LABELS, FinetuneConfig(pooling=pooling, lora_r=4), on_meta=True).parameters()
            if p.requires_grad
        )
        for pooling in ("mean", "cls")
    }
    assert count["mean"] == 4 * 6 * per_layer + head  # the unused [CLS] pooler gets no adapter
    assert count["cls"] == 4 * (6 * per_layer + 384 + 384) + head


def _batch(tok, texts):
    return tok(texts, padding=True, return_tensors="pt")


def test_padding_does_not_change_the_mean_pooled_answer():
    base = resolve_base_model("minilm")
    tok = AutoTokenizer.from_pretrained(base)
    model = build_model(base, LABELS, FinetuneConfig(pooling="mean")).eval()
    short, long = "refund please", "my login does not work after the password change at all"
    with torch.no_grad():
        alone = model(**_batch(tok, [short])).logits
        padded = model(**_batch(tok, [short, long])).logits[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_save_and_reload_keep_the_pooling_and_the_logits(tmp_path, pooling):
    base = resolve_base_model("minilm")
    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    model = build_model(base, LABELS, FinetuneConfig(pooling=pooling, target_modules=["query", "value"])).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(str(tmp_path))
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    texts = [t for t, _ in HELD_OUT]
    reloaded = load_trained(tmp_path, base)
    assert isinstance(reloaded.get_base_model(), MeanPooledClassifier) == (pooling == "mean")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**_batch(tok, texts)).logits, model(**_batch(tok, texts)).logits)


def _fit_small_task(cfg: FinetuneConfig, steps: int = 20) -> tuple[torch.nn.Module, float, float, list[int]]:
    """``steps`` AdamW steps (each optimizer group at its own rate) on TRAIN: (model, loss before, loss after,
    held-out predictions). The loss is taken without dropout both times, so the two are comparable."""
    base = resolve_base_model("minilm")
    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    model = build_model(base, LABELS, cfg)
    groups, lrs = optimizer_groups(model, cfg)
    opt = torch.optim.AdamW([{**g, "lr": lr} for g, lr in zip(groups, lrs)])
    batch = _batch(tok, [t for t, _ in TRAIN])
    y = torch.tensor([LABELS.index(lab) for _, lab in TRAIN])
    model.eval()
    with torch.no_grad():
        before = model(**batch, labels=y).loss.item()
    for _ in range(steps):
        model(**batch, labels=y).loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        after = model(**batch, labels=y).loss.item()
        held = model(**_batch(tok, [t for t, _ in HELD_OUT])).logits.argmax(-1).tolist()
    return model, before, after, held


def test_mean_pooled_lora_learns_a_small_separable_task():
    """20 optimizer steps of LoRA + head (head 10x faster) separate two intents, held-out texts included."""
    cfg = FinetuneConfig(pooling="mean", learning_rate=1e-3, head_learning_rate=1e-2, lora_dropout=0.0)
    _, before, after, held = _fit_small_task(cfg)
    assert after < before / 4
    assert held == [LABELS.index(lab) for _, lab in HELD_OUT]


def test_head_learning_rate_makes_two_groups_with_their_own_schedule():
    base = resolve_base_model("minilm")
    one = FinetuneConfig(head_learning_rate=None)  # no head rate: one group, the stage's single learning rate
    assert optimizer_groups(build_model(base, LABELS, one, on_meta=True), one) is None
    cfg = FinetuneConfig(learning_rate=1e-3, head_learning_rate=2e-2)
    model = build_model(base, LABELS, cfg, on_meta=True)
    groups, lrs = optimizer_groups(model, cfg)
    head_ids = {id(p) for p in groups[1]["params"]}
    names = [n for n, p in model.named_parameters() if id(p) in head_ids]
    assert names and all("classifier" in n for n in names) and lrs == [1e-3, 2e-2]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    sched = build_config(cfg, precision="fp32", accelerator="cpu", total_steps=100, group_lrs=lrs)["scheduler"]
    np.testing.assert_allclose(sched["params"]["warmup_max_lr"], [1e-3, 2e-2])
    np.testing.assert_allclose(sched["params"]["warmup_min_lr"], [1e-5, 2e-4])


def test_a_collapsed_model_is_named_as_such_and_a_working_one_is_not():
    from pipelines.classifier.finetuning import collapse_reason

    labels = ["ham"] * 87 + ["spam"] * 13
    assert "predicts 'ham' for all 100" in collapse_reason(labels, ["ham"] * 100)
    # two classes answered, but no better than the majority answer (0.465 macro-F1): still degenerate
    worse = ["ham"] * 86 + ["spam"] + ["ham"] * 13
    assert "no better than always answering 'ham'" in collapse_reason(labels, worse)
    good = ["ham"] * 85 + ["spam"] * 2 + ["spam"] * 12 + ["ham"]
    assert collapse_reason(labels, good) is None


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_full_fine_tuning_trains_every_weight_and_reloads_from_its_own_folder(tmp_path, pooling):
    """method full: no adapter, every parameter trainable; the saved folder is the whole model (no adapter config)
    and reloads, without the base checkpoint's weights, to the same logits."""
    base = resolve_base_model("minilm")
    tok = AutoTokenizer.from_pretrained(base)
    cfg = FinetuneConfig(pooling=pooling, method="full")
    model = build_model(base, LABELS, cfg).eval()
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert isinstance(model, MeanPooledClassifier) == (pooling == "mean")
    torch.manual_seed(0)
    with torch.no_grad():  # move a base weight, so a reload that took the base checkpoint's weights would differ
        emb = (model.encoder if pooling == "mean" else model).get_input_embeddings().weight
        emb.add_(torch.randn_like(emb) * 0.05)
    model.save_pretrained(str(tmp_path))
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    assert not (tmp_path / "adapter_config.json").exists()
    reloaded = load_trained(tmp_path, base)
    texts = [t for t, _ in HELD_OUT]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**_batch(tok, texts)).logits, model(**_batch(tok, texts)).logits)
    assert [reloaded.config.id2label[i] for i in range(2)] == LABELS


def test_full_fine_tuning_learns_a_small_separable_task():
    """20 steps with every encoder weight at 1e-4 and the head at 1e-2 separate two intents, held-out texts too."""
    cfg = FinetuneConfig(pooling="mean", method="full", learning_rate=1e-4, head_learning_rate=1e-2)
    model, before, after, held = _fit_small_task(cfg)
    encoder_group = optimizer_groups(model, cfg)[0][0]["params"]
    assert sum(p.numel() for p in encoder_group) > 20_000_000  # the whole encoder, at learning_rate
    assert after < before / 4
    assert held == [LABELS.index(lab) for _, lab in HELD_OUT]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_set_head_gives_the_probabilities_of_the_fitted_logistic_regression(n_classes):
    """A binary scikit-learn model has one row of log-odds; the two-row head splits it and keeps the softmax."""
    from sklearn.linear_model import LogisticRegression

    from pipelines.classifier.lora import set_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    y = np.arange(60) % n_classes
    x[np.arange(60), y] += 2.0
    probe = LogisticRegression(max_iter=1000).fit(x, y)
    head = torch.nn.Linear(5, n_classes)
    set_head(head, probe.coef_, probe.intercept_)
    with torch.no_grad():
        proba = torch.softmax(head(torch.from_numpy(x)), -1).numpy()
    np.testing.assert_allclose(proba, probe.predict_proba(x), atol=1e-5)
    with pytest.raises(ValueError, match="does not fit a head"):
        set_head(torch.nn.Linear(5, 4), probe.coef_, probe.intercept_)


def test_linear_probe_refuses_a_head_that_is_not_one_linear_layer():
    from pipelines.classifier.lora import head_name
    from pipelines.errors import ConfigError

    model = torch.nn.Module()
    model.classifier = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"finetune.head_init: linear_probe needs a linear classification head"):
        head_name(model)
    model.classifier = torch.nn.Linear(4, 2)
    assert head_name(model) == "classifier"


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_linear_probe_head_separates_the_task_before_any_training_step(one_rank, pooling):
    """head_init linear_probe: the head is the logistic regression fitted on the frozen base's pooled train vectors
    (computed here independently of the worker), it survives the LoRA wrapping, and it already answers the
    held-out texts right with no optimizer step."""
    from sklearn.linear_model import LogisticRegression
    from transformers import DataCollatorWithPadding

    from pipelines.classifier.finetune_worker import encode, linear_probe_head

    base = resolve_base_model("minilm")
    tok = AutoTokenizer.from_pretrained(base)
    cfg = FinetuneConfig(pooling=pooling, head_init="linear_probe")
    rows = encode(tok, [t for t, _ in TRAIN], [LABELS.index(lab) for _, lab in TRAIN], 64)
    info: dict = {}
    collator = DataCollatorWithPadding(tok)
    torch.manual_seed(0)
    model = build_model(
        base, LABELS, cfg, init_head=lambda m: linear_probe_head(m, rows, collator, 3, one_rank, info)
    ).eval()
    assert info["head_init_train_accuracy"] == 1.0
    # the pooled vectors the head reads, from the plain base model, and scikit-learn's fit on them
    plain = build_model(base, LABELS, FinetuneConfig(pooling=pooling, method="full")).eval()
    pooled = []
    plain.classifier = torch.nn.Identity()
    with torch.no_grad():
        for text, _ in TRAIN:
            pooled.append(plain(**_batch(tok, [text])).logits[0].numpy())
    probe = LogisticRegression(max_iter=2000).fit(np.stack(pooled), [LABELS.index(lab) for _, lab in TRAIN])
    with torch.no_grad():
        train_proba = torch.softmax(model(**_batch(tok, [t for t, _ in TRAIN])).logits, -1).numpy()
        held = model(**_batch(tok, [t for t, _ in HELD_OUT])).logits.argmax(-1).tolist()
    np.testing.assert_allclose(train_proba, probe.predict_proba(np.stack(pooled)), atol=1e-3)
    assert held == [LABELS.index(lab) for _, lab in HELD_OUT]
