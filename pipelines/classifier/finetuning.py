"""Library of the ``finetune`` stage (its CLI is :mod:`pipelines.finetune`).

finetune: LoRA fine-tuning of a transformer classifier, launched through the ``deepspeed`` launcher
(:mod:`pipelines.training.launch`, shared with the generative model) running
:mod:`pipelines.classifier.finetune_worker` on every rank. The CLI checks everything that can be checked
before any rank starts (base model, LoRA targets and the analytic trainable count, world size, the
checkpoint on ``--resume``). On success the best epoch's adapter is published to ``models/transformer/``
by :func:`evaluate_and_publish`, scored in ``evaluate.precision`` with its abstention threshold tuned on its own
validation predictions (``abstention``), and logged with both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipelines.config import Params
from pipelines.io import atomic_outputs, read_split, write_json


def evaluate_and_publish(
    p: Params, ckpt_dir: Path, data_dir: Path, out: Path, metrics_out: Path, plots_dir: Path
) -> dict:
    """Score the best adapter with the shared metrics module, log it to the training's MLflow run, publish it.

    The model is logged as the same pyfunc interface as the baselines; ``candidate.json`` in ``out``
    tells the register stage its validation macro-F1 and model URI, so one gate decides across all candidates.
    """
    from pipelines.classifier.transformer import TransformerClassifier, log_transformer
    from pipelines.metrics import abstention_line, evaluate_splits, headline, write_plots
    from pipelines.registry import tracking

    cfg = p.finetune
    history = json.loads((ckpt_dir / "history.json").read_text())
    splits = {k: read_split(data_dir, k) for k in ("val", "test")}
    tracking.setup(p.mlflow)
    run_id = (ckpt_dir / "mlflow_run_id").read_text().strip()
    with atomic_outputs(out, metrics_out, plots_dir) as staged:
        shutil.copytree(ckpt_dir / "best_adapter", staged[out])
        shutil.copy(ckpt_dir / "history.json", staged[out] / "history.json")
        # One load, from the published folder: what is scored is what is logged and registered.
        clf = TransformerClassifier(
            staged[out], base_model=cfg.base_model, max_length=cfg.max_length, precision=p.evaluate.precision
        )
        rule, scored = evaluate_splits(
            clf,
            {
                split: (df["text"].astype(str).tolist(), df["label"].astype(str).tolist())
                for split, df in splits.items()
            },
            p.abstention,
            ece_bins=p.evaluate.ece_bins,
        )
        scores = {split: m for split, (m, _) in scored.items()}
        preds = {split: pr for split, (_, pr) in scored.items()}
        write_plots(
            splits["test"]["label"].astype(str).tolist(),
            preds["test"],
            staged[plots_dir] / "confusion_test.csv",
            staged[plots_dir] / "confusion_test.png",
            title="LoRA transformer, test",
        )
        with tracking.run("finetune-lora", "finetune", run_id=run_id):
            for split, m in scores.items():
                tracking.log_metrics(headline(m), prefix=f"{split}_")
            tracking.log_artifacts(staged[plots_dir], artifact_path="plots")
            info = log_transformer(
                clf, example_texts=splits["test"]["text"].astype(str).head(3).tolist(), abstention=rule
            )
        collapsed = collapse_reason(splits["val"]["label"].astype(str).tolist(), preds["val"])
        candidate = {
            "name": "lora_transformer",
            **({"skipped": True, "collapsed": collapsed} if collapsed else {}),
            "val_macro_f1": scores["val"]["macro_f1"],
            "model_uri": info.model_uri,
            "run_id": run_id,
            "trainable_parameters": history.get("trainable_parameters"),
            "abstention": rule.to_dict(),
            "precision": clf.precision,
        }
        (staged[out] / "candidate.json").write_text(json.dumps(candidate, indent=2))
        if cfg.merge_adapter:
            export_merged(clf, staged[out] / "merged")
        summary = {
            "model": "lora_transformer",
            "val": headline(scores["val"]),
            "test": headline(scores["test"]),
            "test_per_class": scores["test"].get("per_class"),
            "best_epoch": history.get("best_epoch"),
            "epochs_run": len(history.get("history", [])),
            "world_size": history.get("world_size"),
            "zero_stage": history.get("zero_stage"),
            "precision": history.get("precision"),
            "inference_precision": clf.precision,
            "abstention": {**rule.to_dict(), "tuned": scores["val"]["abstention_tuning"]},
            "train_rows": history.get("train_rows"),
            "samples_per_s": max((h["samples_per_s"] for h in history.get("history", [])), default=None),
            **({"collapsed": collapsed} if collapsed else {}),
        }
        write_json(summary, staged[metrics_out])
    print(
        f"finetune: val macro-F1 {scores['val']['macro_f1']:.4f}, test macro-F1 {scores['test']['macro_f1']:.4f} "
        f"({clf.precision}); test {abstention_line(scores['test'])}; adapter published to {out}; MLflow run {run_id}"
    )
    if collapsed:
        print(f"finetune: NOT a candidate for registration: the model collapsed ({collapsed})")
    if "note" in scores["val"]["abstention_tuning"]:
        print(f"finetune: abstention target not met on val: {scores['val']['abstention_tuning']['note']}")
    return summary


def collapse_reason(labels: list[str], predicted: list[str]) -> str | None:
    """Why a model is degenerate, or None: it answers one class for every validation row, or its validation
    macro-F1 is no better than always answering the most frequent class (a recipe that diverged)."""
    from collections import Counter

    from sklearn.metrics import f1_score

    if not labels:
        return None
    answered = Counter(predicted)
    if len(answered) == 1 and len(set(labels)) > 1:
        return f"it predicts {next(iter(answered))!r} for all {len(labels):,} validation rows"
    majority = Counter(labels).most_common(1)[0][0]
    floor = f1_score(labels, [majority] * len(labels), average="macro", zero_division=0)
    f1 = f1_score(labels, predicted, average="macro", zero_division=0)
    if f1 <= floor + 1e-9:
        return f"validation macro-F1 {f1:.4f} is no better than always answering {majority!r} ({floor:.4f})"
    return None


def export_merged(clf, directory: Path) -> None:
    """The adapter folded into the base weights, for tools that know no peft: a transformers sequence classifier
    (``[CLS]`` pooling), or, for a mean-pooled model, the transformers encoder plus ``classifier.safetensors``
    (the linear head on the mean of its token vectors) and ``pooling.json``. A fully fine-tuned model is
    written as it is."""
    merged = clf.model.merge_and_unload() if hasattr(clf.model, "merge_and_unload") else clf.model
    merged.save_pretrained(str(directory))
    clf.tokenizer.save_pretrained(str(directory))


def write_skipped(out: Path, metrics_out: Path, plots_dir: Path) -> None:
    """finetune.enabled is false: publish a 'skipped' record so the DAG's outputs exist and register ignores it."""
    from pipelines.metrics import write_plots

    with atomic_outputs(out, metrics_out, plots_dir) as staged:
        staged[out].mkdir(parents=True)
        staged[plots_dir].mkdir(parents=True)
        (staged[out] / "candidate.json").write_text(json.dumps({"name": "lora_transformer", "skipped": True}))
        write_json({"model": "lora_transformer", "skipped": True}, staged[metrics_out])
        write_plots(
            [],
            [],
            staged[plots_dir] / "confusion_test.csv",
            staged[plots_dir] / "confusion_test.png",
            title="LoRA transformer: skipped (finetune.enabled is false)",
        )
    print("finetune: skipped (finetune.enabled is false)")
