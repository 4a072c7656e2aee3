"""Cross-split near-duplicate search in near-linear time: MinHash LSH proposes, TF-IDF cosine decides.

The definition of a near duplicate is unchanged: an ``other`` text whose cosine similarity to some
``reference`` text, over character 3-5-gram TF-IDF (``char_wb``, sublinear tf, IDF of the reference), is at
least ``threshold``. Comparing every ``other`` text with every ``reference`` text costs ``len(reference) x
len(other)`` (it was 169 s at 100k tickets); here

1. each text's character ``shingle``-grams are summarised by a MinHash signature (``rensa``, a Rust MinHash
   chosen over ``datasketch`` by measurement on 20k built-in tickets: signatures 0.2 s against 3.9 s, index
   and queries under 0.1 s against 1.8 s, both finding all 121 near duplicates; ``benchmarks/data_scaling.py`` times
   the stage);
2. each signature is cut into ``bands`` bands of ``num_perm / bands`` rows and each band hashed to 64 bits
   (:func:`band_matrix`, batch by batch: 8 bytes a band is all that is kept of a text); grouping on band hash
   (:func:`band_candidates`, one join per band) proposes, for each other text, the reference texts that share
   a whole band: pairs whose shingle Jaccard similarity is around ``(1 / bands) ** (bands / num_perm)`` (0.71
   for 128/16) or more are found with high probability. These are the pairs an LSH index proposes (rensa's
   ``RMinHashLSH`` is the test oracle), up to 64-bit hash collisions, which only add pairs for step 3 to reject;
   the index itself held about 0.55 GB for 350k reference texts, the band hashes hold 45 MB;
3. only those candidate pairs are scored with the exact TF-IDF cosine. The IDF comes from document
   frequencies counted batch by batch over a hashing vectoriser (2**24 columns: n-grams that share a column
   move a cosine by about 0.01 at most on 100k tickets), so no vocabulary and no
   reference matrix is held in memory; only the candidates' rows are vectorised again.

A pair at cosine >= 0.9 has a far higher shingle Jaccard than the band threshold on ticket-like text, so the
recall against the exhaustive search is ~1 (measured in the benchmark; tests compare with the exhaustive
search kept in ``tests/helpers/oracles.py``). What it can miss: a pair the TF-IDF calls similar while their
5-grams mostly differ (many short shared words re-ordered), which is not what a copied ticket looks like.

Steps 1 and 2's hashing are the costly per-text part; on a Ray cluster (``compute.engine: ray``)
:mod:`pipelines.data.distributed` runs :func:`band_matrix` as a Ray Data pipeline, batch by batch, and the driver
groups and decides the candidates with the same :func:`band_candidates` and :func:`verify`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize

BATCH = 2_000  # texts per step: bounds the hashing vectoriser's transient matrix (~0.15 GB at 10,000 tickets)


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


BandHashes = Callable[[pd.Series, LshSettings], np.ndarray]  # band_matrix, or its Ray Data twin


def candidates(
    reference: pd.Series, other: pd.Series, s: LshSettings, bands: BandHashes | None = None
) -> list[np.ndarray]:
    """Per ``other`` text, the positions of the reference texts that share an LSH band with it; ``bands`` computes
    the band hashes (:func:`band_matrix` here; ``pipelines.data.distributed.band_hashes_ray`` on a cluster)."""
    bands = bands or band_matrix
    return band_candidates(bands(reference, s), bands(other, s))


def band_matrix(texts: pd.Series, s: LshSettings) -> np.ndarray:
    """Per text, the ``s.bands`` 64-bit hashes of its MinHash signature's bands (:func:`band_hashes`), computed batch
    by batch: all the LSH keeps of a text is ``8 x bands`` bytes, never the whole signature nor an index object."""
    out = np.empty((len(texts), s.bands), dtype=np.uint64)
    for start, batch in zip(range(0, len(texts), BATCH), _signatures(texts, s), strict=True):
        signatures = np.array([m.digest() for m in batch], dtype=np.uint64).reshape(len(batch), s.num_perm)
        out[start : start + len(batch)] = band_hashes(signatures, s.bands)
    return out


_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def band_hashes(signatures: np.ndarray, bands: int) -> np.ndarray:
    """One 64-bit hash per band of each signature (``bands`` bands of ``num_perm / bands`` values): FNV-1a over the
    band's values, then the splitmix64 finaliser. Two texts that share a band share its hash."""
    n, num_perm = signatures.shape
    x = signatures.astype(np.uint64).reshape(n, bands, num_perm // bands)
    h = np.full((n, bands), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
        for j in range(x.shape[2]):
            h = (h ^ x[:, :, j]) * _FNV_PRIME
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def band_candidates(reference: np.ndarray, other: np.ndarray) -> list[np.ndarray]:
    """Per ``other`` row of band hashes, the positions of the ``reference`` rows that share a band with it: what an
    LSH index would propose, found by one join per band on the hashes (:func:`band_matrix`)."""
    if not len(other) or not len(reference):
        return [np.zeros(0, dtype=np.int64) for _ in range(len(other))]
    pairs = []
    for b in range(reference.shape[1]):
        ref = pd.DataFrame({"h": reference[:, b], "ref": np.arange(len(reference), dtype=np.int64)})
        oth = pd.DataFrame({"h": other[:, b], "other": np.arange(len(other), dtype=np.int64)})
        pairs.append(oth.merge(ref, on="h")[["other", "ref"]])
    found = pd.concat(pairs, ignore_index=True).drop_duplicates().sort_values(["other", "ref"])
    cuts = np.searchsorted(found["other"].to_numpy(), np.arange(1, len(other)))
    return np.split(found["ref"].to_numpy(), cuts)


class _Tfidf:
    """``TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)`` fitted on ``reference``,
    with hashed columns: document frequencies are counted in batches, rows are vectorised on demand."""

    def __init__(self, reference: pd.Series) -> None:
        self.hv = HashingVectorizer(
            analyzer="char_wb", ngram_range=(3, 5), n_features=2**24, alternate_sign=False, norm=None,
            dtype=np.float32,
        )  # fmt: skip
        # only the columns in use are touched: two 2**24-wide arrays (df int32, idf float32), no wide temporaries
        df = np.zeros(self.hv.n_features, dtype=np.int32)
        for start in range(0, len(reference), BATCH):
            x = self.hv.transform(reference.iloc[start : start + BATCH])
            cols, counts = np.unique(x.indices, return_counts=True)  # one index per (row, term)
            df[cols] += counts.astype(np.int32)
        seen = np.flatnonzero(df)
        self.idf = np.zeros(self.hv.n_features, dtype=np.float32)  # n-grams the reference lacks are out of vocabulary
        self.idf[seen] = np.log((1 + len(reference)) / (1 + df[seen])) + 1  # sklearn's smooth idf

    def rows(self, texts: pd.Series) -> sp.csr_matrix:
        x = self.hv.transform(texts).tocsr()
        x.data = (1 + np.log(x.data)) * self.idf[x.indices]  # sublinear tf x idf, column by column
        return normalize(x, copy=False)


def near_duplicates(
    reference: pd.Series, other: pd.Series, threshold: float, s: LshSettings, bands: BandHashes | None = None
) -> np.ndarray:
    """Boolean mask over ``other``: a reference text at cosine >= ``threshold`` exists (see the module doc);
    ``bands`` as in :func:`candidates` (where the per-text hashing runs: the mask is the same)."""
    if not len(other) or not len(reference):
        return np.zeros(len(other), dtype=bool)
    return verify(reference, other, candidates(reference, other, s, bands), threshold)


def verify(reference: pd.Series, other: pd.Series, cands: list[np.ndarray], threshold: float) -> np.ndarray:
    """Boolean mask over ``other``: one of its candidate reference texts (``cands``, per ``other`` text) is at exact
    TF-IDF cosine >= ``threshold`` (step 3 of the module doc)."""
    found = np.zeros(len(other), dtype=bool)
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
