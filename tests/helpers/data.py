"""Helpers shared by the data-layer tests: clean canonical frames, params files, stage CLIs.

``from tests.helpers.data import make_clean, run_stage``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tests.helpers import ROOT, SHARED_DATASETS  # noqa: F401 - re-exported for the data tests

CLASSES = ("alpha", "beta", "gamma")


def _vocab(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, size=int(rng.integers(4, 9)))) for _ in range(n)]


def make_clean(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Canonical frame (as ingest writes it) with no leakage: distinct random texts with a class
    signal, increasing timestamps, groups of 3 consecutive rows, and weak legit columns."""
    rng = np.random.default_rng(seed)
    vocab = _vocab(rng, 3000)
    cue = {c: _vocab(rng, 15) for c in CLASSES}
    labels = [CLASSES[i % len(CLASSES)] for i in rng.permutation(n)]
    texts = [" ".join([*rng.choice(cue[lab], 3), *rng.choice(vocab, 12)]) for lab in labels]
    return pd.DataFrame(
        {
            "id": pd.array([f"r{i:05d}" for i in range(n)], dtype="string"),
            "text": pd.array(texts, dtype="string"),
            "label": pd.array(labels, dtype="string"),
            "timestamp": pd.date_range("2025-01-01", periods=n, freq="h").astype("datetime64[ns]"),
            "group": pd.array([f"g{i // 3:04d}" for i in range(n)], dtype="string"),
            "channel": pd.array(rng.choice(["email", "web_form", "chat", "phone"], n), dtype="string"),
            "customer_tier": pd.array(rng.choice(["free", "pro", "enterprise"], n), dtype="string"),
            "attachment_count": rng.poisson(0.4, n).astype("int64"),
        }
    )


def time_parts(df: pd.DataFrame, val: float = 0.15, test: float = 0.15) -> dict[str, pd.DataFrame]:
    """Train / val / test by time, cut on multiples of 3 so the 3-row groups never straddle a cut."""
    n = len(df)
    a = int(n * (1 - val - test)) // 3 * 3
    b = int(n * (1 - test)) // 3 * 3
    df = df.sort_values("timestamp").reset_index(drop=True)
    return {
        "train": df.iloc[:a].reset_index(drop=True),
        "val": df.iloc[a:b].reset_index(drop=True),
        "test": df.iloc[b:].reset_index(drop=True),
    }


def write_params(path: Path, **sections: dict) -> Path:
    """The repo's params.yaml with some sections' keys overridden (section -> {key: value})."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in sections.items():
        raw.setdefault(section, {})
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(raw[section].get(key), dict):
                raw[section][key] = {**raw[section][key], **value}
            else:
                raw[section][key] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_stage(stage: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m pipelines.<stage> ARGS`` in ``cwd`` with the repo importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", f"pipelines.{stage}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_ticket_splits(directory: Path, n_rows: int = 400, seed: int = 3) -> Path:
    """Generated tickets as model-ready train/val/test Parquet (60/20/20 by row order) in ``directory``:
    the tiny data the training stages' tests run on."""
    from pipelines.config import GenerateConfig
    from pipelines.data.generator import generate_tickets

    df = generate_tickets(GenerateConfig(n_rows=n_rows, n_customers=max(10, n_rows // 4), seed=seed))
    df = pd.DataFrame({"id": df["ticket_id"], "text": df["subject"] + "\n" + df["body"], "label": df["category"]})
    df = df[df["text"].str.strip() != ""]
    a, b = int(0.6 * n_rows), int(0.8 * n_rows)
    df.iloc[:a].to_parquet(directory / "train.parquet")
    df.iloc[a:b].to_parquet(directory / "val.parquet")
    df.iloc[b:].to_parquet(directory / "test.parquet")
    return directory
