"""Cross-split near-duplicate search in near-linear time: MinHash LSH proposes, TF-IDF cosine decides.

The definition of a near duplicate is unchanged: an ``other`` text whose cosine similarity to some
``reference`` text, over character 3-5-gram TF-IDF (``char_wb``, sublinear tf, IDF of the reference), is at
least ``threshold``. Comparing every ``other`` text with every ``reference`` text costs ``len(reference) x
len(other)`` (it was 169 s at 100k tickets); here

1. each text's character ``shingle``-grams are summarised by a MinHash signature (``rensa``, a Rust MinHash
   chosen over ``datasketch`` by measurement: 20x faster signatures, a tenth of the candidates at the same
   recall on the built-in tickets; ``benchmarks/data_scaling.py``);
2. an LSH index over the reference signatures (``bands`` bands of ``num_perm / bands`` rows) proposes, for
   each other text, the reference texts that share a whole band: pairs whose shingle Jaccard similarity is
   around ``(1 / bands) ** (bands / num_perm)`` (0.71 for 128/16) or more are found with high probability;
3. only those candidate pairs are scored with the exact TF-IDF cosine. The IDF comes from document
   frequencies counted batch by batch over a hashing vectoriser (2**24 columns: n-grams that share a column
   move a cosine by about 0.01 at most on 100k tickets), so no vocabulary and no
   reference matrix is held in memory; only the candidates' rows are vectorised again.

A pair at cosine >= 0.9 has a far higher shingle Jaccard than the band threshold on ticket-like text, so the
recall against the exhaustive search is ~1 (measured in the benchmark; tests compare with the exhaustive
search kept in ``tests/helpers/oracles.py``). What it can miss: a pair the TF-IDF calls similar while their
5-grams mostly differ (many short shared words re-ordered), which is not what a copied ticket looks like.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize

BATCH = 10_000


@dataclass(frozen=True)
class LshSettings:
    """How candidates are proposed (``leakage.minhash_*`` in params.yaml)."""

    num_perm: int = 128
    bands: int = 16
    shingle: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_perm % self.bands:
            raise ValueError(f"minhash_num_perm ({self.num_perm}) must be a multiple of minhash_bands ({self.bands})")


def shingles(text: str, k: int) -> list[str]:
    """The distinct character ``k``-grams of a normalised text (the text itself when shorter)."""
    return list({text[i : i + k] for i in range(max(1, len(text) - k + 1))})


def _signatures(texts: pd.Series, s: LshSettings) -> Iterator[list]:
    import rensa

    for start in range(0, len(texts), BATCH):
        out = []
        for t in texts.iloc[start : start + BATCH]:
            m = rensa.RMinHash(num_perm=s.num_perm, seed=s.seed)
            m.update(shingles(t, s.shingle))
            out.append(m)
        yield out


def candidates(reference: pd.Series, other: pd.Series, s: LshSettings) -> list[np.ndarray]:
    """Per ``other`` text, the positions of the reference texts that share an LSH band with it."""
    import rensa

    lsh = rensa.RMinHashLSH(threshold=0.5, num_perm=s.num_perm, num_bands=s.bands)
    start = 0
    for batch in _signatures(reference, s):
        lsh.insert_many(batch, start)
        start += len(batch)
    out: list[np.ndarray] = []
    for batch in _signatures(other, s):
        out.extend(np.fromiter(keys, dtype=np.int64) for keys in lsh.query_all(batch))
    return out


class _Tfidf:
    """``TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)`` fitted on ``reference``,
    with hashed columns: document frequencies are counted in batches, rows are vectorised on demand."""

    def __init__(self, reference: pd.Series) -> None:
        self.hv = HashingVectorizer(
            analyzer="char_wb", ngram_range=(3, 5), n_features=2**24, alternate_sign=False, norm=None,
            dtype=np.float32,
        )  # fmt: skip
        df = np.zeros(self.hv.n_features, dtype=np.int32)
        for start in range(0, len(reference), BATCH):
            x = self.hv.transform(reference.iloc[start : start + BATCH])
            df += np.bincount(x.indices, minlength=self.hv.n_features).astype(np.int32)  # one index per (row, term)
        idf = np.log((1 + len(reference)) / (1 + df)) + 1  # sklearn's smooth idf
        self.idf = np.where(df > 0, idf, 0).astype(np.float32)  # n-grams the reference lacks are out of vocabulary

    def rows(self, texts: pd.Series) -> sp.csr_matrix:
        x = self.hv.transform(texts).tocsr()
        x.data = 1 + np.log(x.data)
        return normalize(x @ sp.diags(self.idf), copy=False)


def near_duplicates(reference: pd.Series, other: pd.Series, threshold: float, s: LshSettings) -> np.ndarray:
    """Boolean mask over ``other``: a reference text at cosine >= ``threshold`` exists (see the module doc)."""
    found = np.zeros(len(other), dtype=bool)
    if not len(other) or not len(reference):
        return found
    cands = candidates(reference, other, s)
    hit = [i for i, c in enumerate(cands) if len(c)]
    if not hit:
        return found
    tfidf = _Tfidf(reference)
    for start in range(0, len(hit), BATCH):
        rows = hit[start : start + BATCH]
        q = tfidf.rows(other.iloc[rows])
        pairs_q = np.repeat(np.arange(len(rows)), [len(cands[i]) for i in rows])
        pairs_r = np.concatenate([cands[i] for i in rows])
        uniq, inv = np.unique(pairs_r, return_inverse=True)
        r = tfidf.rows(reference.iloc[uniq])
        cos = np.asarray(q[pairs_q].multiply(r[inv]).sum(axis=1)).ravel()
        best = np.zeros(len(rows), dtype=np.float32)
        np.maximum.at(best, pairs_q, cos)
        found[rows] = best >= threshold - 1e-6  # float32 rounding of an exact threshold pair
    return found
