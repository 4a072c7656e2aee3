"""Numeric views of text that drift tests can compare: descriptors and embedding components.

* descriptors: ``length_chars``, ``word_count`` and ``oov_share`` (share of a text's words never
  seen in the training vocabulary; computed here, no NLTK);
* embeddings: MiniLM sentence embeddings (:mod:`pipelines.classifier.encoder`) projected on the first
  ``embedding_components`` PCA axes of the *reference* embeddings, one numeric column each.
  Evidently's ``EmbeddingsDrift`` spends most of its time drawing a t-SNE plot; per-component
  K-S tests on a PCA projection are cheap and show *which* direction moved.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

WORD_RE = re.compile(r"[a-z0-9']+")
DESCRIPTORS = ["length_chars", "word_count", "oov_share"]
Encode = Callable[[list[str]], np.ndarray]


def words(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


def vocabulary(texts: Iterable[str]) -> frozenset[str]:
    """Every word of the training texts (lower-cased)."""
    vocab: set[str] = set()
    for t in texts:
        vocab.update(words(t))
    return frozenset(vocab)


def descriptors(texts: list[str], vocab: frozenset[str]) -> pd.DataFrame:
    """Length in characters, word count and out-of-vocabulary share per text."""
    rows = []
    for t in texts:
        w = words(t)
        oov = sum(1 for x in w if x not in vocab) / len(w) if w else 0.0
        rows.append((float(len(t)), float(len(w)), float(oov)))
    return pd.DataFrame(rows, columns=DESCRIPTORS)


def minilm_encoder(threads: int = 2, batch_size: int = 64) -> Encode:
    """The packaged MiniLM (mean-pooled, L2-normalised), loaded on first use."""
    from pipelines.classifier.encoder import MeanPoolEncoder

    enc = MeanPoolEncoder("minilm", max_length=128, batch_size=batch_size, threads=threads)
    return enc.encode


class EmbeddingProjector:
    """PCA of the reference embeddings; projects any texts on the same axes (``emb_pc1`` ...)."""

    def __init__(self, encode: Encode, n_components: int = 5, seed: int = 42) -> None:
        self.encode, self.n, self.seed = encode, n_components, seed
        self._pca = None

    @property
    def columns(self) -> list[str]:
        return [f"emb_pc{i + 1}" for i in range(self.n)]

    def fit_transform(self, texts: list[str]) -> pd.DataFrame:
        from sklearn.decomposition import PCA

        emb = self.encode(list(texts))
        self.n = min(self.n, emb.shape[1], len(texts))
        self._pca = PCA(n_components=self.n, random_state=self.seed).fit(emb)
        return pd.DataFrame(self._pca.transform(emb), columns=self.columns)

    def transform(self, texts: list[str]) -> pd.DataFrame:
        if self._pca is None:
            raise RuntimeError("EmbeddingProjector.fit_transform must run on the reference first")
        return pd.DataFrame(self._pca.transform(self.encode(list(texts))), columns=self.columns)
