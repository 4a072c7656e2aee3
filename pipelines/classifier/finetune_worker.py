"""One rank of the LoRA fine-tuning run. Started by the ``deepspeed`` launcher, never by hand:

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module pipelines.classifier.finetune_worker --params params.yaml

(``python -m pipelines.finetune`` builds that command from params and checks the inputs first.)

Dynamic padding and length-grouped batches (transformers' collator and sampler),
a progress bar on rank 0, validation macro-F1 after every epoch with early
stopping, a DeepSpeed checkpoint per epoch and ``--resume``. The adapter of the
best epoch is saved by rank 0 from fp32 master weights gathered across ranks, so
it is whole under ZeRO-3 too.

The loop itself (:func:`build_session`, :func:`run_epochs`) is shared with the hyperparameter search: a Ray Tune
trial (:mod:`pipelines.classifier.tuning`) runs it as one in-process rank through the same DeepSpeed engine, so
the recipe it scores is the one this stage trains.

Environment: ``FINETUNE_TRACEBACK=1`` shows a failing rank's traceback; ``FINETUNE_PROBE_DIR`` (tests
only, see :func:`probe_dir`) also writes the engine's logits on a few validation texts there.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from pipelines.classifier.base_model import resolve_base_model
from pipelines.classifier.lora import MeanPooledClassifier, build_model, load_tokenizer, optimizer_groups, unwrap
from pipelines.config import FinetuneConfig, load_params
from pipelines.io import read_split
from pipelines.registry import tracking
from pipelines.training import engine as dse
from pipelines.training import ranks
from pipelines.training.ranks import PROBE_ENV, probe_dir  # noqa: F401 - PROBE_ENV: tests set it

PROBE_TEXTS = 8


def sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A stratified sample of at most ``n`` rows (all rows when ``n`` is None or larger)."""
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    counts = df["label"].value_counts()
    strat = df["label"] if counts.min() >= 2 else None
    part, _ = train_test_split(df, train_size=n, random_state=seed, stratify=strat)
    return part.reset_index(drop=True)


def encode(tokenizer, texts: list[str], labels: list[int] | None, max_length: int) -> list[dict]:
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    rows = [{k: enc[k][i] for k in enc.keys()} for i in range(len(texts))]
    if labels is not None:
        for r, y in zip(rows, labels):
            r["labels"] = y
    return rows


def class_weights(cfg: FinetuneConfig, label_ids: list[int], n_classes: int) -> torch.Tensor | None:
    """``finetune.class_weight``: None (plain cross-entropy), or scikit-learn's balanced weights of the train
    labels, n / (classes x count), one per label id (the weighting ``baselines.class_weight`` gives TF-IDF)."""
    if cfg.class_weight == "none":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    w = compute_class_weight("balanced", classes=np.arange(n_classes), y=np.asarray(label_ids))
    return torch.tensor(w, dtype=torch.float32)


def batch_loss(model, batch: dict, weights: torch.Tensor | None) -> torch.Tensor:
    """The training loss of one batch: the model's own cross-entropy, or with ``weights`` the weighted one
    (torch's mean: each row's loss times its class weight, over the sum of those weights)."""
    if weights is None:
        return model(**batch).loss
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return torch.nn.functional.cross_entropy(logits.float(), batch["labels"], weight=weights.to(logits.device))


@torch.no_grad()
def predict_logits(module, rows: list[dict], collator, batch_size: int, rank: int, world: int, device) -> np.ndarray:
    """Logits for ``rows``, computed by all ranks together.

    Each rank takes an equal share: ZeRO-3 needs every rank in every forward."""
    order = np.argsort([len(r["input_ids"]) for r in rows], kind="stable")
    n_batches = int(np.ceil(len(rows) / batch_size))
    per_rank = int(np.ceil(n_batches / world))
    batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]
    batches += [batches[-1]] * (per_rank * world - n_batches)  # pad so every rank runs the same number of forwards
    mine = batches[rank::world]
    was_training = module.training
    module.eval()
    out: list[tuple[int, np.ndarray]] = []
    for idx in mine:
        batch = collator([{k: v for k, v in rows[i].items() if k != "labels"} for i in idx])
        logits = module(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
        out.extend(zip(idx.tolist(), logits))
    module.train(was_training)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, out)
    pairs = [pair for part in gathered for pair in part]
    result = np.zeros((len(rows), pairs[0][1].shape[0]), dtype=np.float32)
    for i, logit in pairs:
        result[i] = logit
    return result


def linear_probe_head(
    base: torch.nn.Module, rows: list[dict], collator, batch_size: int, me: ranks.Rank, info: dict
) -> None:
    """``finetune.head_init: linear_probe`` (LP-FT): the head of ``base`` (the loaded classifier, no adapter yet)
    set to a logistic regression fitted on the frozen base's pooled vectors of the train ``rows``, so training
    starts from a head that already separates the classes instead of random weights.

    Collective: the ranks share the forwards (:func:`predict_logits` with the head taken out: its output is then
    the pooled vector the head reads); each fits the same regression and rank 0's head is broadcast, so every
    rank starts from the same weights. Writes what it did into ``info``."""
    from sklearn.linear_model import LogisticRegression

    from pipelines.classifier.lora import head_name, set_head

    t0 = time.perf_counter()
    name = head_name(base)
    head = getattr(base, name)
    base.to(me.device)
    setattr(base, name, torch.nn.Identity())
    try:
        pooled = predict_logits(base, rows, collator, batch_size, me.rank, me.world, me.device)
    finally:
        setattr(base, name, head)
    y = np.asarray([r["labels"] for r in rows])
    probe = LogisticRegression(max_iter=2000, fit_intercept=head.bias is not None).fit(pooled, y)  # decoders: no bias
    set_head(head, probe.coef_, probe.intercept_)
    for param in (head.weight, head.bias):
        if param is not None:
            dist.broadcast(param.data, src=0)
    info["head_init_train_accuracy"] = float(probe.score(pooled, y))
    info["head_init_seconds"] = time.perf_counter() - t0
    if me.main:
        print(
            f"finetune: head from a linear probe of the frozen base on {len(rows):,} train rows "
            f"(train accuracy {info['head_init_train_accuracy']:.3f}, {info['head_init_seconds']:.0f}s)",
            flush=True,
        )


def write_probe(
    module, rows: list[dict], texts: list[str], collator, directory: Path, rank: int, world: int, device
) -> None:
    """Collective: the engine's logits on the first :data:`PROBE_TEXTS` rows; rank 0 writes ``probe.pt``."""
    logits = predict_logits(module, rows[:PROBE_TEXTS], collator, PROBE_TEXTS, rank, world, device)
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        probe = {"texts": texts[:PROBE_TEXTS], "logits": torch.from_numpy(logits)}
        torch.save({**probe, "dtype": str(next(module.parameters()).dtype)}, directory / "probe.pt")


@dataclass
class Session:
    """One rank's fine-tuning run, ready to train: the data as the loop reads it and the DeepSpeed engine.

    Built by :func:`build_session` and trained by :func:`run_epochs`, both for the DeepSpeed stage (every rank of
    the launcher's run) and for a hyperparameter-search trial (:mod:`pipelines.classifier.tuning`: one in-process
    rank), so a trial trains exactly as the stage does."""

    cfg: FinetuneConfig
    me: ranks.Rank
    labels: list[str]
    tokenizer: Any
    collator: Any
    train_rows: list[dict]
    val_rows: list[dict]
    val_texts: list[str]
    val_y: np.ndarray
    sampler: Any
    loader: Any
    steps_per_epoch: int
    engine: Any
    run_info: dict = field(default_factory=dict)
    class_weights: torch.Tensor | None = None  # finetune.class_weight balanced: one weight per label id


def load_splits(data_dir: Path, cfg: FinetuneConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The train and validation rows a run uses: stratified samples capped by ``max_train/eval_samples``."""
    train_df = sample(read_split(data_dir, "train"), cfg.max_train_samples, cfg.seed)
    val_df = sample(read_split(data_dir, "val"), cfg.max_eval_samples, cfg.seed)
    return train_df, val_df


def build_session(
    cfg: FinetuneConfig, me: ranks.Rank, train_df: pd.DataFrame, val_df: pd.DataFrame, base_path: str
) -> Session:
    """Tokenise, batch (length-grouped or shuffled, sharded by rank), build the LoRA model and its DeepSpeed engine.

    ``me``: this rank (:func:`pipelines.training.ranks.start` has initialised the process group)."""
    from transformers import DataCollatorWithPadding
    from transformers.trainer_pt_utils import DistributedLengthGroupedSampler

    torch.manual_seed(cfg.seed)
    rank, world = me.rank, me.world
    labels = sorted(train_df["label"].astype(str).unique())
    label_id = {c: i for i, c in enumerate(labels)}
    tokenizer = load_tokenizer(base_path)  # a decoder's without a padding token pads with its end of sequence
    collator = DataCollatorWithPadding(tokenizer)
    train_rows = encode(tokenizer, train_df["text"].tolist(), [label_id[y] for y in train_df["label"]], cfg.max_length)
    val_rows = encode(tokenizer, val_df["text"].tolist(), None, cfg.max_length)
    val_y = val_df["label"].astype(str).map(label_id).fillna(-1).astype(int).to_numpy()

    if cfg.group_by_length:  # similar lengths per batch: far less padding, the main CPU cost
        sampler = DistributedLengthGroupedSampler(
            cfg.micro_batch_size,
            num_replicas=world,
            rank=rank,
            seed=cfg.seed,
            lengths=[len(r["input_ids"]) for r in train_rows],
        )
    else:  # when length predicts the label, grouped batches are one class at a time and training oscillates
        sampler = torch.utils.data.DistributedSampler(
            train_rows, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
        )
    loader = torch.utils.data.DataLoader(
        train_rows, batch_size=cfg.micro_batch_size, sampler=sampler, collate_fn=collator
    )
    steps_per_epoch = max(1, len(loader) // cfg.gradient_accumulation_steps)
    total_steps = cfg.smoke_steps or steps_per_epoch * cfg.epochs

    precision = dse.resolve_precision(cfg, me.accelerator)
    head_info: dict = {}
    init_head = (
        functools.partial(
            linear_probe_head, rows=train_rows, collator=collator, batch_size=cfg.micro_batch_size * 2, me=me,
            info=head_info,
        )
        if cfg.head_init == "linear_probe"
        else None
    )  # fmt: skip
    model = build_model(base_path, labels, cfg, init_head=init_head)
    groups = optimizer_groups(model, cfg)  # the new head may learn faster than the adapters
    ds_config = dse.build_config(
        cfg, precision=precision, accelerator=me.accelerator, total_steps=total_steps, group_lrs=groups and groups[1]
    )
    engine = dse.initialize(model, ds_config, groups and groups[0])
    run_info = {
        "world_size": world,
        "precision": precision,
        "accelerator": me.accelerator,
        "zero_stage": cfg.zero_stage,
        "train_rows": len(train_rows),
        "val_rows": len(val_rows),
        "base_model_path": base_path,
        "pooling": "mean" if isinstance(unwrap(model), MeanPooledClassifier) else "cls",
        "ds_config": ds_config,
        "trainable_parameters": ranks.trainable_count(engine.module),
        **head_info,
    }
    weights = class_weights(cfg, [r["labels"] for r in train_rows], len(labels))
    if weights is not None:
        run_info["class_weights"] = dict(zip(labels, weights.tolist()))
    return Session(
        cfg, me, labels, tokenizer, collator, train_rows, val_rows, val_df["text"].tolist(), val_y,
        sampler, loader, steps_per_epoch, engine, run_info, weights,
    )  # fmt: skip


def new_state() -> dict:
    """What :func:`run_epochs` keeps between epochs (and a DeepSpeed checkpoint keeps for ``--resume``)."""
    return {"epoch": -1, "best_f1": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}


def run_epochs(s: Session, state: dict, on_epoch: Callable[[dict, bool], None], *, progress: bool = True) -> dict:
    """Train from the epoch after ``state["epoch"]`` to ``cfg.epochs``: one pass over the train rows, then
    validation macro-F1 (all ranks together); early stopping when ``early_stopping_patience`` epochs in a row
    without a gain are followed by one more, or at ``smoke_steps`` optimizer steps. Collective: every rank calls it.

    After each epoch ``state`` is updated (history, best epoch) and ``on_epoch(record, improved)`` is called on
    every rank: the stage saves the adapter and a checkpoint there, a search trial reports to Ray Tune.
    ``progress``: rank 0's bar and one line per epoch. Returns ``state``."""
    from tqdm.auto import tqdm

    cfg, engine, device, world = s.cfg, s.engine, s.me.device, s.me.world
    talk = progress and s.me.main
    stop = False
    for epoch in range(state["epoch"] + 1, cfg.epochs):
        s.sampler.set_epoch(epoch)
        engine.train()
        t0, seen, losses = time.perf_counter(), 0, []
        bar = tqdm(s.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not talk, unit="batch", file=sys.stdout)
        for batch in bar:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = batch_loss(engine, batch, s.class_weights)
            engine.backward(loss)
            engine.step()
            seen += len(batch["labels"]) * world
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if cfg.smoke_steps and engine.global_steps >= cfg.smoke_steps:
                stop = True
                break
        train_s = time.perf_counter() - t0
        logits = predict_logits(
            engine.module, s.val_rows, s.collator, cfg.micro_batch_size * 2, s.me.rank, world, device
        )
        val_f1 = float(
            f1_score(s.val_y, logits.argmax(1), labels=list(range(len(s.labels))), average="macro", zero_division=0)
        )
        record = {
            "epoch": epoch + 1,
            "step": int(engine.global_steps),
            "train_loss": float(np.mean(losses)),
            "val_macro_f1": val_f1,
            "samples_per_s": seen / train_s,
            "epoch_seconds": train_s,
        }
        state["history"].append(record)
        state["epoch"] = epoch
        improved = val_f1 > state["best_f1"]
        if improved:
            state.update(best_f1=val_f1, best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        on_epoch(record, improved)
        if talk:
            print(
                f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, val macro-F1 {val_f1:.4f}"
                f"{' (best)' if improved else ''}, {record['samples_per_s']:.1f} samples/s",
                flush=True,
            )
        if stop or state["bad_epochs"] > cfg.early_stopping_patience:
            if talk and not stop:
                print(f"early stopping: no val macro-F1 gain for {state['bad_epochs']} epoch(s)", flush=True)
            break
    return state


def train(args: argparse.Namespace) -> None:
    """The DeepSpeed stage's rank: train, keep the best epoch's adapter, a checkpoint per epoch, MLflow on rank 0."""
    me = ranks.start()
    rank = me.rank
    params = load_params(args.params)
    cfg: FinetuneConfig = params.finetune
    base_path = resolve_base_model(cfg.base_model)
    train_df, val_df = load_splits(args.data_dir, cfg)
    s = build_session(cfg, me, train_df, val_df, base_path)
    engine, run_info = s.engine, s.run_info
    frozen_before = ranks.frozen_checksum(engine.module)

    state = new_state()
    if args.resume:
        restored = dse.load_checkpoint(engine, args.ckpt_dir)  # also holds DeepSpeed's own metadata keys
        state.update({k: restored[k] for k in state if k in restored})
        if rank == 0:
            print(
                f"resumed from {args.ckpt_dir} after epoch {state['epoch'] + 1} "
                f"(optimizer step {engine.global_steps}); "
                f"continuing with epoch {state['epoch'] + 2}",
                flush=True,
            )
    if rank == 0:
        (args.ckpt_dir).mkdir(parents=True, exist_ok=True)
        (args.ckpt_dir / "ds_config.json").write_text(json.dumps(run_info["ds_config"], indent=2))
        print(
            f"finetune: {len(s.train_rows):,} train / {len(s.val_rows):,} val rows, {me.world} rank(s) on "
            f"{me.accelerator}, ZeRO-{cfg.zero_stage}, {run_info['precision']}, {s.steps_per_epoch} steps/epoch",
            flush=True,
        )

    def on_epoch(record: dict, improved: bool) -> None:
        """Collective: the best adapter (gathered), a DeepSpeed checkpoint; rank 0 logs the epoch to MLflow."""
        if improved:
            files = {
                "labels.json": json.dumps(s.labels),
                "training.json": json.dumps({**run_info, **record}, indent=2, default=str),
            }
            ranks.save_adapter(engine, args.ckpt_dir / "best_adapter", s.tokenizer, files, rank)
        dse.save_checkpoint(engine, args.ckpt_dir, tag=f"epoch-{record['epoch']}", client_state=state)
        if rank == 0:
            tracking.log_metrics({k: v for k, v in record.items() if k not in ("epoch", "step")}, step=record["epoch"])

    with contextlib.ExitStack() as stack:
        if rank == 0:  # only rank 0 talks to MLflow: params, per-epoch curves, the DeepSpeed config
            # the training precision under its own name: "precision" is the registered model's inference
            # precision, which log_model records as a param too (MLflow refuses a changed value, with a warning)
            info = {
                ("training_precision" if k == "precision" else k): v for k, v in run_info.items() if k != "ds_config"
            }
            logged = {"finetune": cfg.model_dump(), **info}
            stack.enter_context(
                ranks.mlflow_run(params.mlflow, args.ckpt_dir, args.resume, "finetune-lora", "finetune", logged)
            )
        run_epochs(s, state, on_epoch)

    probe_to = probe_dir()
    if probe_to is not None:  # tests only
        write_probe(engine.module, s.val_rows, s.val_texts, s.collator, probe_to, rank, me.world, me.device)
    state["frozen_weights_unchanged"] = ranks.frozen_unchanged(engine.module, frozen_before)
    if rank == 0:
        (args.ckpt_dir / "history.json").write_text(json.dumps({**run_info, **state}, indent=2, default=str))
    dist.barrier()
    dist.destroy_process_group()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    return ranks.worker_args(
        "One rank of the LoRA fine-tuning run (start it with the deepspeed launcher).",
        "data/processed",
        "models/transformer_ckpt",
        argv,
    )


if __name__ == "__main__":
    ranks.run_main(train, parse())
