"""``python -m pipelines.sft``: LoRA supervised fine-tuning of the instruct LM under DeepSpeed ZeRO.

Everything that can be checked is checked before any rank starts: the base model is resolved once
(a packaged GGUF is de-quantized into ``llm.cache_dir`` here, not by every rank), the LoRA targets and
the analytic trainable count on a shapes-only copy of the model, the world size against the machine,
the checkpoint on ``--resume``. Then the shared launcher (:mod:`pipelines.training.launch`) runs
:mod:`pipelines.llm.sft_worker` on every rank. On success the best epoch's adapter (with the tokenizer
and ``sft.json``) is published to ``models/llm/`` and its training figures to ``metrics/sft.json``. With
``llm.enabled: false`` nothing of this runs: both are 'skipped' records (:mod:`pipelines.llm.skipping`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import load_params
from pipelines.errors import PipelineError, run_cli
from pipelines.io import atomic_outputs, write_json
from pipelines.llm.base_model import resolve_base_model
from pipelines.llm.lora import build_lora_model, load_causal_lm
from pipelines.llm.skipping import skip_if_disabled
from pipelines.training import engine as dse
from pipelines.training.launch import check_world_size, launch, launcher_command, prepare_checkpoints
from pipelines.training.lora import trainable_parameters

WORKER = "pipelines.llm.sft_worker"  # what the launcher runs on every rank


def publish(ckpt_dir: Path, out: Path, metrics_out: Path) -> dict:
    """Copy the best adapter to ``out`` and write the run's figures; both or neither."""
    history = json.loads((ckpt_dir / "history.json").read_text(encoding="utf-8"))
    if not history.get("frozen_weights_unchanged", False):
        raise PipelineError("the frozen base weights changed during LoRA training: the adapter is not published")
    if not (ckpt_dir / "best_adapter").is_dir():
        raise PipelineError(f"the run left no adapter in {ckpt_dir / 'best_adapter'}")
    epochs = history.get("history", [])
    best = next((h for h in epochs if h["epoch"] == history.get("best_epoch")), epochs[-1] if epochs else {})
    summary = {
        "model": "lora_sft",
        "base_model": history.get("base_model"),
        "train_examples": history.get("train_examples"),
        "val_examples": history.get("val_examples"),
        "best_epoch": history.get("best_epoch"),
        "epochs_run": len(epochs),
        "train_loss": best.get("train_loss"),
        "val_loss": best.get("val_loss"),
        "tokens_per_s": max((h["tokens_per_s"] for h in epochs), default=None),
        "world_size": history.get("world_size"),
        "zero_stage": history.get("zero_stage"),
        "precision": history.get("precision"),
        "trainable_parameters": history.get("trainable_parameters"),
        "frozen_weights_unchanged": history.get("frozen_weights_unchanged"),
    }
    with atomic_outputs(out, metrics_out) as staged:
        shutil.copytree(ckpt_dir / "best_adapter", staged[out])
        shutil.copy(ckpt_dir / "history.json", staged[out] / "history.json")
        write_json(summary, staged[metrics_out])
    return summary


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    data_dir: Annotated[Path, typer.Option(help="chat examples (train/val JSONL) from the sft_data stage")] = Path(
        "data/sft"
    ),
    ckpt_dir: Annotated[Path, typer.Option(help="DeepSpeed checkpoints (one per epoch)")] = Path("models/llm_ckpt"),
    out: Annotated[Path, typer.Option(help="where the best adapter and tokenizer are published")] = Path("models/llm"),
    metrics_out: Annotated[Path, typer.Option(help="training figures (JSON)")] = Path("metrics/sft.json"),
    resume: Annotated[bool, typer.Option("--resume", help="continue from the latest checkpoint in --ckpt-dir")] = False,
) -> None:
    """Fine-tune the instruct LM with LoRA on the chat examples (world size, ZeRO stage, precision from params)."""
    p = load_params(params)
    if skip_if_disabled(p.llm, "sft", out, metrics_out, model="lora_sft"):
        return
    cfg, llm = p.sft, p.llm
    for split in ("train", "val"):
        if not (data_dir / f"{split}.jsonl").is_file():
            raise PipelineError(f"{data_dir / f'{split}.jsonl'} is missing: run the sft_data stage first")
    accelerator = dse.accelerator_name()
    base = resolve_base_model(llm.base_model, llm.cache_dir)  # once, before the ranks start
    n_train = trainable_parameters(build_lora_model(load_causal_lm(base, on_meta=True), llm))  # shapes only
    check_world_size(cfg, accelerator, "sft")
    prepare_checkpoints(ckpt_dir, resume)
    cmd = launcher_command(cfg, WORKER, params, data_dir, ckpt_dir, resume)
    launch(
        cmd,
        accelerator,
        f"sft: {base} + LoRA r={llm.lora_r} on {llm.target_modules}: {n_train:,} trainable parameters "
        "(matches the analytic count)",
    )
    s = publish(ckpt_dir, out, metrics_out)
    print(
        f"sft: val loss {s['val_loss']:.4f} (epoch {s['best_epoch']}), {s['tokens_per_s']:.0f} tokens/s; "
        f"adapter published to {out}"
    )


if __name__ == "__main__":
    run_cli(main)
