"""finetune.class_weight: balanced weights as scikit-learn's definition gives them, and the weighted loss the
training loop takes, checked against a computation by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from pipelines.classifier.finetune_worker import batch_loss, class_weights
from pipelines.config import FinetuneConfig, parse_params
from pipelines.errors import ConfigError


class _Logits(torch.nn.Module):
    """Returns fixed logits; with ``labels`` also its own (unweighted) loss, as a transformers classifier does."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, input_ids=None, attention_mask=None, labels=None):
        loss = None if labels is None else torch.nn.functional.cross_entropy(self.logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=self.logits)


def test_balanced_weights_are_n_over_classes_times_count():
    ids = [0] * 87 + [1] * 13  # ham / spam
    w = class_weights(FinetuneConfig(class_weight="balanced"), ids, 2)
    np.testing.assert_allclose(w.numpy(), [100 / (2 * 87), 100 / (2 * 13)], rtol=1e-6)
    assert class_weights(FinetuneConfig(), ids, 2) is None  # the default: plain cross-entropy


def test_the_weighted_loss_matches_a_hand_computation_and_none_is_the_models_own():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    batch = {"input_ids": torch.zeros(6, 4, dtype=torch.long), "labels": labels}
    model = _Logits(logits)
    w = torch.tensor([0.5, 3.0, 1.5])
    logp = torch.log_softmax(logits.double(), dim=-1).numpy()
    nll = -logp[np.arange(6), labels.numpy()]
    by_hand = float((w.numpy()[labels] * nll).sum() / w.numpy()[labels].sum())
    assert float(batch_loss(model, batch, w)) == pytest.approx(by_hand, rel=1e-6)
    assert float(batch_loss(model, batch, None)) == pytest.approx(float(nll.mean()), rel=1e-6)
    assert float(batch_loss(model, batch, w)) != pytest.approx(float(nll.mean()), rel=1e-3)


def test_a_wrong_class_weight_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="finetune.class_weight"):
        parse_params({"finetune": {"class_weight": "inverse"}})
