"""The registered transformer predicts with the LoRA adapter merged into the base weights.

Same numbers, no adapter layers."""

from __future__ import annotations

import json

import numpy as np
import torch
from transformers import AutoTokenizer

from pipelines.classifier.base_model import resolve_base_model
from pipelines.classifier.lora import build_model
from pipelines.classifier.transformer import TransformerClassifier
from pipelines.config import FinetuneConfig

LABELS = ["billing", "shipping", "access"]
TEXTS = ["I was charged twice", "where is my parcel, it has been two weeks and nobody answers", "reset link broken"]


def test_merged_inference_gives_the_adapter_probabilities(tmp_path):
    base = resolve_base_model("minilm")
    torch.manual_seed(0)
    model = build_model(base, LABELS, FinetuneConfig(target_modules=["query", "value"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # lora_B starts at zero: without this the adapter would be a no-op
            torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(str(tmp_path))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(tmp_path))
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))

    plain = TransformerClassifier(tmp_path)
    merged = TransformerClassifier(tmp_path, merge=True)
    assert any("lora_" in n for n, _ in plain.model.named_parameters())
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())
    p, q = plain.predict_proba(TEXTS), merged.predict_proba(TEXTS)
    np.testing.assert_allclose(q, p, atol=1e-5)
    with plain.model.disable_adapter():  # the check can fail: without the adapter the answers differ
        assert np.abs(plain.predict_proba(TEXTS) - p).max() > 1e-3
    assert merged.classes == LABELS


def test_token_lengths_are_the_models_own_and_batch_order_does_not_change_answers(tmp_path):
    base = resolve_base_model("minilm")
    build_model(base, LABELS, FinetuneConfig(target_modules=["query", "value"])).save_pretrained(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(base)
    tok.save_pretrained(str(tmp_path))
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    clf = TransformerClassifier(tmp_path, max_length=16, batch_size=2)
    texts = [*TEXTS, "word " * 40]
    lengths = clf.token_lengths(texts)
    assert lengths == [len(tok(t)["input_ids"]) if len(tok(t)["input_ids"]) <= 16 else 16 for t in texts]
    assert lengths[-1] == 16 and len(tok(texts[-1])["input_ids"]) > 16  # truncation applied, as the model sees it
    # batched by token length (2 per batch): each row equals the text run on its own
    one_by_one = np.vstack([clf.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(clf.predict_proba(texts), one_by_one, atol=1e-5)


def test_lengths_and_predictions_from_two_threads_at_once(tmp_path):
    """Serving measures token lengths on its event loop while the model thread encodes: a shared fast tokenizer
    then pads with the other thread's settings ("Unable to create tensor") or raises "Already borrowed"."""
    import threading

    base = resolve_base_model("minilm")
    build_model(base, LABELS, FinetuneConfig(target_modules=["query", "value"])).save_pretrained(str(tmp_path))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(tmp_path))
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    clf = TransformerClassifier(tmp_path, max_length=32)
    texts = ["some words here " * (i % 7 + 1) for i in range(64)]
    expected = clf.predict_proba(texts)
    errors: list[str] = []
    done = threading.Event()

    def predict() -> None:
        for _ in range(8):
            try:
                np.testing.assert_allclose(clf.predict_proba(texts), expected, atol=1e-6)
            except Exception as err:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(err))
        done.set()

    def measure() -> None:
        while not done.is_set():
            try:
                assert clf.token_lengths(texts[:4]) == clf.token_lengths(texts)[:4]
            except Exception as err:  # noqa: BLE001
                errors.append(repr(err))

    threads = [threading.Thread(target=predict), threading.Thread(target=measure), threading.Thread(target=measure)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
