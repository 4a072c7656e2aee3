"""Fixtures for the unit tests: small, clean, canonical-schema data in memory."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.helpers.data import make_clean, time_parts


@pytest.fixture
def clean_df() -> pd.DataFrame:
    return make_clean()


@pytest.fixture
def clean_parts() -> dict[str, pd.DataFrame]:
    return time_parts(make_clean())
