"""Serving benchmark: continuous batching vs @serve.batch vs unbatched vs the offline limit, one run, one table.

    python -m benchmarks.serving [--seconds 6] [--rounds 3] [--levels 1,8,32,64] [--ingress direct|proxy]
                                 [--data-params my-data.yaml] [--replicas N (with --ingress proxy)]
                                 [--precisions fp32,bf16]

The model is the LoRA transformer (MiniLM-L6 base) behind the common pyfunc, registered
as champion in a temporary MLflow registry: an *untrained* adapter by default (the same
compute as a trained one), so this runs on a fresh clone. Texts come from the pipeline's
data (data/processed/test.parquet, else data/interim/dataset.parquet), or with ``--data-params FILE``
from the dataset that file's ``data:`` section names (read by the pipeline's own reader, so any
data set the pipeline takes works: how much length grouping saves depends on the length spread). Single-text
requests from a closed-loop aiohttp client on 127.0.0.1 in its own process (no Ray in it),
each level bounded by time and split into rounds that alternate the modes.

(a) offline: the same registered pyfunc (adapter merged, as the replicas load it), length-sorted
    batches of 32, no server (the limit)
(b) serve.batching=none  (c) serve.batching=serve_batch at its best wait (picked at concurrency 32)
(d) serve.batching=continuous (ours)

(a)-(d) run in the first of ``--precisions`` (``evaluate.precision``, fp32 by default); each further precision
adds (a) and (d) in it, measured in the same interleaved rounds, and the run prints their throughput and
latency over the first precision's, and how far the answers move (labels that change, largest probability
difference) on the offline texts: what switching ``evaluate.precision`` buys and what it changes.

After the table it prints the padding (real / padded tokens) of (d) as served (the replica's
``ticketops_batch_tokens_total``) and, offline, of the same in-flight texts batched as they come,
grouped by ``select_batch`` and sorted: the throughput of those plans against arrival order is
about the most (d)/(c) can gain from length grouping on these texts at each concurrency.

``--ingress direct`` (the default) starts Ray with ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: each
app's replica also listens on its own port (Ray Serve's direct ingress) and the client
talks to it there, so no proxy actor sits on the path; ``--ingress proxy`` measures the
classic path through Ray's HTTP proxy (what ``make serve`` answers on port 8000). All
modes share the same path in one run.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from typer import Option

HERE = Path(__file__).resolve().parents[1]


def load_texts(n: int, seed: int = 0, data_params: Path | None = None) -> list[str]:
    """``n`` texts sampled from the pipeline's data, or from the data set ``data_params``'s ``data:`` names."""
    if data_params is not None:
        from pipelines.config import load_params
        from pipelines.data.ingestion import map_columns, read_source

        data = load_params(data_params).data
        texts = map_columns(read_source(data), data.columns)["text"]
    else:
        found = [
            p for p in (HERE / "data/processed/test.parquet", HERE / "data/interim/dataset.parquet") if p.is_file()
        ]
        if not found:
            raise SystemExit(
                "no data: run `make run` first (needs data/interim/dataset.parquet), or pass --data-params"
            )
        texts = pd.read_parquet(found[0], columns=["text"])["text"]
    texts = texts.dropna().astype(str)
    texts = texts[texts.str.strip().str.len() > 0]  # the server refuses blank texts
    return texts.sample(min(n, len(texts)), random_state=seed).tolist()


def describe_lengths(texts: list[str]) -> str:
    """Token-length spread under the base model's tokenizer (what length grouping has to work with)."""
    from transformers import AutoTokenizer

    from pipelines.classifier.base_model import resolve_base_model

    n = np.array([len(ids) for ids in AutoTokenizer.from_pretrained(resolve_base_model("minilm"))(texts)["input_ids"]])
    p10, p50, p90 = np.percentile(n, [10, 50, 90])
    return f"tokens mean {n.mean():.0f}, p10/p50/p90 {p10:.0f}/{p50:.0f}/{p90:.0f}, max {n.max()}"


def register_transformer(root: Path, labels: list[str], example: list[str]):
    """An untrained LoRA adapter on the packaged MiniLM, logged as the common pyfunc and made champion."""
    import mlflow
    from transformers import AutoTokenizer

    from pipelines.classifier.base_model import resolve_base_model
    from pipelines.classifier.lora import build_model
    from pipelines.classifier.transformer import TransformerClassifier, log_transformer
    from pipelines.config import FinetuneConfig, MlflowConfig
    from pipelines.registry.tracking import Registry, setup

    base = resolve_base_model("minilm")
    adapter = root / "adapter"
    build_model(base, labels, FinetuneConfig()).save_pretrained(str(adapter))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(adapter))
    (adapter / "labels.json").write_text(json.dumps(labels))
    cfg = MlflowConfig(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=str(root / "artifacts"),
        experiment="bench",
        registered_model="bench-router",
    )
    os.environ["MLFLOW_TRACKING_URI"] = cfg.tracking_uri
    setup(cfg)
    clf = TransformerClassifier(adapter, base_model="minilm")
    with mlflow.start_run():
        info = log_transformer(clf, example)
    reg = Registry(cfg)
    reg.set_alias("champion", reg.register(info.model_uri, tags={}))
    return cfg, reg


def agreement(base, other, texts: list[str]) -> dict:
    """How far ``other``'s answers are from ``base``'s on ``texts``: share of equal labels, largest |dp|."""
    p, q = base.predict_proba(texts), other.predict_proba(texts)
    return {"labels_equal": float((p.argmax(1) == q.argmax(1)).mean()), "max_dp": float(np.abs(p - q).max())}


def offline(clf, texts: list[str]) -> dict:
    t0 = time.perf_counter()
    clf.predict_proba(texts)  # the transformer sorts by length and runs batches of 32
    dt = time.perf_counter() - t0
    return {"tps": len(texts) / dt, "p50": float("nan"), "p99": float("nan"), "n": len(texts), "fail": 0}


def grouping_ceiling(
    clf,
    texts: list[str],
    concurrency: int,
    batch_size: int,
    budget: int,
    min_row_fill: float,
    min_texts: int = 256,
    repeats: int = 3,
) -> dict:
    """What length grouping alone can buy at this concurrency, offline (no server, no HTTP).

    Draws of ``concurrency`` texts (all a closed loop has in flight; at least ``min_texts`` in all) are run
    (i) "arrival": in arrival order in batches of ``batch_size`` (what a full ``@serve.batch`` forms),
    (ii) "grouped": split by the continuous batcher's own ``select_batch`` with the same budget and row fill, as if
    all were waiting at once, (iii) "sorted": sorted by length and cut into batches of 8 (near-ideal grouping).
    Plans alternate over ``repeats`` rounds. Throughput ratios to (i) are about the most (d)/(c) can get from
    padding; with HTTP, the event loop and the client on the same cores it gets less."""
    from types import SimpleNamespace

    from serving.batching import select_batch

    rng = np.random.default_rng(concurrency)
    sets = -(-min_texts // concurrency)
    all_texts = [texts[i] for _ in range(sets) for i in rng.choice(len(texts), concurrency, replace=False)]
    lengths = clf.token_lengths(all_texts)
    plans: dict[str, list[list[int]]] = {"arrival": [], "grouped": [], "sorted": []}  # each batch: indices in all_texts
    for first in range(0, len(all_texts), concurrency):
        idx = list(range(first, first + concurrency))
        plans["arrival"] += [idx[s : s + batch_size] for s in range(0, concurrency, batch_size)]
        by_len = sorted(idx, key=lengths.__getitem__)
        plans["sorted"] += [by_len[s : s + 8] for s in range(0, concurrency, 8)]
        pending = [SimpleNamespace(tokens=lengths[i], model=None, seq=i) for i in idx]
        while pending:
            batch = select_batch(pending, batch_size, budget, min_row_fill)
            plans["grouped"].append([it.seq for it in batch])
            taken = {it.seq for it in batch}
            pending = [it for it in pending if it.seq not in taken]
    seconds = dict.fromkeys(plans, 0.0)
    for _ in range(repeats):
        for name, batches in plans.items():
            t0 = time.perf_counter()
            for batch in batches:
                clf.predict_proba([all_texts[i] for i in batch])
            seconds[name] += time.perf_counter() - t0
    out = {
        f"eff_{name}": sum(lengths) / sum(len(b) * max(lengths[i] for i in b) for b in batches)
        for name, batches in plans.items()
    }
    out.update({f"ratio_{name}": seconds["arrival"] / seconds[name] for name in ("grouped", "sorted")})
    return out


def padding_counts(url: str) -> tuple[float, float]:
    """The replica's ``ticketops_batch_tokens_total`` (real, padded) so far."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    counts = {"real": 0.0, "padded": 0.0}
    for fam in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=10).text):
        if fam.name == "ticketops_batch_tokens":
            for sample in fam.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["kind"]] = sample.value
    return counts["real"], counts["padded"]


async def load(url: str, texts: list[str], concurrency: int, seconds: float) -> dict:
    """Closed loop: ``concurrency`` clients, one single-text request each at a time, for ``seconds``."""
    import aiohttp

    lat: list[float] = []
    fails = 0
    counter = iter(range(10**9))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal fails
        while time.perf_counter() < stop:
            text = texts[next(counter) % len(texts)]
            t0 = time.perf_counter()
            async with session.post(f"{url}/predict", json={"texts": [text]}) as r:
                await r.read()
                if r.status == 200:
                    lat.append(time.perf_counter() - t0)
                else:
                    fails += 1

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
        # warm-up: one round at this concurrency, not measured
        async def one(i: int) -> None:
            async with s.post(f"{url}/predict", json={"texts": [texts[i]]}) as r:
                await r.read()

        await asyncio.gather(*(one(i) for i in range(concurrency)))
        t0 = time.perf_counter()
        stop = t0 + seconds
        await asyncio.gather(*(worker(s) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"lat": lat, "elapsed": elapsed, "fail": fails}


def run_load(url: str, texts: list[str], concurrency: int, seconds: float) -> dict:
    """:func:`load` in the client process (no Ray in it: Ray's driver threads would steal the client's CPU)."""
    return asyncio.run(load(url, texts, concurrency, seconds))


def summarise(parts: list[dict]) -> dict:
    """Rounds of one mode at one level: texts/s over the summed time, latency percentiles over all requests."""
    lat = [x for p in parts for x in p["lat"]]
    elapsed = sum(p["elapsed"] for p in parts)
    q = np.percentile(lat, [50, 99]) * 1000 if lat else [float("nan")] * 2
    return {
        "tps": len(lat) / elapsed,
        "p50": float(q[0]),
        "p99": float(q[1]),
        "n": len(lat),
        "fail": sum(p["fail"] for p in parts),
    }


def direct_url(proxy_url: str) -> str:
    """The replica's own HTTP port (Ray Serve direct ingress), found from the pid its /healthz reports."""
    import psutil
    import requests

    lo = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "30000"))
    hi = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", "31000"))
    pid = requests.get(f"{proxy_url}/healthz", timeout=10).json()["pid"]
    ports = [
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and lo <= c.laddr.port <= hi
    ]
    if not ports:
        raise SystemExit(f"replica {pid} has no direct-ingress port in {lo}-{hi}: use --ingress proxy")
    return f"http://127.0.0.1:{ports[0]}{urlparse(proxy_url).path}"


def main(
    seconds: Annotated[float, Option(help="load per mode and concurrency level, split into the rounds")] = 6.0,
    levels: Annotated[str, Option(help="concurrency levels, comma-separated")] = "1,8,32,64",
    n_texts: Annotated[int, Option(help="texts sampled for the requests")] = 1500,
    waits_ms: Annotated[str, Option(help="@serve.batch wait timeouts tried for (c), best kept")] = "1,5,10,50",
    torch_threads: Annotated[int, Option(help="torch threads in every replica and offline")] = 2,
    max_batch_size: Annotated[int, Option(help="batch size of (c), cap of (d) ((a) uses the pyfunc's 32)")] = 32,
    offline_texts: Annotated[int, Option(help="texts in each offline (a) measurement")] = 384,
    ingress: Annotated[str, Option(help="direct (each replica's own port) or proxy (Ray's HTTP proxy)")] = "direct",
    rounds: Annotated[int, Option(help="interleaved rounds per mode and level")] = 3,
    replicas: Annotated[int, Option(help="replicas per mode (above 1 needs --ingress proxy)")] = 1,
    data_params: Annotated[
        Path | None, Option(help="a params file whose data: section names the texts (default: the pipeline's data)")
    ] = None,
    precisions: Annotated[
        str, Option(help="inference precisions, comma-separated: (a)-(d) in the first, (a) and (d) in each other")
    ] = "fp32,bf16",
) -> None:
    """Run (a)-(d) and print texts/s, p50/p99 and the ratios (d)/(a), (d)/(b), (d)/(c).

    Each level gives every mode ``seconds`` of load in ``rounds`` interleaved slices (b, c, d, b, c, d, ...),
    so a slow minute on a shared machine hits all modes alike. The client runs in its own process.
    """
    if ingress not in ("direct", "proxy"):
        raise SystemExit(f"--ingress must be direct or proxy, not {ingress!r}")
    if replicas > 1 and ingress == "direct":
        raise SystemExit("--replicas above 1 needs --ingress proxy (direct ingress reaches one replica's port)")
    precs = [x.strip() for x in precisions.split(",") if x.strip()]
    if not precs or any(x not in ("auto", "fp32", "bf16") for x in precs) or len(set(precs)) < len(precs):
        raise SystemExit(f"--precisions takes distinct values of auto, fp32, bf16; got {precisions!r}")
    if ingress == "direct":  # read when Ray's processes import ray.serve: set before ray.init
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")  # quick teardown
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import ray

    from pipelines.classifier.pyfunc import load_registered
    from pipelines.config import Params
    from pipelines.io import free_port
    from serving.app import build, run_local, stop_local

    conc = [int(c) for c in levels.split(",")]
    texts = load_texts(n_texts, data_params=data_params)
    print(
        f"{len(texts)} texts from {data_params or 'the pipeline data'}, {describe_lengths(texts)}; "
        f"levels {conc}; {seconds:.0f} s per mode and level in {rounds} rounds; ingress {ingress}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    labels = [f"class_{i}" for i in range(10)]
    cfg, reg = register_transformer(tmp, labels, texts[:3])
    import torch

    torch.set_num_threads(torch_threads)
    # the registered pyfunc in each precision, as the replicas load it (same numerics)
    clfs = {x: load_registered(reg, "@champion", precision=x) for x in precs}
    for c_ in clfs.values():
        c_.predict_proba(texts[:32])
    clf = clfs[precs[0]]
    agree = {x: agreement(clf, clfs[x], texts[:offline_texts]) for x in precs[1:]}
    results: dict[str, dict[int, dict]] = {"a offline": {}}
    ceilings: dict[int, dict] = {}

    params = Params(mlflow=cfg)
    (tmp / "params.yaml").write_text(json.dumps({"mlflow": cfg.model_dump()}))
    port = params.serve.port = free_port()
    base_args = {
        "params": str(tmp / "params.yaml"),
        "project_dir": str(HERE),
        "watch_interval_s": 0,
        "log_dir": str(tmp / "production"),
        "max_batch_size": max_batch_size,
        "max_ongoing_requests": max(256, 2 * max(conc)),
        "max_queue": 4096,
        "torch_threads": torch_threads,
        "num_replicas": replicas,
        "port": port,
    }
    client = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    def measure(mode_urls: dict[str, str], c: int) -> dict[str, dict]:
        parts: dict[str, list[dict]] = {m: [] for m in mode_urls}
        for _ in range(rounds):
            for m, u in mode_urls.items():
                parts[m].append(client.submit(run_load, u, texts, c, seconds / rounds).result())
        return {m: summarise(p) for m, p in parts.items()}

    try:
        # every mode is deployed at once (own route prefix, 1/4 CPU each: idle replicas cost nothing) and the
        # modes are measured interleaved, level by level, so load from other processes hits them alike
        modes = {"b": {"batching": "none"}, "d": {"batching": "continuous"}}
        modes.update(
            {
                f"c{w:g}": {"batching": "serve_batch", "serve_batch_wait_ms": w}
                for w in [float(x) for x in waits_ms.split(",")]
            }
        )
        modes = {m: {**kw, "precision": precs[0]} for m, kw in modes.items()}
        modes.update({f"p-{x}": {"batching": "continuous", "precision": x} for x in precs[1:]})  # (d) in x
        urls = {
            m: run_local(
                params,
                build({**base_args, "replica_cpus": 0.25 / replicas, **kw}),
                wait_ready_s=300,
                name=f"bench-{m}",
                route_prefix=f"/{m}",
            )
            for m, kw in modes.items()
        }
        if ingress == "direct":
            urls = {m: direct_url(u) for m, u in urls.items()}
        print(f"ingress {ingress}: " + ", ".join(f"({m}) {u}" for m, u in urls.items()), flush=True)
        c_modes = [m for m in modes if m.startswith("c")]
        tuned = measure({m: urls[m] for m in c_modes}, 32)
        for m, r in tuned.items():
            print(f"(c) @serve.batch wait {m[1:]} ms at concurrency 32: {r['tps']:.1f} texts/s", flush=True)
        best = max(tuned, key=lambda m: tuned[m]["tps"])
        keys = {"b": "b unbatched", best: f"c serve.batch {best[1:]}ms", "d": "d continuous"}
        keys.update({f"p-{x}": f"d continuous {x}" for x in precs[1:]})
        for key in [*keys.values(), *(f"a offline {x}" for x in precs[1:])]:
            results[key] = {}
        for c in conc:
            results["a offline"][c] = offline(clf, texts[:offline_texts])  # interleaved too
            for x in precs[1:]:
                results[f"a offline {x}"][c] = offline(clfs[x], texts[:offline_texts])
            ceilings[c] = grouping_ceiling(
                clf, texts, c, max_batch_size, params.serve.max_batch_tokens, params.serve.min_row_fill
            )
            before = padding_counts(urls["d"])
            for m, r in measure({m: urls[m] for m in keys}, c).items():
                results[keys[m]][c] = r
            after = padding_counts(urls["d"])
            results["d continuous"][c]["eff"] = (after[0] - before[0]) / max(after[1] - before[1], 1.0)
            print(f"concurrency {c} done", flush=True)
    finally:
        client.shutdown()
        stop_local()
    print(f"(a)-(d) in {precs[0]}")
    print_table(results, conc, ceilings)
    print_precisions(results, conc, precs, agree)


def print_precisions(results: dict[str, dict[int, dict]], conc: list[int], precs: list[str], agree: dict) -> None:
    """Each further precision over the first: throughput and p50 of (a) and (d), and how far the answers move."""
    for x in precs[1:]:
        a, d = results[f"a offline {x}"], results[f"d continuous {x}"]
        base_a, base_d = results["a offline"], results["d continuous"]
        print()
        print(f"{x} over {precs[0]} (same registered model, same texts, same rounds):")
        print("(a) offline throughput " + "  ".join(f"c={c}: {_ratio(a[c]['tps'], base_a[c]['tps'])}" for c in conc))
        print("(d) served throughput  " + "  ".join(f"c={c}: {_ratio(d[c]['tps'], base_d[c]['tps'])}" for c in conc))
        print("(d) served p50 latency " + "  ".join(f"c={c}: {_ratio(d[c]['p50'], base_d[c]['p50'])}" for c in conc))
        g = agree[x]
        print(f"answers: {g['labels_equal']:.2%} of labels equal, largest probability difference {g['max_dp']:.4f}")


def print_table(results: dict[str, dict[int, dict]], conc: list[int], ceilings: dict[int, dict]) -> None:
    print()
    print(f"{'mode':<22}" + "".join(f"{'c=' + str(c):>26}" for c in conc))
    print(f"{'':<22}" + "".join(f"{'texts/s  p50ms  p99ms':>26}" for _ in conc))
    for mode, by_c in results.items():
        cells = [
            f"{r['tps']:8.1f} {r['p50']:6.0f} {r['p99']:6.0f}" + (f" ({r['fail']} failed)" if r["fail"] else "")
            for r in (by_c[c] for c in conc)
        ]
        print(f"{mode:<22}" + "".join(f"{x:>26}" for x in cells))
    d = results["d continuous"]
    keys = list(results)
    print()
    for other in keys[:3]:
        print(
            f"(d)/({other[0]}) throughput "
            + "  ".join(f"c={c}: {_ratio(d[c]['tps'], results[other][c]['tps'])}" for c in conc)
        )
    b = results[keys[1]]
    print("(d)/(b) p50 latency   " + "  ".join(f"c={c}: {_ratio(d[c]['p50'], b[c]['p50'])}" for c in conc))
    print()
    print("Padding (real tokens / padded tokens the model computed):")
    print("(d) served            " + "  ".join(f"c={c}: {d[c]['eff']:.2f}" for c in conc))
    print(
        "offline, in arrival   "
        + "  ".join(f"c={c}: {ceilings[c]['eff_arrival']:.2f}" for c in conc)
        + "   (c texts in batches of up to 32 as they come: what @serve.batch forms)"
    )
    print(
        "offline, grouped      "
        + "  ".join(f"c={c}: {ceilings[c]['eff_grouped']:.2f}" for c in conc)
        + "   (the c texts split by select_batch, as if all waited at once)"
    )
    print(
        "offline, sorted in 8s "
        + "  ".join(f"c={c}: {ceilings[c]['eff_sorted']:.2f}" for c in conc)
        + "   (near-ideal grouping)"
    )
    print("Offline texts/s over arrival order (about the most (d)/(c) can get from padding):")
    print("grouped               " + "  ".join(f"c={c}: {ceilings[c]['ratio_grouped']:.2f}" for c in conc))
    print("sorted in 8s          " + "  ".join(f"c={c}: {ceilings[c]['ratio_sorted']:.2f}" for c in conc))


def _ratio(x: float, y: float) -> str:
    return f"{x / y:.2f}" if y and y == y else "n/a"


if __name__ == "__main__":
    import typer

    typer.run(main)
