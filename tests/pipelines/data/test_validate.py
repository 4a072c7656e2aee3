"""validate: the Great Expectations suite passes clean data and names each breached expectation."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from tests.helpers.data import CLASSES, make_clean, run_stage, write_params

from pipelines.config import ValidateConfig
from pipelines.data.quality import run_validation

CFG = ValidateConfig(expected_labels=list(CLASSES), min_class_count=50, max_duplicate_rate=0.1)


def _failed(outcome) -> set[tuple[str, str | None]]:
    return {(r["expectation"], r["column"]) for r in outcome.failures}


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return make_clean(300)


def test_clean_data_passes(df):
    outcome = run_validation(df, CFG)
    assert outcome.success and outcome.failures == []
    names = {r["expectation"] for r in outcome.results}
    assert {
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_not_match_regex",
        "expect_column_proportion_of_unique_values_to_be_between",
    } <= names
    assert len(outcome.results) >= 15


def test_empty_texts_fail(df):
    bad = df.copy()
    bad.loc[:9, "text"] = ["", " ", "\t"] * 3 + [""]
    outcome = run_validation(bad, CFG)
    assert not outcome.success
    assert ("expect_column_values_to_not_match_regex", "text") in _failed(outcome)
    assert "10 of 300 rows unexpected" in outcome.summary()


def test_labels_outside_the_expected_set_fail(df):
    bad = df.copy()
    bad.loc[:59, "label"] = "delta"
    outcome = run_validation(bad, CFG)
    assert _failed(outcome) == {("expect_column_values_to_be_in_set", "label")}
    assert "'delta'" in outcome.summary()


def test_an_expected_class_that_is_absent_fails(df):
    outcome = run_validation(df, CFG.model_copy(update={"expected_labels": [*CLASSES, "delta"]}))
    assert ("expect_column_distinct_values_to_contain_set", "label") in _failed(outcome)


def test_a_class_under_min_class_count_fails(df):
    bad = df[(df["label"] != "gamma") | (df.index < 60)]  # gamma: 100 -> about 20 rows
    outcome = run_validation(bad, CFG)
    assert _failed(outcome) == {("expect_column_values_to_be_between", "count")}
    failure = outcome.failures[0]
    assert failure["batch"] == "class_counts"
    assert run_validation(bad, CFG.model_copy(update={"min_class_count": 5})).success


def test_too_many_duplicate_texts_fail(df):
    bad = df.copy()
    bad.loc[:59, "text"] = bad.loc[60:119, "text"].to_numpy()  # 20% of rows repeat another row's text
    outcome = run_validation(bad, CFG)
    assert _failed(outcome) == {("expect_column_proportion_of_unique_values_to_be_between", "text")}
    assert run_validation(bad, CFG.model_copy(update={"max_duplicate_rate": 0.25})).success


def test_timestamps_out_of_range_fail(df):
    bad = df.copy()
    bad.loc[:2, "timestamp"] = pd.Timestamp("1970-01-01")
    outcome = run_validation(bad, CFG)
    assert _failed(outcome) == {("expect_column_values_to_be_between", "timestamp")}
    assert "3 of 300 rows unexpected" in outcome.summary()


def test_text_longer_than_the_bound_fails_beyond_mostly(df):
    bad = df.copy()
    bad.loc[:29, "text"] = "x" * 6000
    outcome = run_validation(bad, CFG.model_copy(update={"max_text_chars": 5000}))
    assert ("expect_column_value_lengths_to_be_between", "text") in _failed(outcome)


@pytest.mark.integration
@pytest.mark.slow  # two Great Expectations runs with Data Docs: ~25 s
def test_cli_fails_with_exit_3_and_writes_result_and_data_docs(tmp_path, df):
    data = tmp_path / "interim.parquet"
    bad = df.copy()
    bad.loc[:59, "label"] = "delta"
    bad.to_parquet(data)
    params = write_params(tmp_path / "params.yaml", validate={"expected_labels": list(CLASSES), "min_class_count": 10})
    out = tmp_path / "reports" / "validation"
    r = run_stage("validate", "--params", str(params), "--data", str(data), "--out-dir", str(out), cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: data validation failed")
    assert "expect_column_values_to_be_in_set on label: 60 of 300 rows unexpected" in r.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["success"] is False
    assert [x["expectation"] for x in result["results"] if not x["success"]] == ["expect_column_values_to_be_in_set"]
    index = out / "data_docs" / "index.html"
    assert index.is_file() and "<html" in index.read_text().lower()
    assert not list(tmp_path.glob(".staging-*"))

    df.to_parquet(data)
    r = run_stage("validate", "--params", str(params), "--data", str(data), "--out-dir", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "result.json").read_text())["success"] is True
