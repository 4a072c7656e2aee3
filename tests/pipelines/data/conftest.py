"""Generated ticket data, made once per session (20k rows take ~6 s)."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.config import GenerateConfig
from pipelines.data.generator import generate_tickets


@pytest.fixture(scope="session")
def base_tickets() -> pd.DataFrame:
    return generate_tickets(GenerateConfig())


@pytest.fixture(scope="session")
def drift_tickets() -> pd.DataFrame:
    return generate_tickets(GenerateConfig(), drift=True)
