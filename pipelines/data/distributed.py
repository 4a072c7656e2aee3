"""The heavy per-text work of the data stages as a Ray Data pipeline (``compute.engine: ray``).

Two parts of the data stages cost time per text and nothing across texts, so they spread over a cluster:

- ingest's cleaning (markup stripped, PII scrubbed by Presidio, whitespace normalised): the same
  :func:`pipelines.data.ingestion.clean_text` the pandas path maps, run in batches by a pool of Ray actors that
  each load Presidio once (:func:`scrub_texts_ray`);
- the near-duplicate search's MinHash signatures (character shingles hashed ``num_perm`` times: the costly step of
  :mod:`pipelines.data.near_duplicates`), run in batches by Ray tasks that return one 64-bit hash per LSH band
  (:func:`band_hashes_ray`). The driver groups the band hashes into candidate pairs and decides them with the
  exact TF-IDF cosine (:func:`pipelines.data.near_duplicates.verify`), as the pandas path does.

The results are the pandas path's: same texts and counts, same duplicate masks (``tests/pipelines/data/
test_distributed.py`` compares them). What stays on the driver: reading the source and writing the stage's
Parquet (ingest holds its frame there, as on the pandas path; leakage reads its texts batch by batch and puts
each batch in the object store as it goes), the exact-duplicate check, the candidate grouping (16 hashes per
text) and the cosine of the candidate pairs (linear in the texts, batched).

Ray is imported only when the engine is ``ray`` (the pandas path does not pay for it). A Ray runtime already up in
the process (a test's, a task's on a Ray worker) is used as it is; otherwise :func:`session` starts one
(``compute.ray_address``) for the stage and shuts it down after.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import ComputeConfig, IngestConfig
from pipelines.data import pii
from pipelines.data.ingestion import TextCleaner, clean_texts
from pipelines.data.near_duplicates import (
    LshSettings,
    Texts,
    band_matrix,
    near_duplicates,
)
from pipelines.errors import ConfigError

POS = "_pos"  # a text's position in the input: Ray Data does not keep the order, the driver sorts on it


@contextmanager
def session(compute: ComputeConfig) -> Iterator[None]:
    """Ray for the duration of a stage (nothing for ``engine: pandas``). With ``ray_address`` set, the
    ``pipelines`` package is shipped to the cluster's workers (they need the project's dependencies installed)."""
    if compute.engine != "ray":
        yield
        return
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs: dict = {"include_dashboard": False, "logging_level": "WARNING"}
    if compute.ray_address is not None:
        import pipelines

        kwargs.update(address=compute.ray_address, runtime_env={"py_modules": [str(Path(pipelines.__file__).parent)]})
    try:
        ray.init(**kwargs)
    except ConnectionError as err:
        raise ConfigError(
            f"compute.ray_address: cannot reach a Ray cluster at {compute.ray_address!r} ({err})"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


def _dataset(batches: Iterable[pd.Series]):
    """Texts (as :func:`clean_texts` reads them: ``str``) with their positions, one block per batch, so every batch
    is a task the cluster can place. Each batch goes to the object store as it is made: the driver holds one."""
    import ray

    refs, start = [], 0
    for texts in batches:
        frame = pd.DataFrame({"text": texts.astype(str).to_numpy(dtype=object), POS: start + np.arange(len(texts))})
        refs.append(ray.put(frame))
        start += len(texts)
    return ray.data.from_pandas_refs(refs)


def _slices(texts: pd.Series, size: int) -> Iterator[pd.Series]:
    return (texts.iloc[i : i + size] for i in range(0, len(texts), size))


def _in_order(ds) -> pd.DataFrame:
    return ds.to_pandas().sort_values(POS).reset_index(drop=True)


class _Cleaner:
    """A Ray actor's cleaning: Presidio is loaded once, when the actor starts."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = IngestConfig.model_validate(cfg)
        if self.cfg.scrub_pii:
            pii.load()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = clean_texts(batch["text"], self.cfg)
        out[POS] = batch[POS].to_numpy()
        return out


def scrub_texts_ray(texts: pd.Series, cfg: IngestConfig, compute: ComputeConfig) -> pd.DataFrame:
    """:func:`pipelines.data.ingestion.clean_texts` as a Ray Data pipeline: the same frame (``text``, ``pii``,
    ``html`` on ``texts``' index), computed by ``compute.workers`` actors in batches of ``compute.batch_size``."""
    import ray

    if not len(texts):
        return clean_texts(texts, cfg)
    workers = compute.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    done = _dataset(_slices(texts, compute.batch_size)).map_batches(
        _Cleaner,
        fn_constructor_kwargs={"cfg": cfg.model_dump()},
        batch_format="pandas",
        batch_size=compute.batch_size,
        compute=ray.data.ActorPoolStrategy(size=min(workers, -(-len(texts) // compute.batch_size))),
    )
    out = _in_order(done)[["text", "pii", "html"]].set_axis(texts.index)
    return out.astype({"text": "string", "pii": "int64", "html": bool})


def _band_batch(batch: pd.DataFrame, settings: dict) -> pd.DataFrame:
    s = LshSettings(**settings)
    hashes = band_matrix(batch["text"], s)
    return pd.DataFrame({POS: batch[POS].to_numpy(), **{f"band{b}": hashes[:, b] for b in range(s.bands)}})


def band_hashes_ray(texts: pd.Series | Texts, s: LshSettings, compute: ComputeConfig) -> np.ndarray:
    """:func:`~pipelines.data.near_duplicates.band_matrix` of ``texts`` (band hashes of each MinHash signature), by Ray
    tasks in batches of ``compute.batch_size``: one row of ``s.bands`` hashes per text, in ``texts``' order. The texts
    are read batch by batch (:class:`~pipelines.data.near_duplicates.Texts`), never whole on the driver."""
    texts = Texts.of(texts)
    if not len(texts):
        return np.zeros((0, s.bands), dtype=np.uint64)
    done = _dataset(texts.batches(compute.batch_size)).map_batches(
        _band_batch, fn_kwargs={"settings": asdict(s)}, batch_format="pandas", batch_size=compute.batch_size
    )
    return _in_order(done)[[f"band{b}" for b in range(s.bands)]].to_numpy(dtype=np.uint64)


def cleaner(compute: ComputeConfig) -> TextCleaner:
    """The per-text cleaning ingest runs: :func:`clean_texts` here, or :func:`scrub_texts_ray`."""
    return clean_texts if compute.engine == "pandas" else partial(scrub_texts_ray, compute=compute)


def near_search(compute: ComputeConfig):
    """The near-duplicate search the leakage stage runs: ``near_duplicates``, its band hashes computed here or by
    Ray tasks (:func:`band_hashes_ray`); the driver groups and verifies the candidates either way: the same mask."""
    if compute.engine == "pandas":
        return near_duplicates
    return partial(near_duplicates, bands=partial(band_hashes_ray, compute=compute))
