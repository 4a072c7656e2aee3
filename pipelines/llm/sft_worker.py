"""One rank of the generative model's LoRA SFT run. Started by the ``deepspeed`` launcher, never by hand:

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module pipelines.llm.sft_worker --params params.yaml

(``python -m pipelines.sft`` builds that command from params and checks the inputs first.)

The same engine, checkpoints and adapter gathering as the classifier (:mod:`pipelines.training`):
the chat examples of ``data/sft`` tokenised with the chat template and loss on the assistant answer
only (:mod:`pipelines.llm.sft`), length-grouped batches split across ranks, a progress bar with
tokens/s on rank 0, validation loss after every epoch, a DeepSpeed checkpoint per epoch and
``--resume``. The adapter of the epoch with the lowest validation loss is saved from fp32 weights
gathered across ranks (whole under ZeRO-3 too).

Environment: ``FINETUNE_TRACEBACK=1`` shows a failing rank's traceback; ``FINETUNE_PROBE_DIR`` (tests
only) also writes the engine's logits on the first validation examples there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pipelines.config import load_params
from pipelines.llm.base_model import resolve_base_model
from pipelines.llm.chat_data import read_examples
from pipelines.llm.lora import build_lora_model, load_causal_lm
from pipelines.llm.sft import LengthGroupedBatchSampler, causal_lm_loss, collator_for, encode_dataset
from pipelines.registry import tracking
from pipelines.training import engine as dse
from pipelines.training import ranks

PROBE_EXAMPLES = 4


def conversations(data_dir: Path, split: str) -> list[list[dict]]:
    return [e["messages"] for e in read_examples(data_dir / f"{split}.jsonl")]


@torch.no_grad()
def validation_loss(module, rows: list[dict], collator, batch_size: int, me: ranks.Rank) -> float:
    """Mean loss per answer token over ``rows``, computed by all ranks together (each runs the same number of
    forwards: ZeRO-3 needs every rank in every forward; the padding batches weigh nothing)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    per_rank = -(-len(batches) // me.world)
    weights = [1.0] * len(batches) + [0.0] * (per_rank * me.world - len(batches))
    batches += [batches[-1]] * (per_rank * me.world - len(batches))
    was_training = module.training
    module.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for b in range(me.rank, len(batches), me.world):
        batch = {k: v.to(me.device) for k, v in collator([rows[i] for i in batches[b]]).items()}
        loss, n = causal_lm_loss(module, batch)
        total += torch.tensor([float(loss) * n * weights[b], n * weights[b]], dtype=torch.float64)
    module.train(was_training)
    dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def write_probe(module, rows: list[dict], collator, directory: Path, me: ranks.Rank) -> None:
    """Collective (ZeRO-3 gathers in every forward): the engine's logits on the first examples; rank 0 saves them."""
    batch = {k: v.to(me.device) for k, v in collator(rows[:PROBE_EXAMPLES]).items()}
    module.eval()
    with torch.no_grad():
        logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().cpu()
    if me.main:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({"batch": {k: v.cpu() for k, v in batch.items()}, "logits": logits}, directory / "probe.pt")


def train(args: argparse.Namespace) -> None:
    me = ranks.start()
    params = load_params(args.params)
    cfg, llm = params.sft, params.llm
    torch.manual_seed(cfg.seed)
    base_path = resolve_base_model(llm.base_model, llm.cache_dir)  # converted before launch: a cache hit here

    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    train_rows, train_stats = encode_dataset(tokenizer, conversations(args.data_dir, "train"), llm.max_length)
    val_rows, _ = encode_dataset(tokenizer, conversations(args.data_dir, "val"), llm.max_length)
    collator = collator_for(tokenizer)
    sampler = LengthGroupedBatchSampler(
        [len(r["input_ids"]) for r in train_rows], cfg.micro_batch_size, cfg.seed, me.world, me.rank
    )
    loader = torch.utils.data.DataLoader(train_rows, batch_sampler=sampler, collate_fn=collator)
    steps_per_epoch = max(1, len(loader) // cfg.gradient_accumulation_steps)
    total_steps = cfg.smoke_steps or steps_per_epoch * cfg.epochs

    precision = dse.resolve_precision(cfg, me.accelerator)
    ds_config = dse.build_config(cfg, precision=precision, accelerator=me.accelerator, total_steps=total_steps)
    model = build_lora_model(load_causal_lm(base_path), llm)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    engine = dse.initialize(model, ds_config)
    frozen_before = ranks.frozen_checksum(engine.module)

    state = {"epoch": -1, "best_val_loss": float("inf"), "best_epoch": -1, "history": []}
    if args.resume:
        restored = dse.load_checkpoint(engine, args.ckpt_dir)  # also holds DeepSpeed's own metadata keys
        state.update({k: restored[k] for k in state if k in restored})
        if me.main:
            print(
                f"resumed from {args.ckpt_dir} after epoch {state['epoch'] + 1} (optimizer step "
                f"{engine.global_steps}); continuing with epoch {state['epoch'] + 2}",
                flush=True,
            )
    run_info = {
        "world_size": me.world,
        "precision": precision,
        "accelerator": me.accelerator,
        "zero_stage": cfg.zero_stage,
        "train_examples": len(train_rows),
        "val_examples": len(val_rows),
        "encoding": train_stats.as_dict(),
        "base_model": llm.base_model,
        "base_model_path": base_path,
        "ds_config": ds_config,
        "trainable_parameters": ranks.trainable_count(engine.module),
    }
    if me.main:
        args.ckpt_dir.mkdir(parents=True, exist_ok=True)
        (args.ckpt_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2))
        print(
            f"sft: {len(train_rows):,} train / {len(val_rows):,} val examples, {me.world} rank(s) on "
            f"{me.accelerator}, ZeRO-{cfg.zero_stage}, {precision}, {steps_per_epoch} steps/epoch",
            flush=True,
        )

    with contextlib.ExitStack() as stack:
        if me.main:  # only rank 0 talks to MLflow
            logged = {"sft": cfg.model_dump(), "llm": llm.model_dump(exclude={"system_prompt"}), **run_info}
            logged.pop("ds_config")
            stack.enter_context(ranks.mlflow_run(params.mlflow, args.ckpt_dir, args.resume, "sft-lora", "sft", logged))
        stop = False
        for epoch in range(state["epoch"] + 1, cfg.epochs):
            sampler.set_epoch(epoch)
            engine.train()
            t0, tokens, answer_tokens, losses = time.perf_counter(), 0, 0, []
            bar = tqdm(
                loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not me.main, unit="batch", file=sys.stdout
            )
            for batch in bar:
                batch = {k: v.to(me.device) for k, v in batch.items()}
                loss, n = causal_lm_loss(engine, batch)
                engine.backward(loss)
                engine.step()
                tokens += int(batch["attention_mask"].sum())
                answer_tokens += n
                losses.append(float(loss.detach()))
                rate = tokens * me.world / (time.perf_counter() - t0)  # every rank runs batches of similar size
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", tok_s=f"{rate:.0f}")
                if cfg.smoke_steps and engine.global_steps >= cfg.smoke_steps:
                    stop = True
                    break
            train_s = time.perf_counter() - t0
            counted = torch.tensor([tokens, answer_tokens], dtype=torch.float64)
            dist.all_reduce(counted)
            val_loss = validation_loss(engine.module, val_rows, collator, cfg.micro_batch_size, me)
            record = {
                "epoch": epoch + 1,
                "step": int(engine.global_steps),
                "train_loss": sum(losses) / max(1, len(losses)),
                "val_loss": val_loss,
                "tokens_per_s": float(counted[0]) / train_s,
                "answer_tokens_per_s": float(counted[1]) / train_s,
                "epoch_seconds": train_s,
            }
            state["history"].append(record)
            state["epoch"] = epoch
            improved = val_loss < state["best_val_loss"]
            if improved:
                state.update(best_val_loss=val_loss, best_epoch=epoch + 1)
                files = {"sft.json": json.dumps({**run_info, **record}, indent=2, default=str)}
                ranks.save_adapter(engine, args.ckpt_dir / "best_adapter", tokenizer, files, me.rank)
            dse.save_checkpoint(engine, args.ckpt_dir, tag=f"epoch-{epoch + 1}", client_state=state)
            if me.main:
                tracking.log_metrics({k: v for k, v in record.items() if k not in ("epoch", "step")}, step=epoch + 1)
                print(
                    f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, val loss {val_loss:.4f}"
                    f"{' (best)' if improved else ''}, {record['tokens_per_s']:.0f} tokens/s",
                    flush=True,
                )
            if stop:
                break

    probe_to = ranks.probe_dir()
    if probe_to is not None:  # tests only
        write_probe(engine.module, val_rows, collator, probe_to, me)
    state["frozen_weights_unchanged"] = ranks.frozen_unchanged(engine.module, frozen_before)
    if me.main:
        (args.ckpt_dir / "history.json").write_text(json.dumps({**run_info, **state}, indent=2, default=str))
    dist.barrier()
    dist.destroy_process_group()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    return ranks.worker_args(
        "One rank of the LoRA SFT run (start it with the deepspeed launcher).", "data/sft", "models/llm_ckpt", argv
    )


if __name__ == "__main__":
    ranks.run_main(train, parse())
