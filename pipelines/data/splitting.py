"""Library of the ``split`` stage (its CLI is :mod:`pipelines.split`).

split: deterministic train / val / test.

* ``given``: the data's own splits (``data.split_paths`` or ``data.columns.split``; ingest carries them in
  the ``split`` column), kept exactly as given, rows in the order read. Chosen by ``auto`` whenever the data
  has them, so a benchmark is scored on its own test file. A data set without a val split gets one from
  its train rows (``split.val_fraction`` of them, by time, group or stratified as below); test is never
  touched. The leakage stage still audits given splits (duplicates, classes missing from train) but only
  reports time order and group overlap, which the split stage did not choose.
* ``time``: oldest rows train, newest rows test (what production looks like: the model
  always predicts the future). Chosen by ``auto`` when a timestamp is mapped.
* ``group``: every group (e.g. a customer) lands on exactly one side, stratified by
  label where possible (scikit-learn's ``StratifiedGroupKFold``). ``auto`` picks it when
  a group id but no timestamp is mapped.
* ``stratified``: stratified random split, the fallback when neither exists.

An explicit ``time``/``group``/``stratified`` re-splits the union and ignores given splits (the report says
so). The raw splits go to ``data/processed/split/`` (without the ``split`` column); the leakage stage audits
them and writes the model-ready ``data/processed/{train,val,test}.parquet``.

Feedback rows (the labelled production snapshots of ``data.snapshots_dir``, whose labels whoever can call
``POST /feedback`` chose) never enter test, the split the gate scores: the strategy splits the other rows
exactly as it would without them (so test is the same whatever feedback arrived), then each feedback row
joins train, except under ``time`` where one newer than the oldest val/test row joins val (in train it
would put training data after evaluation data, which the leakage stage blocks); the report counts them
(``feedback_rows``).

Memory: every strategy needs every row (time order, whole groups, class strata), but only of the
:data:`KEY_COLUMNS`; the stage splits those (:func:`split_rows`) and takes the texts and other columns of each
split by position from the input's Arrow buffers (compact, no Python object per text), one split at a time.
No check here works on a sample.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from pipelines.config import SplitConfig
from pipelines.errors import DataError

SPLITS = ("train", "val", "test")
# every column a strategy, the feedback rule or the report reads; the texts and the source's other columns are not
KEY_COLUMNS = ("id", "label", "timestamp", "group", "split")
_ROW = "__row__"  # a row's position in the stage's input, carried through split_frame by split_rows


def choose_strategy(df: pd.DataFrame, cfg: SplitConfig) -> tuple[str, str]:
    """Return (strategy, reason)."""
    if cfg.strategy != "auto":
        needed = {"given": "split", "time": "timestamp", "group": "group"}.get(cfg.strategy)
        if needed == "split" and needed not in df:
            raise DataError(
                "split.strategy is 'given' but the data gives no splits: set data.split_paths or data.columns.split"
            )
        if needed and needed not in df:
            raise DataError(f"split.strategy is {cfg.strategy!r} but no {needed} column is mapped in data.columns")
        reason = f"split.strategy = {cfg.strategy}"
        if "split" in df and cfg.strategy != "given":
            reason += " (the data's own splits are ignored: the union is re-split)"
        return cfg.strategy, reason
    if "split" in df:
        return "given", "the data gives its own splits (data.split_paths or data.columns.split): kept as given"
    if "timestamp" in df:
        return "time", "a timestamp column is mapped: newest rows are held out"
    if "group" in df:
        return "group", "a group column is mapped (no timestamp): each group stays on one side"
    return "stratified", "no timestamp and no group column: stratified random split"


def _row_groups(df: pd.DataFrame) -> pd.Series:
    """A row without a group id is its own group (not one shared "missing" group that lands on one side)."""
    return df["group"].astype(object).where(df["group"].notna(), [f"<row {i}>" for i in range(len(df))])


def _group_take(rest: pd.DataFrame, groups: pd.Series, frac: float, name: str, seed: int) -> tuple:
    """(kept, taken): about ``frac`` of ``rest``'s groups taken whole, stratified by label."""
    k = max(2, int(round(1 / frac)))
    n_groups = groups.loc[rest.index].nunique()
    if n_groups < k:
        raise DataError(
            f"split.strategy group: only {n_groups} groups left to split off {name} "
            f"(needs at least {k}); map more groups, or set split.strategy: stratified"
        )
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    keep_idx, take_idx = next(sgkf.split(rest, rest["label"], groups=groups.loc[rest.index]))
    return rest.iloc[keep_idx], rest.iloc[take_idx]


def _val_from_train(train: pd.DataFrame, cfg: SplitConfig) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """A val split held out of the given train rows: (train, val, how)."""
    frac = cfg.val_fraction
    if "timestamp" in train:
        ordered = train.sort_values(["timestamp", "id"], kind="stable")
        n_val = max(1, int(round(len(train) * frac)))
        return ordered.iloc[:-n_val], ordered.iloc[-n_val:], f"the newest {frac:.0%} of train"
    if "group" in train:
        train = train.reset_index(drop=True)
        kept, val = _group_take(train, _row_groups(train), frac, "val", cfg.seed)
        return kept, val, f"about {frac:.0%} of train's groups"
    try:
        kept, val = train_test_split(train, test_size=frac, random_state=cfg.seed, stratify=train["label"])
        return kept, val, f"{frac:.0%} of train, stratified"
    except ValueError:  # a class with a single row, or more classes than val rows
        kept, val = train_test_split(train, test_size=frac, random_state=cfg.seed)
        return kept, val, f"{frac:.0%} of train, at random (too few rows per class to stratify)"


def _given(df: pd.DataFrame, cfg: SplitConfig, reason: str) -> tuple[dict[str, pd.DataFrame], str]:
    parts = {k: df[df["split"] == k] for k in SPLITS}
    for name in ("train", "test"):
        if parts[name].empty:
            raise DataError(f"the data gives no {name} rows (its splits: {sorted(df['split'].dropna().unique())})")
    if parts["val"].empty:
        parts["train"], parts["val"], how = _val_from_train(parts["train"], cfg)
        reason += f"; no val given: val is {how} (split.val_fraction)"
    return parts, reason


def _split_trusted(df: pd.DataFrame, cfg: SplitConfig, strategy: str, reason: str) -> tuple[dict, str]:
    """The strategy's three parts of ``df`` (rows without feedback)."""
    val_f, test_f = cfg.val_fraction, cfg.test_fraction
    n = len(df)
    if strategy == "given":
        return _given(df, cfg, reason)
    if strategy == "time":
        ordered = df.sort_values(["timestamp", "id"], kind="stable").reset_index(drop=True)
        n_test, n_val = int(round(n * test_f)), int(round(n * val_f))
        parts = {
            "train": ordered.iloc[: n - n_val - n_test],
            "val": ordered.iloc[n - n_val - n_test : n - n_test],
            "test": ordered.iloc[n - n_test :],
        }
        return parts, reason
    if strategy == "group":
        parts = {}
        rest = df = df.reset_index(drop=True)
        groups = _row_groups(df)
        for name, frac in (("test", test_f), ("val", val_f / (1 - test_f))):
            rest, parts[name] = _group_take(rest, groups, frac, name, cfg.seed)
        parts["train"] = rest
        return parts, reason
    counts = df["label"].value_counts()
    stratify = df["label"] if counts.min() >= 3 else None
    if stratify is None:
        reason += f" (not stratified: class {counts.idxmin()!r} has only {counts.min()} rows)"
    train_val, test = train_test_split(df, test_size=test_f, random_state=cfg.seed, stratify=stratify)
    strat2 = train_val["label"] if stratify is not None else None
    train, val = train_test_split(train_val, test_size=val_f / (1 - test_f), random_state=cfg.seed, stratify=strat2)
    return {"train": train, "val": val, "test": test}, reason


def _place_feedback(parts: dict, feedback: pd.DataFrame, strategy: str) -> tuple[dict, dict[str, int]]:
    """Feedback rows into train, or (``time``: newer than the oldest val/test row, or undated) into val."""
    to_val = pd.Series(False, index=feedback.index)
    if strategy == "time" and len(feedback):
        oldest_eval = pd.concat([parts["val"]["timestamp"], parts["test"]["timestamp"]]).min()
        to_val = ~(feedback["timestamp"] <= oldest_eval).fillna(False).astype(bool)
    placed = {"train": feedback[~to_val], "val": feedback[to_val]}
    for name, rows in placed.items():
        if len(rows):
            parts[name] = pd.concat([parts[name], rows])
    return parts, {"train": int(len(placed["train"])), "val": int(len(placed["val"])), "test": 0}


def split_rows(
    keys: pd.DataFrame, cfg: SplitConfig, feedback_ids: Collection[str] = ()
) -> tuple[dict[str, np.ndarray], dict]:
    """:func:`split_frame` of the :data:`KEY_COLUMNS` alone: each split's rows as positions in ``keys`` (in the
    order :func:`split_frame` puts them), and the same report. The stage takes every other column by these
    positions from compact Arrow buffers, so the texts never become a pandas frame of the whole data."""
    keys = keys[[c for c in KEY_COLUMNS if c in keys]].reset_index(drop=True)
    parts, report = split_frame(keys.assign(**{_ROW: np.arange(len(keys))}), cfg, feedback_ids)
    return {name: part[_ROW].to_numpy() for name, part in parts.items()}, report


def split_frame(
    df: pd.DataFrame, cfg: SplitConfig, feedback_ids: Collection[str] = ()
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Pure stage function: one frame → three frames and a report of how it was split.

    Rows whose ``id`` is in ``feedback_ids`` (:func:`pipelines.data.snapshots.used_ids`) are kept out of test."""
    strategy, reason = choose_strategy(df, cfg)
    is_feedback = pd.Series(False, index=df.index)
    if len(feedback_ids) and "id" in df:
        is_feedback = df["id"].astype("string").isin(set(feedback_ids)).fillna(False).astype(bool)
    feedback, trusted = df[is_feedback], df[~is_feedback]
    n = len(trusted)
    if n < 10:
        extra = f" besides {len(feedback)} feedback row(s), which never enter test" if len(feedback) else ""
        raise DataError(f"only {n} rows after ingest{extra}: too few to split into train/val/test")
    parts, reason = _split_trusted(trusted, cfg, strategy, reason)
    parts, placed = _place_feedback(parts, feedback, strategy)
    if len(feedback):
        reason += (
            f"; {len(feedback)} feedback row(s) (data.snapshots_dir) kept out of test: "
            f"{placed['train']} in train, {placed['val']} in val"
        )
    parts = {k: parts[k].drop(columns="split", errors="ignore").reset_index(drop=True) for k in SPLITS}
    for name, part in parts.items():
        if part.empty:
            raise DataError(
                f"the {name} split is empty ({n} rows, strategy {strategy}); add data or change split fractions"
            )
    report = {
        "strategy": strategy,
        "reason": reason,
        "rows": {k: int(len(v)) for k, v in parts.items()},
        "feedback_rows": placed,
        "class_counts": {
            k: {c: int(x) for c, x in v["label"].value_counts().sort_index().items()} for k, v in parts.items()
        },
    }
    if strategy == "given":
        given = df["split"].value_counts()
        report["given_rows"] = {k: int(given.get(k, 0)) for k in SPLITS}
    if "timestamp" in df:
        report["time_range"] = {k: [str(v["timestamp"].min()), str(v["timestamp"].max())] for k, v in parts.items()}
    return parts, report
