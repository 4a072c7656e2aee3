"""How much of a model ranking is the split? The same stages over several random splits, side by side.

    .venv/bin/python benchmarks/split_seeds.py [--params params.yaml] [--seeds 1,2,3,4,5] [--label spam]
                                              [--stages baselines,finetune] [--workdir .split-seeds] [--keep]

On a small test split a few rows decide which model wins: the SMS Spam Collection's deduplicated test split
holds about 60 spam messages, so one message moves the spam F1 by about 0.008. This script answers the
question a single ``make run`` cannot: for each split seed it copies the ingested data
(``data/interim/dataset.parquet``: run ``dvc repro ingest`` first) into ``<workdir>/seed-<s>``, writes the
params with only ``split.seed`` changed, and runs the pipeline's own stage modules there
(``python -m pipelines.split``, ``leakage``, then ``baselines`` and/or ``finetune``), each seed's MLflow
store its own. It then scores every trained model on that seed's test split and prints, per model:

* test macro-F1 per seed, their mean and standard deviation;
* with ``--label``, that class's F1 per seed, and pooled over every seed's test rows (each test row scored once
  by the model trained without it: several hundred positives instead of sixty);
* how many seeds each model won (best test macro-F1 of that seed).

The split strategy must be a random one (``stratified``, or ``auto`` on data without timestamp, group
or given splits): a time or given split does not change with its seed. Costs one pipeline run per seed (SMS, LoRA
on 2 CPU cores: about 5 min a seed). Never run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import f1_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = {"baselines": "pipelines.baselines", "finetune": "pipelines.finetune"}


def run_seed(params: dict, seed: int, source: Path, workdir: Path, stages: list[str]) -> Path:
    """One seed's split → leakage → stages in ``workdir/seed-<seed>``; returns that directory."""
    d = workdir / f"seed-{seed}"
    (d / "data" / "interim").mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, d / "data" / "interim" / "dataset.parquet")
    p = dict(params)
    p["split"] = {**params["split"], "seed": seed}
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{d / 'mlflow.db'}"}
    for module in ["pipelines.split", "pipelines.leakage", *(STAGES[s] for s in stages)]:
        print(f"seed {seed}: python -m {module}", flush=True)
        subprocess.run([sys.executable, "-m", module], cwd=d, env=env, check=True)
    return d


def predictions(
    d: Path, stages: list[str], base_model: str, max_length: int, precision: str = "auto"
) -> dict[str, np.ndarray]:
    """Every trained model's predicted labels on ``d``'s test split; the transformer in ``precision``
    (``evaluate.precision``: what the stages score it in and serving loads it in)."""
    import joblib

    test = pd.read_parquet(d / "data" / "processed" / "test.parquet")
    out = {}
    if "baselines" in stages:
        for f in sorted((d / "models" / "baselines").glob("*.joblib")):
            clf = joblib.load(f)
            out[f.stem] = np.asarray(clf.classes)[clf.predict_proba(test["text"].tolist()).argmax(1)]
    if "finetune" in stages:
        from pipelines.classifier.transformer import TransformerClassifier

        clf = TransformerClassifier(
            d / "models" / "transformer", base_model=base_model, max_length=max_length, precision=precision
        )
        out["transformer"] = np.asarray(clf.classes)[clf.predict_proba(test["text"].tolist()).argmax(1)]
    return {"__y__": test["label"].astype(str).to_numpy(), **out}


def report(per_seed: dict[int, dict[str, np.ndarray]], label: str | None) -> None:
    seeds = sorted(per_seed)
    models = [m for m in per_seed[seeds[0]] if m != "__y__"]
    rows = []
    for m in models:
        macro = [f1_score(per_seed[s]["__y__"], per_seed[s][m], average="macro") for s in seeds]
        row = {"model": m, **{f"seed {s}": f"{v:.4f}" for s, v in zip(seeds, macro)}}
        row["mean"], row["sd"] = f"{np.mean(macro):.4f}", f"{np.std(macro, ddof=1) if len(macro) > 1 else 0:.4f}"
        if label:
            cls = [f1_score(per_seed[s]["__y__"], per_seed[s][m], labels=[label], average="macro") for s in seeds]
            y = np.concatenate([per_seed[s]["__y__"] for s in seeds])
            p = np.concatenate([per_seed[s][m] for s in seeds])
            row[f"{label} F1 per seed"] = " ".join(f"{v:.3f}" for v in cls)
            row[f"{label} F1 pooled"] = f"{f1_score(y, p, labels=[label], average='macro'):.4f}"
        rows.append(row)
    wins = {m: 0 for m in models}
    for s in seeds:
        scores = {m: f1_score(per_seed[s]["__y__"], per_seed[s][m], average="macro") for m in models}
        wins[max(scores, key=scores.get)] += 1
    for row in rows:
        row["seeds won"] = wins[row["model"]]
    print(
        "\ntest macro-F1 per split seed"
        + (f"; {label} F1 per seed and pooled over all seeds' test rows" if label else "")
    )
    print(pd.DataFrame(rows).to_markdown(index=False))
    if label:
        n = sum(int((per_seed[s]["__y__"] == label).sum()) for s in seeds)
        print(f"\npooled: {n} test rows labelled {label} over {len(seeds)} seeds")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params to run (split.seed varies)")
    ap.add_argument("--data", type=Path, default=Path("data/interim/dataset.parquet"), help="the ingest stage's output")
    ap.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated split seeds")
    ap.add_argument("--stages", default="baselines,finetune", help="which model stages: baselines, finetune or both")
    ap.add_argument("--label", default=None, help="also report this class's F1 (e.g. spam)")
    ap.add_argument("--workdir", type=Path, default=Path(".split-seeds"), help="scratch directory (one folder a seed)")
    ap.add_argument("--keep", action="store_true", help="keep the seed folders (models, metrics) afterwards")
    a = ap.parse_args()
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    if unknown := set(stages) - set(STAGES):
        ap.error(f"--stages: unknown {sorted(unknown)}; choose from {sorted(STAGES)}")
    if not a.data.is_file():
        ap.error(f"--data: {a.data} does not exist; run `dvc repro ingest` (or the ingest stage) first")
    from pipelines.config import load_params

    loaded = load_params(a.params)  # a wrong key is refused here, before any seed runs
    if loaded.split.strategy not in ("auto", "stratified"):
        ap.error(f"split.strategy is {loaded.split.strategy!r}: only a random split changes with its seed")
    params = yaml.safe_load(a.params.read_text(encoding="utf-8"))
    seeds = [int(s) for s in a.seeds.split(",")]
    workdir = a.workdir.resolve()
    per_seed = {}
    try:
        for s in seeds:
            d = run_seed(params, s, a.data.resolve(), workdir, stages)
            per_seed[s] = predictions(
                d, stages, loaded.finetune.base_model, loaded.finetune.max_length, loaded.evaluate.precision
            )
            print(json.dumps({"seed": s, "test_rows": len(per_seed[s]["__y__"])}), flush=True)
        report(per_seed, a.label)
    finally:
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
