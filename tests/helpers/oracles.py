"""Exhaustive reference implementations the pipeline's fast paths are checked against (never used by the
pipeline itself: they cost the product of their inputs' sizes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.neighbors import NearestNeighbors


def nearest_cosine(reference: pd.Series, other: pd.Series) -> np.ndarray:
    """Per ``other`` text, its highest cosine similarity to any ``reference`` text over character 3-5-gram
    TF-IDF fitted on ``reference`` (the near-duplicate definition), by brute force: every pair is compared."""
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=1, sublinear_tf=True, dtype=np.float32)
    ref_x = vec.fit_transform(reference)
    dist, _ = (
        NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(ref_x).kneighbors(vec.transform(other))
    )
    return 1.0 - dist[:, 0]
