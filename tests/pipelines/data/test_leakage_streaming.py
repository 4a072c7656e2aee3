"""The leakage stage reads its splits by column and in batches (files larger than memory) and finds what the
in-memory audit finds: the same report, the same model-ready frames, whatever the batch sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pipelines.data.leakage_checks as lc
import pipelines.data.near_duplicates as nd
import pipelines.io as io
from pipelines.config import LeakageConfig
from pipelines.data.leakage_checks import Splits, audit, audit_splits
from pipelines.io import copy_rows
from tests.helpers.data import make_clean, time_parts, write_params

FEEDBACK = {"fb-0", "fb-1", "fb-2"}


@pytest.fixture(scope="module")
def planted() -> dict[str, pd.DataFrame]:
    """Clean time splits with every finding planted: exact and near duplicates across each pair of splits,
    feedback rows in train that copy test texts, a leaky column, a post-outcome date, label-dependent
    missingness, a target column, an old test row, a shared customer, and an object column with gaps (its dtype
    must survive the copy)."""
    parts = time_parts(make_clean(n=2400, seed=5))
    rng = np.random.default_rng(0)
    teams = {"alpha": "Finance Ops", "beta": "Logistics", "gamma": "Identity Team"}
    for v in parts.values():
        v["resolved_by_team"] = pd.array(
            [teams[x] if rng.random() < 0.95 else "Other" for x in v["label"]], dtype="string"
        )
        v["resolved_at"] = v["timestamp"] + pd.to_timedelta(rng.gamma(2.0, 12.0, len(v)), unit="h")
        v["discount"] = np.where(v["label"] == "beta", np.nan, rng.integers(0, 30, len(v)).astype(float))
        v["priority"] = pd.array(rng.choice(["low", "high", None], len(v)), dtype="string")
        v["note"] = rng.choice(["call back", None, "vip"], len(v)).astype(object)
    train, val, test = parts["train"], parts["val"], parts["test"]
    for i in range(8):  # exact: case and punctuation only
        val.loc[i, "text"] = train["text"].iloc[10 * i].upper() + " !"
        test.loc[i, "text"] = train["text"].iloc[10 * i + 5] + "."
        test.loc[20 + i, "text"] = val["text"].iloc[50 + i].title()
    for i in range(6):  # near: small edits
        val.loc[100 + i, "text"] = "Following up: " + train["text"].iloc[300 + 7 * i]
        test.loc[100 + i, "text"] = train["text"].iloc[400 + 7 * i] + " thanks again"
        test.loc[150 + i, "text"] = val["text"].iloc[200 + i][:-2]
    test.loc[300, "timestamp"] = train["timestamp"].iloc[0]  # older than train
    val.loc[300:302, "group"] = train["group"].iloc[0]  # a customer on both sides
    copies = test.iloc[[30, 31, 32]].assign(id=sorted(FEEDBACK), timestamp=train["timestamp"].iloc[0])
    copies.loc[copies.index[2], "text"] = copies["text"].iloc[2] + " please"
    parts["train"] = pd.concat([train, copies], ignore_index=True)
    return parts


@pytest.fixture
def files(tmp_path, planted) -> dict[str, Path]:
    d = tmp_path / "split"
    d.mkdir()
    for k, v in planted.items():
        v.to_parquet(d / f"{k}.parquet")
    return {k: d / f"{k}.parquet" for k in planted}


CFG = LeakageConfig(time_order_action="report", column_check_max_rows=1000)


def _clean_from_files(files: dict[str, Path], keep: dict[str, np.ndarray], dropped: list[str], out: Path):
    """What the stage writes: the kept rows without the dropped columns, copied batch by batch."""
    out.mkdir(exist_ok=True)
    frames = {}
    for k, path in files.items():
        columns = [c for c in io.parquet_columns(path) if c not in dropped]
        copy_rows(path, keep[k], out / f"{k}.parquet", columns, batch_rows=100)
        frames[k] = pd.read_parquet(out / f"{k}.parquet")
    return frames


def test_the_planted_findings_are_all_there(planted) -> None:
    """The comparison below is not vacuous: the in-memory audit finds every planted case."""
    _, report = audit(planted, CFG, feedback_ids=FEEDBACK)
    checks = {f["check"] for f in report["findings"]}
    assert {
        "leaky_column",
        "post_outcome_column",
        "missingness_predicts_label",
        "cross_split_exact_duplicates",
        "cross_split_near_duplicates",
        "feedback_copies_test",
        "eval_older_than_train",
        "group_overlap",
    } <= checks
    assert {tuple(f["splits"]) for f in report["findings"] if f["check"] == "cross_split_near_duplicates"} == {
        ("train", "val"),
        ("train", "test"),
        ("val", "test"),
    }
    assert report["counts"]["removed_feedback_rows"] == 3 and report["counts"]["removed_eval_rows"] >= 36
    leaky = [f for f in report["findings"] if f["check"] == "leaky_column"]
    assert "stratified sample of" in leaky[0]["detail"]  # (a) on a sample: its rows are read by position


def test_files_read_in_batches_give_the_in_memory_report_and_frames(planted, files, tmp_path) -> None:
    clean, report = audit(planted, CFG, feedback_ids=FEEDBACK)
    keep, streamed = audit_splits(Splits(files), CFG, feedback_ids=FEEDBACK)
    assert streamed == report
    written = _clean_from_files(files, keep, streamed["dropped_columns"], tmp_path / "out")
    for k in clean:
        pd.testing.assert_frame_equal(written[k], clean[k].reset_index(drop=True))
    assert written["train"]["note"].dtype == object and written["val"]["priority"].dtype == "string"


def test_small_batches_give_the_one_batch_result(files, monkeypatch) -> None:
    one_batch = audit_splits(Splits(files), CFG, feedback_ids=FEEDBACK)
    monkeypatch.setattr(lc, "BATCH_ROWS", 97)  # several batches per split, cut anywhere
    monkeypatch.setattr(nd, "BATCH", 13)
    keep, report = audit_splits(Splits(files), CFG, feedback_ids=FEEDBACK)
    assert report == one_batch[1]
    for k in keep:
        np.testing.assert_array_equal(keep[k], one_batch[0][k])


def test_the_stage_never_holds_the_text_column_whole(files, monkeypatch) -> None:
    """Every read of the splits is by column projection or bounded batches: whole-file reads fail here, the
    key columns and the sample are read without ``text``, and no frame of texts read or normalised exceeds a
    batch (the near-duplicate search's second read, of its candidates only, is smaller here)."""
    batch = 64
    monkeypatch.setattr(lc, "BATCH_ROWS", batch)
    seen: list[tuple[str, int]] = []

    def refuse(*args, **kwargs):
        raise AssertionError("a whole-file read")

    def spy_batches(path, columns=None, batch_rows=50_000):
        for frame in io.read_batches(path, columns, batch_rows):
            seen.append(("batch", len(frame)))
            yield frame

    def spy_compact(path, columns):
        assert "text" not in columns
        return io.read_compact(path, columns)

    def spy_rows(path, positions, columns=None, batch_rows=50_000):
        assert columns is not None and "text" not in columns
        return io.read_rows(path, positions, columns, batch_rows)

    def spy_normalise(texts):
        seen.append(("normalise", len(texts)))
        return normalise(texts)

    normalise = lc.normalise_for_dedup
    monkeypatch.setattr(pd, "read_parquet", refuse)
    monkeypatch.setattr(lc, "read_batches", spy_batches)
    monkeypatch.setattr(lc, "read_compact", spy_compact)
    monkeypatch.setattr(lc, "read_rows", spy_rows)
    monkeypatch.setattr(lc, "normalise_for_dedup", spy_normalise)
    _, report = audit_splits(Splits(files), CFG, feedback_ids=FEEDBACK)
    assert report["counts"]["exact_duplicates"] > 0 and report["counts"]["near_duplicates"] > 0
    assert max(n for kind, n in seen if kind == "batch") <= batch
    # texts normalised at once: a batch, or the candidates the near-duplicate search reads again (fewer here)
    assert max(n for kind, n in seen if kind == "normalise") <= batch
    assert io.parquet_num_rows(files["train"]) > 1500  # ... against a train split of more than 1,500 texts


def test_the_cli_writes_the_in_memory_results_from_files(planted, files, tmp_path, monkeypatch) -> None:
    from pipelines.leakage import main

    monkeypatch.chdir(tmp_path)
    params = write_params(
        tmp_path / "params.yaml",
        leakage={"time_order_action": "report", "column_check_max_rows": 1000},
        data={"snapshots_dir": None},
    )
    out = tmp_path / "processed"
    main(
        params=params,
        split_dir=files["train"].parent,
        out_dir=out,
        report=tmp_path / "leakage.json",
        metrics=tmp_path / "metrics.json",
        split_report=tmp_path / "absent.json",
    )
    clean, report = audit(planted, CFG)
    assert json.loads((tmp_path / "leakage.json").read_text()) == json.loads(json.dumps(report, default=str))
    for k in clean:
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{k}.parquet"), clean[k].reset_index(drop=True))


def test_copy_rows_writes_the_frame_pandas_would(tmp_path) -> None:
    df = pd.DataFrame(
        {
            "s": pd.array(["x", "y", None, "z", "w"], dtype="string"),
            "o": ["p", None, "q", "r", None],
            "none": [None] * 5,
            "cat": pd.Categorical(["u", "v", "u", "v", "u"]),
            "tz": pd.date_range("2024-01-01", periods=5, tz="UTC"),
            "i": np.arange(5),
            "f": [0.5, None, 1.0, 2.0, 3.0],
            "drop_me": np.arange(5),
        }
    )
    df.to_parquet(tmp_path / "in.parquet")
    for keep in ([True, False, True, True, False], [False] * 5, [True] * 5):
        mask = np.array(keep)
        copy_rows(tmp_path / "in.parquet", mask, tmp_path / "out.parquet", [c for c in df if c != "drop_me"], 2)
        df[mask].drop(columns="drop_me").to_parquet(tmp_path / "want.parquet", index=False)
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "out.parquet"), pd.read_parquet(tmp_path / "want.parquet")
        )
    with pytest.raises(ValueError, match="keep has 2 entries"):
        copy_rows(tmp_path / "in.parquet", np.ones(2, bool), tmp_path / "out.parquet")


@pytest.mark.integration
def test_the_ray_search_on_files_agrees_with_the_pandas_one(files) -> None:
    """``compute.engine: ray``: the band hashes of texts read batch by batch from the files are computed by Ray
    tasks (each batch put in the object store as it is read); the report and masks are the pandas path's."""
    ray = pytest.importorskip("ray")
    from pipelines.config import ComputeConfig
    from pipelines.data import distributed

    want = audit_splits(Splits(files), CFG, feedback_ids=FEEDBACK)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")  # never a `ray start` one
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        near = distributed.near_search(ComputeConfig(engine="ray", batch_size=300))
        keep, report = audit_splits(Splits(files), CFG, feedback_ids=FEEDBACK, near=near)
    finally:
        ray.shutdown()
    assert report == want[1]
    for k in keep:
        np.testing.assert_array_equal(keep[k], want[0][k])
