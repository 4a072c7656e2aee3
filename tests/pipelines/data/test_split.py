"""split: time, group and stratified strategies; deterministic; the report says which and why."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from tests.helpers.data import make_clean, run_stage, write_params

from pipelines.config import SplitConfig
from pipelines.data.splitting import choose_strategy, split_frame
from pipelines.errors import DataError


def _ids(parts):
    return {k: list(v["id"]) for k, v in parts.items()}


def test_time_split_holds_out_the_newest_rows(clean_df):
    shuffled = clean_df.sample(frac=1.0, random_state=1)
    parts, report = split_frame(shuffled, SplitConfig())
    assert report["strategy"] == "time" and "timestamp" in report["reason"]
    assert parts["train"]["timestamp"].max() < parts["val"]["timestamp"].min()
    assert parts["val"]["timestamp"].max() < parts["test"]["timestamp"].min()
    assert parts["test"]["timestamp"].max() == clean_df["timestamp"].max()
    assert report["rows"] == {"train": 420, "val": 90, "test": 90}
    assert sum(report["rows"].values()) == len(clean_df)
    assert report["time_range"]["test"][1] == str(clean_df["timestamp"].max())


def test_split_is_deterministic_and_independent_of_row_order(clean_df):
    for strategy in ("time", "group", "stratified"):
        a, _ = split_frame(clean_df, SplitConfig(strategy=strategy))
        b, _ = split_frame(clean_df, SplitConfig(strategy=strategy))
        assert _ids(a) == _ids(b), strategy
    c, _ = split_frame(clean_df.iloc[::-1], SplitConfig(strategy="time"))
    a, _ = split_frame(clean_df, SplitConfig(strategy="time"))
    assert _ids(a) == _ids(c)
    other_seed, _ = split_frame(clean_df, SplitConfig(strategy="stratified", seed=7))
    assert _ids(other_seed) != _ids(split_frame(clean_df, SplitConfig(strategy="stratified"))[0])


def test_group_split_keeps_every_group_on_one_side():
    df = make_clean(900).drop(columns="timestamp")
    df["group"] = pd.array([f"c{i % 97}" for i in range(len(df))], dtype="string")  # groups spread over the whole frame
    parts, report = split_frame(df, SplitConfig())
    assert report["strategy"] == "group" and "group" in report["reason"]
    sides = {k: set(v["group"]) for k, v in parts.items()}
    assert (
        not (sides["train"] & sides["val"])
        and not (sides["train"] & sides["test"])
        and not (sides["val"] & sides["test"])
    )
    assert sum(report["rows"].values()) == len(df)
    for name, frac in (("val", 0.15), ("test", 0.15)):
        assert abs(report["rows"][name] / len(df) - frac) < 0.06, report["rows"]


def test_group_split_spreads_rows_without_a_group():
    """Rows with no group id are not one giant group that lands on a single side."""
    df = make_clean(1000).drop(columns="timestamp")
    df["group"] = pd.array([f"c{i % 100}" if i % 2 else None for i in range(len(df))], dtype="string")
    parts, report = split_frame(df, SplitConfig(strategy="group"))
    for name in ("train", "val", "test"):
        assert parts[name]["group"].isna().any(), name
    for name in ("val", "test"):
        assert report["rows"][name] / len(df) < 0.25, report["rows"]
    named = {k: set(v["group"].dropna()) for k, v in parts.items()}
    assert not (named["train"] & named["test"]) and not (named["train"] & named["val"])


def test_group_split_with_too_few_groups_is_refused_clearly():
    df = make_clean(60).drop(columns="timestamp")
    df["group"] = pd.array([f"c{i % 4}" for i in range(len(df))], dtype="string")
    with pytest.raises(DataError, match=r"4 groups"):
        split_frame(df, SplitConfig(strategy="group"))


def test_stratified_fallback_without_timestamp_or_group(clean_df):
    df = clean_df.drop(columns=["timestamp", "group"])
    parts, report = split_frame(df, SplitConfig())
    assert report["strategy"] == "stratified"
    assert report["reason"] == "no timestamp and no group column: stratified random split"
    assert "time_range" not in report
    whole = df["label"].value_counts(normalize=True)
    for name, part in parts.items():
        mix = part["label"].value_counts(normalize=True)
        assert (mix - whole).abs().max() < 0.02, name
    assert sorted(pd.concat(parts.values())["id"]) == sorted(df["id"])


def test_stratified_report_says_when_a_class_is_too_small_to_stratify(clean_df):
    df = clean_df.drop(columns=["timestamp", "group"]).copy()
    df.loc[df.index[:2], "label"] = "tiny"
    _, report = split_frame(df, SplitConfig())
    assert "not stratified: class 'tiny' has only 2 rows" in report["reason"]


@pytest.mark.parametrize("strategy, drop, needed", [("time", "timestamp", "timestamp"), ("group", "group", "group")])
def test_explicit_strategy_without_its_column_is_refused(clean_df, strategy, drop, needed):
    with pytest.raises(DataError, match=rf"split.strategy is '{strategy}' but no {needed} column is mapped"):
        choose_strategy(clean_df.drop(columns=drop), SplitConfig(strategy=strategy))


def test_explicit_strategy_is_reported(clean_df):
    _, report = split_frame(clean_df, SplitConfig(strategy="stratified"))
    assert report["strategy"] == "stratified" and report["reason"] == "split.strategy = stratified"


def test_refuses_too_little_data(clean_df):
    with pytest.raises(DataError, match="only 5 rows after ingest: too few to split"):
        split_frame(clean_df.iloc[:5], SplitConfig())


@pytest.mark.integration
def test_cli_writes_three_splits_and_the_report(tmp_path, clean_df):
    data = tmp_path / "interim.parquet"
    clean_df.drop(columns=["timestamp", "group"]).to_parquet(data)
    params = write_params(tmp_path / "params.yaml")
    r = run_stage(
        "split",
        "--params",
        str(params),
        "--data",
        str(data),
        "--out-dir",
        str(tmp_path / "split"),
        "--report",
        str(tmp_path / "split.json"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "split.json").read_text())
    assert rep["strategy"] == "stratified" and "no timestamp" in rep["reason"]
    sizes = {k: len(pd.read_parquet(tmp_path / "split" / f"{k}.parquet")) for k in ("train", "val", "test")}
    assert sizes == rep["rows"] and sum(sizes.values()) == len(clean_df)
    assert "stratified" in r.stdout
