"""Near duplicates by MinHash LSH + exact cosine agree with the exhaustive search they replaced."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from pipelines.config import GenerateConfig, LeakageConfig
from pipelines.data.generator import generate_tickets
from pipelines.data.leakage_checks import cross_duplicates, normalise_for_dedup
from pipelines.data.near_duplicates import LshSettings, TextColumn, Texts, _Tfidf, near_duplicates, text_hashes
from tests.helpers.oracles import nearest_cosine

THRESHOLD = 0.9


@pytest.fixture(scope="module")
def tickets() -> tuple[pd.Series, pd.Series]:
    """Built-in tickets (their planted exact and near duplicates included), 70% reference, 30% other."""
    df = generate_tickets(GenerateConfig(n_rows=4000, seed=3))
    text = normalise_for_dedup(df["subject"].astype(str) + " " + df["body"].astype(str))
    order = np.random.default_rng(0).permutation(len(text))
    k = int(0.7 * len(text))
    return text.iloc[order[:k]].reset_index(drop=True), text.iloc[order[k:]].reset_index(drop=True)


def test_lsh_finds_what_the_exhaustive_search_finds_on_the_built_in_tickets(tickets) -> None:
    ref, other = tickets
    other = other[~other.isin(set(ref))].reset_index(drop=True)  # exact duplicates are found by equality
    best = nearest_cosine(ref, other)
    truth = best >= THRESHOLD
    clear = best >= THRESHOLD + 0.03
    assert clear.sum() >= 10, "the generator should plant near duplicates across the split"
    found = near_duplicates(ref, other, THRESHOLD, LshSettings())
    assert not (found & ~(best >= THRESHOLD - 1e-4)).any(), "everything reported is a near duplicate"
    assert found[clear].all(), f"missed at a clear margin: {other[clear & ~found].tolist()[:3]}"
    assert found[truth].mean() >= 0.95


def test_planted_edits_are_found_and_unrelated_texts_are_not() -> None:
    ref = pd.Series(
        [
            "my invoice for march shows a double charge of 49 euros on the premium plan please refund it",
            "the mobile app crashes every time i open the settings page after the last update on android",
            "i cannot log in since yesterday the password reset mail never arrives in my inbox at all",
        ]
        * 1
    )
    other = pd.Series(
        [
            "my invoice for march shows a double charge of 49 euros on the premium plan please refund",  # cut
            "the mobile app crashes every time i open the settings page after the latest update on android",
            "where is my parcel the tracking page has not moved for a week and support does not answer",
            "i cannot log in since yesterday",  # a fragment: similar words, not a copy
        ]
    )
    found = near_duplicates(ref, other, THRESHOLD, LshSettings())
    oracle = nearest_cosine(ref, other) >= THRESHOLD
    assert found.tolist() == oracle.tolist() == [True, True, False, False]


def test_hashed_tfidf_cosine_equals_sklearns_up_to_hash_collisions(tickets) -> None:
    ref, other = tickets
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
    r, o = vec.fit_transform(ref), vec.transform(other[:50])
    mine = _Tfidf(ref)
    hr, ho = mine.rows(ref), mine.rows(other[:50])
    want = (o @ r[:200].T).toarray()
    got = (ho @ hr[:200].T).toarray()
    np.testing.assert_allclose(got, want, atol=0.005)
    assert np.abs(got - want).mean() < 1e-4


def test_cross_duplicates_separates_exact_from_near() -> None:
    ref = pd.Series(["Refund my order 1234 please, it arrived broken and the box was open"] * 2)
    other = pd.Series(["refund my order 1234 please it arrived broken and the box was open!", "hello", "x"])
    other[2] = "Refund my order 1234 please, it arrived broken and the box was opened"
    exact, near = cross_duplicates(ref, other, THRESHOLD)
    assert exact.tolist() == [True, False, False] and near.tolist() == [False, False, True]


def test_bands_must_divide_the_signature() -> None:
    with pytest.raises(ValidationError, match="minhash_num_perm .*multiple of minhash_bands"):
        LeakageConfig(minhash_num_perm=128, minhash_bands=10)


def test_texts_read_in_batches_and_by_position_are_the_rows_they_name(tickets) -> None:
    """:class:`Texts` over a Series and over a batch reader (how the stage reads a Parquet column) give the same
    texts, hashes and search results as the Series themselves, whatever the batch size."""
    ref, other = tickets
    reader = TextColumn(
        lambda: (other.iloc[i : i + 37] for i in range(0, len(other), 37)), len(other), lambda s: s.str.upper()
    )
    rows = np.arange(3, len(other), 2)
    both = Texts([(TextColumn(ref), np.arange(0, len(ref), 3))]) + Texts([(reader, rows)])
    want = pd.concat([ref.iloc[::3], other.iloc[rows].str.upper()], ignore_index=True)
    assert len(both) == len(want)
    assert pd.concat(list(both.batches(size=50)), ignore_index=True).tolist() == want.tolist()
    pick = np.array([0, 5, len(ref[::3]) - 1, len(ref[::3]), len(want) - 1])
    assert both.take(pick).tolist() == want.iloc[pick].tolist()
    assert both.subset(pick).take(np.arange(len(pick))).tolist() == want.iloc[pick].tolist()
    np.testing.assert_array_equal(both.hashes(), text_hashes(want))
    lowered = Texts(
        [(TextColumn(lambda: (other.iloc[i : i + 37] for i in range(0, len(other), 37)), len(other)), None)]
    )
    s = LshSettings()
    np.testing.assert_array_equal(
        near_duplicates(ref, lowered, THRESHOLD, s), near_duplicates(ref, other, THRESHOLD, s)
    )


def test_idf_of_the_candidates_ngrams_only_is_the_full_idf(tickets) -> None:
    ref, other = tickets
    full, needed = _Tfidf(ref), _Tfidf(ref, needed=[other[:40], ref[:40]])
    for texts in (other[:40], ref[:40]):
        a, b = full.rows(texts), needed.rows(texts)
        assert (a != b).nnz == 0
    assert len(needed.columns) < 10**6 < len(full.columns)


def test_document_frequencies_counted_by_parallel_workers_are_the_same(tickets) -> None:
    """The stage counts n-grams in joblib's worker processes (leakage.n_jobs): batches arrive in any order and the
    IDF must not depend on it."""
    from joblib import parallel_config

    ref, other = tickets
    assert len(ref) > 2_000  # more than one batch, so the workers share the counting
    needed = [other[:100], ref[:100]]
    alone = _Tfidf(ref, needed=needed)
    with parallel_config(n_jobs=2):
        shared = _Tfidf(ref, needed=needed)
    np.testing.assert_array_equal(shared.columns, alone.columns)
    np.testing.assert_array_equal(shared.idf, alone.idf)
    assert (shared.idf > 0).sum() > 1000
