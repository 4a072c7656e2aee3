"""The Ray Data path of the data stages (``compute.engine: ray``) gives the pandas path's results.

The Ray tests start an embedded Ray (2 CPUs) once for the module: about a minute in all, most of it Ray's start
and each scrubbing actor loading Presidio.
"""

from __future__ import annotations

import json
import sys
from functools import partial

import numpy as np
import pandas as pd
import pytest

from pipelines.config import ComputeConfig, DataConfig, GenerateConfig, IngestConfig, LeakageConfig, parse_params
from pipelines.data import distributed
from pipelines.data.generator import generate_tickets
from pipelines.data.ingestion import clean_texts, ingest
from pipelines.data.leakage_checks import audit, normalise_for_dedup
from pipelines.data.near_duplicates import LshSettings, band_candidates, band_matrix, candidates, shingles
from pipelines.errors import ConfigError
from tests.helpers.data import write_params

RAY = ComputeConfig(engine="ray", batch_size=500)  # 2,000 tickets: four batches, so both workers get some


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return generate_tickets(GenerateConfig(n_rows=2000, seed=3))


@pytest.fixture(scope="module")
def pandas_ingest(raw) -> tuple[pd.DataFrame, dict]:
    return ingest(raw, DataConfig(), IngestConfig())


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")  # never a `ray start` one
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def _random_parts(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A random 70/15/15 split: the generator's planted duplicates land on both sides."""
    order = np.random.default_rng(0).permutation(len(df))
    a, b = int(0.7 * len(df)), int(0.85 * len(df))
    cut = {"train": order[:a], "val": order[a:b], "test": order[b:]}
    return {k: df.iloc[idx].reset_index(drop=True) for k, idx in cut.items()}


def test_grouping_on_band_hashes_proposes_the_lsh_index_candidates(pandas_ingest) -> None:
    """The candidates (both engines group band hashes) are exactly what an LSH index proposes: rensa's
    RMinHashLSH over the same MinHash signatures is the oracle."""
    import rensa

    parts = _random_parts(pandas_ingest[0])
    ref = normalise_for_dedup(parts["train"]["text"])
    other = normalise_for_dedup(pd.concat([parts["val"]["text"], parts["test"]["text"]], ignore_index=True))
    s = LshSettings()

    def minhashes(texts):
        out = []
        for t in texts:
            m = rensa.RMinHash(num_perm=s.num_perm, seed=s.seed)
            m.update(shingles(t, s.shingle))
            out.append(m)
        return out

    index = rensa.RMinHashLSH(threshold=0.5, num_perm=s.num_perm, num_bands=s.bands)
    index.insert_many(minhashes(ref), 0)
    by_index = [sorted(keys) for keys in index.query_all(minhashes(other))]
    by_group = candidates(ref, other, s)
    assert len(by_group) == len(by_index) == len(other)
    assert [sorted(c.tolist()) for c in by_group] == by_index
    assert sum(map(len, by_index)) > 0
    assert band_candidates(band_matrix(ref, s), np.zeros((0, s.bands), np.uint64)) == []


def test_compute_params_refuse_an_address_without_the_ray_engine() -> None:
    with pytest.raises(ConfigError, match="compute.*ray_address.*set engine: ray"):
        parse_params({"compute": {"ray_address": "auto"}})
    with pytest.raises(ConfigError, match="compute.engine"):
        parse_params({"compute": {"engine": "spark"}})


def test_the_pandas_engine_starts_no_ray() -> None:
    with distributed.session(ComputeConfig()):
        assert distributed.cleaner(ComputeConfig()) is clean_texts
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_an_unreachable_cluster_is_a_config_error_naming_the_key(monkeypatch) -> None:
    ray = pytest.importorskip("ray")

    def refuse(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ConfigError, match="compute.ray_address: cannot reach a Ray cluster at 'auto'"):
        with distributed.session(ComputeConfig(engine="ray", ray_address="auto")):
            pass


@pytest.mark.integration
def test_ray_ingest_equals_pandas_ingest(local_ray, raw, pandas_ingest) -> None:
    expected, expected_summary = pandas_ingest
    assert expected_summary["pii_rows"] > 0 and expected_summary["html_rows"] > 0  # the comparison is not vacuous
    got, summary = ingest(raw, DataConfig(), IngestConfig(), clean=partial(distributed.scrub_texts_ray, compute=RAY))
    pd.testing.assert_frame_equal(got, expected)
    assert summary == expected_summary


@pytest.mark.integration
def test_ray_leakage_audit_equals_pandas_audit(local_ray, pandas_ingest) -> None:
    parts = _random_parts(pandas_ingest[0])
    cfg = LeakageConfig()
    clean, report = audit(parts, cfg)
    assert report["counts"]["near_duplicates"] > 0 and report["counts"]["exact_duplicates"] > 0
    clean_ray, report_ray = audit(parts, cfg, near=distributed.near_search(RAY))
    assert report_ray == report
    for k in clean:
        pd.testing.assert_frame_equal(clean_ray[k], clean[k])


@pytest.mark.integration
def test_ingest_cli_runs_on_ray_when_params_say_so(local_ray, raw, tmp_path) -> None:
    from pipelines.ingest import main

    source = tmp_path / "tickets.parquet"
    raw.head(300).to_parquet(source)
    outs = {}
    for engine in ("pandas", "ray"):
        params = write_params(
            tmp_path / f"{engine}.yaml",
            data={"path": str(source), "snapshots_dir": None},
            ingest={"scrub_pii": False},  # the dispatch is under test here, not Presidio (loaded per actor)
            compute={"engine": engine, "batch_size": 100},
        )
        out, summary = tmp_path / f"{engine}.parquet", tmp_path / f"{engine}.json"
        main(
            params=params,
            out=out,
            summary_out=summary,
            metrics_out=tmp_path / f"{engine}-metrics.json",
            quarantine_out=tmp_path / f"{engine}-quarantine.csv",
        )
        outs[engine] = (pd.read_parquet(out), json.loads(summary.read_text()))
    assert outs["ray"][1]["engine"] == "ray" and outs["pandas"][1]["engine"] == "pandas"
    pd.testing.assert_frame_equal(outs["ray"][0], outs["pandas"][0])
    assert local_ray.is_initialized(), "a runtime the caller started is left running"
