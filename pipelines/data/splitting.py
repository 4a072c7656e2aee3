"""Library of the ``split`` stage (its CLI is :mod:`pipelines.split`).

split: deterministic train / val / test.

* ``time``: oldest rows train, newest rows test (what production looks like: the model
  always predicts the future). Chosen by ``auto`` when a timestamp is mapped.
* ``group``: every group (e.g. a customer) lands on exactly one side, stratified by
  label where possible (scikit-learn's ``StratifiedGroupKFold``). ``auto`` picks it when
  a group id but no timestamp is mapped.
* ``stratified``: stratified random split, the fallback when neither exists.

The raw splits go to ``data/processed/split/``; the leakage stage audits them and
writes the model-ready ``data/processed/{train,val,test}.parquet``.
"""

from __future__ import annotations
from pathlib import Path
from typing import Annotated
import pandas as pd
import typer
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from pipelines.config import SplitConfig, load_params
from pipelines.errors import DataError, run_cli
from pipelines.io import atomic_outputs, read_parquet, write_json, write_parquet


SPLITS = ("train", "val", "test")


def choose_strategy(df: pd.DataFrame, cfg: SplitConfig) -> tuple[str, str]:
    """Return (strategy, reason)."""
    if cfg.strategy != "auto":
        needed = {"time": "timestamp", "group": "group"}.get(cfg.strategy)
        if needed and needed not in df:
            raise DataError(f"split.strategy is {cfg.strategy!r} but no {needed} column is mapped in data.columns")
        return cfg.strategy, f"split.strategy = {cfg.strategy}"
    if "timestamp" in df:
        return "time", "a timestamp column is mapped: newest rows are held out"
    if "group" in df:
        return "group", "a group column is mapped (no timestamp): each group stays on one side"
    return "stratified", "no timestamp and no group column: stratified random split"


def split_frame(df: pd.DataFrame, cfg: SplitConfig) -> tuple[dict[str, pd.DataFrame], dict]:
    """Pure stage function: one frame → three frames and a report of how it was split."""
    strategy, reason = choose_strategy(df, cfg)
    val_f, test_f = cfg.val_fraction, cfg.test_fraction
    n = len(df)
    if n < 10:
        raise DataError(f"only {n} rows after ingest: too few to split into train/val/test")
    if strategy == "time":
        ordered = df.sort_values(["timestamp", "id"], kind="stable").reset_index(drop=True)
        n_test, n_val = int(round(n * test_f)), int(round(n * val_f))
        parts = {"train": ordered.iloc[: n - n_val - n_test], "val": ordered.iloc[n - n_val - n_test: n - n_test],
                 "test": ordered.iloc[n - n_test:]}
    elif strategy == "group":
        parts = {}
        rest = df = df.reset_index(drop=True)
        # A row without a group id is its own group (not one shared "missing" group that lands on one side).
        groups = df["group"].astype(object).where(df["group"].notna(), [f"<row {i}>" for i in range(n)])
        for name, frac in (("test", test_f), ("val", val_f / (1 - test_f))):
            k = max(2, int(round(1 / frac)))
            n_groups = groups.loc[rest.index].nunique()
            if n_groups < k:
                raise DataError(f"split.strategy group: only {n_groups} groups left to split off {name} "
                                f"(needs at least {k}); map more groups, or set split.strategy: stratified")
            sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=cfg.seed)
            keep_idx, take_idx = next(sgkf.split(rest, rest["label"], groups=groups.loc[rest.index]))
            parts[name] = rest.iloc[take_idx]
            rest = rest.iloc[keep_idx]
        parts["train"] = rest
    else:
        counts = df["label"].value_counts()
        stratify = df["label"] if counts.min() >= 3 else None
        if stratify is None:
            reason += f" (not stratified: class {counts.idxmin()!r} has only {counts.min()} rows)"
        train_val, test = train_test_split(df, test_size=test_f, random_state=cfg.seed, stratify=stratify)
        strat2 = train_val["label"] if stratify is not None else None
        train, val = train_test_split(train_val, test_size=val_f / (1 - test_f), random_state=cfg.seed, stratify=strat2)
        parts = {"train": train, "val": val, "test": test}

    parts = {k: parts[k].reset_index(drop=True) for k in SPLITS}
    for name, part in parts.items():
        if part.empty:
            raise DataError(f"the {name} split is empty ({n} rows, strategy {strategy}); add data or change split fractions")
    report = {
        "strategy": strategy, "reason": reason, "rows": {k: int(len(v)) for k, v in parts.items()},
        "class_counts": {k: {c: int(x) for c, x in v["label"].value_counts().sort_index().items()} for k, v in parts.items()},
    }
    if "timestamp" in df:
        report["time_range"] = {k: [str(v["timestamp"].min()), str(v["timestamp"].max())] for k, v in parts.items()}
    return parts, report
