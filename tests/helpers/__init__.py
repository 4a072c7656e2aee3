"""Helpers shared by the test suite (a package: ``from tests.helpers.data import make_clean``)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
