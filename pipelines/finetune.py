"""``python -m pipelines.finetune``: LoRA fine-tuning under DeepSpeed ZeRO, launched with the ``deepspeed`` launcher.

A thin CLI; the logic and its description are in :mod:`pipelines.classifier.finetuning`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.classifier.base_model import resolve_base_model
from pipelines.classifier.finetuning import evaluate_and_publish, write_skipped
from pipelines.config import load_params
from pipelines.errors import run_cli
from pipelines.io import read_split
from pipelines.training import engine as dse
from pipelines.training.launch import check_world_size, launch, launcher_command, prepare_checkpoints

WORKER = "pipelines.classifier.finetune_worker"  # what the launcher runs on every rank


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    data_dir: Annotated[Path, typer.Option(help="model-ready splits")] = Path("data/processed"),
    ckpt_dir: Annotated[Path, typer.Option(help="DeepSpeed checkpoints (one per epoch)")] = Path(
        "models/transformer_ckpt"
    ),
    out: Annotated[Path, typer.Option(help="where the best adapter, tokenizer and labels are published")] = Path(
        "models/transformer"
    ),
    resume: Annotated[bool, typer.Option("--resume", help="continue from the latest checkpoint in --ckpt-dir")] = False,
    metrics_out: Annotated[Path, typer.Option(help="val/test metrics of the best adapter (JSON)")] = Path(
        "metrics/finetune.json"
    ),
    plots_dir: Annotated[Path, typer.Option(help="confusion matrix CSV (DVC plot) and PNG")] = Path("plots/finetune"),
) -> None:
    """Fine-tune the base model with LoRA under DeepSpeed ZeRO (world size, ZeRO stage, precision from params)."""
    p = load_params(params)
    cfg = p.finetune
    if not cfg.enabled:
        write_skipped(out, metrics_out, plots_dir)
        return
    accelerator = dse.accelerator_name()
    base = resolve_base_model(cfg.base_model)
    from pipelines.classifier.lora import build_model

    labels = sorted(read_split(data_dir, "train", columns=["label"])["label"].astype(str).unique())
    model = build_model(base, labels, cfg, on_meta=True)  # targets + analytic count, no weights loaded
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    check_world_size(cfg, accelerator, "finetune")
    prepare_checkpoints(ckpt_dir, resume)
    cmd = launcher_command(cfg, WORKER, params, data_dir, ckpt_dir, resume)
    launch(
        cmd,
        accelerator,
        f"finetune: {base}, full fine-tuning: {n_train:,} trainable parameters"
        if cfg.method == "full"
        else f"finetune: {base} + LoRA r={cfg.lora_r} on {cfg.target_modules}: {n_train:,} trainable parameters "
        "(matches the analytic count)",
    )
    evaluate_and_publish(p, ckpt_dir, data_dir, out, metrics_out, plots_dir)


if __name__ == "__main__":
    run_cli(main)
