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
   move a cosine by about 0.01 at most on 100k tickets), and only for the n-grams of the candidates' texts,
   so no vocabulary and no reference matrix is held in memory; only the candidates' rows are read and
   vectorised again.

The texts are :class:`Texts`: rows of text columns read batch by batch (a pandas Series, or a Parquet file's
column read with column projection by the leakage stage), so no step needs every text in memory at once: steps
1-2 keep 8 bytes a band, step 3 the candidates' texts and the document frequencies of their n-grams.

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
from joblib import Parallel, delayed
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


Reader = Callable[[], Iterator[pd.Series]]  # a column's texts, batch by batch, in order (a Parquet file's column)


class TextColumn:
    """One column of texts: a pandas Series, or ``length`` texts a ``reader`` yields batch by batch (a Parquet file's
    column, :func:`pipelines.io.read_batches`: the column is never in memory whole). ``transform`` (the leakage
    stage's normalisation) is applied to what is read, only to the rows asked for; the 64-bit hashes of the
    transformed texts (:meth:`hashes`) are computed in one pass and kept (8 bytes a text)."""

    def __init__(
        self,
        source: pd.Series | Reader,
        length: int | None = None,
        transform: Callable[[pd.Series], pd.Series] | None = None,
    ) -> None:
        self.source = source
        self.length = len(source) if isinstance(source, pd.Series) else int(length or 0)
        self.transform = transform
        self._hashes: np.ndarray | None = None

    def __len__(self) -> int:
        return self.length

    def raw(self) -> Iterator[tuple[int, pd.Series]]:
        """(position of the first text, untransformed texts), batch by batch."""
        if isinstance(self.source, pd.Series):
            for start in range(0, len(self.source), BATCH):
                yield start, self.source.iloc[start : start + BATCH]
            return
        start = 0
        for batch in self.source():
            yield start, batch
            start += len(batch)

    def apply(self, texts: pd.Series) -> pd.Series:
        texts = texts.reset_index(drop=True)
        return texts if self.transform is None else self.transform(texts)

    def take(self, positions: np.ndarray) -> pd.Series:
        """The (transformed) texts at ``positions`` (ascending), read in one pass that keeps only them."""
        picked = []
        if len(positions):
            for start, batch in self.raw():
                lo, hi = np.searchsorted(positions, [start, start + len(batch)])
                if hi > lo:
                    picked.append(batch.iloc[positions[lo:hi] - start])
                if start + len(batch) > positions[-1]:
                    break
        return self.apply(pd.concat(picked) if picked else pd.Series([], dtype=object))

    def hashes(self) -> np.ndarray:
        """A 64-bit hash of each (transformed) text: equal texts, equal hashes; two different texts share one with
        probability 2**-64 (exact duplicates are found by equal hashes: ~1e-8 false matches at 500k x 150k texts)."""
        if self._hashes is None:
            done = [text_hashes(self.apply(batch)) for _, batch in self.raw()]
            self._hashes = np.concatenate(done) if done else np.zeros(0, dtype=np.uint64)
        return self._hashes


def text_hashes(texts: pd.Series) -> np.ndarray:
    return pd.util.hash_array(texts.astype(object).to_numpy(), categorize=False)


class Texts:
    """The texts the search reads: rows (ascending ``positions``; ``None``: all) of one or more :class:`TextColumn`,
    one after the other. They are read batch by batch (:meth:`batches`) or by position (:meth:`take`), never held
    whole; a pandas Series is one column, all rows (:meth:`of`)."""

    def __init__(self, parts: list[tuple[TextColumn, np.ndarray | None]]) -> None:
        self.parts = [(c, np.arange(len(c)) if p is None else np.asarray(p, dtype=np.int64)) for c, p in parts]
        self.offsets = np.cumsum([0, *(len(p) for _, p in self.parts)])

    @classmethod
    def of(cls, texts: pd.Series | Texts) -> Texts:
        return texts if isinstance(texts, Texts) else cls([(TextColumn(texts), None)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __add__(self, other: Texts) -> Texts:
        return Texts(self.parts + other.parts)

    def subset(self, positions: np.ndarray) -> Texts:
        """The texts at ``positions`` (ascending) of these."""
        return Texts([(c, p[positions[lo:hi] - off]) for (c, p), off, lo, hi in self._split(positions)])

    def _split(self, positions: np.ndarray):
        cuts = np.searchsorted(positions, self.offsets)
        return [(part, self.offsets[i], cuts[i], cuts[i + 1]) for i, part in enumerate(self.parts)]

    def batches(self, size: int = BATCH) -> Iterator[pd.Series]:
        """The (transformed) texts in order, at most ``size`` at a time."""
        for column, positions in self.parts:
            if not len(positions):
                continue
            for start, batch in column.raw():
                lo, hi = np.searchsorted(positions, [start, start + len(batch)])
                for a in range(lo, hi, size):
                    yield column.apply(batch.iloc[positions[a : min(a + size, hi)] - start])

    def take(self, positions: np.ndarray) -> pd.Series:
        """The (transformed) texts at ``positions`` (ascending, distinct), one pass over each column."""
        out = [c.take(p[positions[lo:hi] - off]) for (c, p), off, lo, hi in self._split(positions) if hi > lo]
        return pd.concat(out, ignore_index=True) if out else pd.Series([], dtype=object)

    def hashes(self) -> np.ndarray:
        """:meth:`TextColumn.hashes` of these texts."""
        done = [c.hashes()[p] for c, p in self.parts]
        return np.concatenate(done) if done else np.zeros(0, dtype=np.uint64)


def _signatures(texts: Texts, s: LshSettings) -> Iterator[list]:
    import rensa

    for batch in texts.batches():
        out = []
        for t in batch:
            m = rensa.RMinHash(num_perm=s.num_perm, seed=s.seed)
            m.update(shingles(t, s.shingle))
            out.append(m)
        yield out


BandHashes = Callable[[Texts, LshSettings], np.ndarray]  # band_matrix, or its Ray Data twin


def candidates(
    reference: pd.Series | Texts, other: pd.Series | Texts, s: LshSettings, bands: BandHashes | None = None
) -> list[np.ndarray]:
    """Per ``other`` text, the positions of the reference texts that share an LSH band with it; ``bands`` computes
    the band hashes (:func:`band_matrix` here; ``pipelines.data.distributed.band_hashes_ray`` on a cluster)."""
    bands = bands or band_matrix
    return band_candidates(bands(Texts.of(reference), s), bands(Texts.of(other), s))


def band_matrix(texts: pd.Series | Texts, s: LshSettings) -> np.ndarray:
    """Per text, the ``s.bands`` 64-bit hashes of its MinHash signature's bands (:func:`band_hashes`), computed batch
    by batch: all the LSH keeps of a text is ``8 x bands`` bytes, never the whole signature nor an index object."""
    texts = Texts.of(texts)
    out = np.empty((len(texts), s.bands), dtype=np.uint64)
    start = 0
    for batch in _signatures(texts, s):
        signatures = np.array([m.digest() for m in batch], dtype=np.uint64).reshape(len(batch), s.num_perm)
        out[start : start + len(batch)] = band_hashes(signatures, s.bands)
        start += len(batch)
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
    with hashed columns: document frequencies are counted in batches, rows are vectorised on demand.

    ``needed``: the texts :meth:`rows` will vectorise (the candidates'); only their n-grams' document frequencies
    are counted and kept (a few MB), otherwise every column's (two 2**24-wide arrays, 128 MB). The IDF of an
    n-gram is the same either way; one the reference lacks is out of vocabulary (IDF 0)."""

    def __init__(self, reference: pd.Series | Texts, needed: list[pd.Series] | None = None) -> None:
        reference = Texts.of(reference)
        self.hv = HashingVectorizer(
            analyzer="char_wb", ngram_range=(3, 5), n_features=2**24, alternate_sign=False, norm=None,
            dtype=np.float32,
        )  # fmt: skip
        if needed is None:
            used = np.arange(self.hv.n_features, dtype=np.int32)
        else:
            chunks = (t.iloc[i : i + BATCH] for t in needed for i in range(0, len(t), BATCH))
            per_chunk = [np.unique(self.hv.transform(c).indices) for c in chunks]  # bounded transients
            used = np.unique(np.concatenate([np.zeros(0, np.int32), *per_chunk]))
        self.columns = np.append(used, np.int32(self.hv.n_features))  # sorted; a last one no n-gram has
        df = np.zeros(len(self.columns), dtype=np.int32)
        # n-gram extraction is the cost (pure Python in scikit-learn): batches are counted by joblib's workers
        # (``joblib.parallel_config(n_jobs=...)``, the stage's ``leakage.n_jobs``; 1: in this process)
        counted = Parallel(return_as="generator_unordered")(
            delayed(_document_frequencies)(self.hv, batch, self.columns) for batch in reference.batches()
        )
        for pos, counts in counted:
            df[pos] += counts
        seen = np.flatnonzero(df)
        self.idf = np.zeros(len(self.columns), dtype=np.float32)  # n-grams the reference lacks: out of vocabulary
        self.idf[seen] = np.log((1 + len(reference)) / (1 + df[seen])) + 1  # sklearn's smooth idf

    def rows(self, texts: pd.Series) -> sp.csr_matrix:
        x = self.hv.transform(texts).tocsr()
        pos, known = _find(self.columns, x.indices)
        idf = np.where(known, self.idf[pos], np.float32(0))
        x.data = (1 + np.log(x.data)) * idf  # sublinear tf x idf, column by column
        return normalize(x, copy=False)


def _find(columns: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``cols`` are in the sorted ``columns`` (whose last one no n-gram has), and which of them are there."""
    pos = np.searchsorted(columns, cols)
    return pos, columns[pos] == cols


def _document_frequencies(
    hv: HashingVectorizer, texts: pd.Series, columns: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per n-gram column of ``columns`` that ``texts`` have: its position there and how many of the texts have it."""
    cols, counts = np.unique(hv.transform(texts).indices, return_counts=True)  # one per (row, term)
    pos, known = _find(columns, cols)
    return pos[known], counts[known].astype(np.int32)


def near_duplicates(
    reference: pd.Series | Texts,
    other: pd.Series | Texts,
    threshold: float,
    s: LshSettings,
    bands: BandHashes | None = None,
) -> np.ndarray:
    """Boolean mask over ``other``: a reference text at cosine >= ``threshold`` exists (see the module doc);
    ``bands`` as in :func:`candidates` (where the per-text hashing runs: the mask is the same)."""
    if not len(other) or not len(reference):
        return np.zeros(len(other), dtype=bool)
    return verify(reference, other, candidates(reference, other, s, bands), threshold)


def verify(
    reference: pd.Series | Texts, other: pd.Series | Texts, cands: list[np.ndarray], threshold: float
) -> np.ndarray:
    """Boolean mask over ``other``: one of its candidate reference texts (``cands``, per ``other`` text) is at exact
    TF-IDF cosine >= ``threshold`` (step 3 of the module doc). Of the texts, only the candidates' are read again
    (one pass over each side): on ticket data a few percent of them (2,268 reference and 1,921 other texts of
    100k tickets), all of them only if every text shares a band with another."""
    reference, other = Texts.of(reference), Texts.of(other)
    found = np.zeros(len(other), dtype=bool)
    hit = np.array([i for i, c in enumerate(cands) if len(c)], dtype=np.int64)
    if not len(hit):
        return found
    queries = other.take(hit)
    wanted = np.unique(np.concatenate([cands[i] for i in hit]))
    refs = reference.take(wanted)
    tfidf = _Tfidf(reference, needed=[queries, refs])
    for start in range(0, len(hit), BATCH):
        rows = hit[start : start + BATCH]
        q = tfidf.rows(queries.iloc[start : start + BATCH])
        pairs_q = np.repeat(np.arange(len(rows)), [len(cands[i]) for i in rows])
        pairs_r = np.concatenate([cands[i] for i in rows])
        uniq, inv = np.unique(pairs_r, return_inverse=True)
        r = tfidf.rows(refs.iloc[np.searchsorted(wanted, uniq)])
        cos = np.asarray(q[pairs_q].multiply(r[inv]).sum(axis=1)).ravel()
        best = np.zeros(len(rows), dtype=np.float32)
        np.maximum.at(best, pairs_q, cos)
        found[rows] = best >= threshold - 1e-6  # float32 rounding of an exact threshold pair
    return found
