"""Generated ticket data, made once per session (20k rows take ~3 s; the 2k-row frames well under 1 s)."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.config import GenerateConfig
from pipelines.data.generator import generate_tickets

SMALL = GenerateConfig(n_rows=2000, n_customers=600)


@pytest.fixture(scope="session")
def base_tickets() -> pd.DataFrame:
    return generate_tickets(GenerateConfig())


@pytest.fixture(scope="session")
def drift_tickets() -> pd.DataFrame:
    return generate_tickets(GenerateConfig(), drift=True)


@pytest.fixture(scope="session")
def small_tickets() -> pd.DataFrame:
    """2,000 base-period tickets (the triage-truth tests)."""
    return generate_tickets(SMALL)


@pytest.fixture(scope="session")
def small_drift_tickets() -> pd.DataFrame:
    """2,000 drift-period tickets."""
    return generate_tickets(SMALL, drift=True)
