"""What every rank of a DeepSpeed run does the same way, whichever model family it trains.

- :func:`start`: library noise off, the process group up (gloo on the CPU accelerator), this rank's
  device and its share of the CPU threads;
- :func:`frozen_checksum`: a checksum of this rank's share of the frozen (base) weights, which must
  not move during LoRA training;
- :func:`save_adapter`: a collective; the fp32 trainable weights gathered across ranks (whole under
  ZeRO-3 too), written by rank 0 with the model's ``save_pretrained`` (peft's for an adapter; the whole
  model when every weight trains) beside the tokenizer and the family's own
  files, published by an atomic rename;
- :func:`mlflow_run`: rank 0's MLflow run, continued on ``--resume``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pipelines.logs import quiet_libraries
from pipelines.training import engine as dse

PROBE_ENV = "FINETUNE_PROBE_DIR"


def probe_dir(env: Mapping[str, str] = os.environ) -> Path | None:
    """Where the test-only probe goes, or None (every production run): only tests set ``FINETUNE_PROBE_DIR``.

    The probe is the engine's own logits on a few validation examples after the last step; a test
    reloads the published adapter and must get the same logits (the ZeRO-3 gather worked)."""
    value = env.get(PROBE_ENV)
    return Path(value) if value else None


@dataclass(frozen=True)
class Rank:
    rank: int
    world: int
    device: torch.device
    accelerator: str

    @property
    def main(self) -> bool:
        return self.rank == 0


def _quiet() -> None:
    """Known library noise off (:mod:`pipelines.logs`); DeepSpeed's per-rank INFO/WARNING lines too."""
    quiet_libraries()
    for name in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def start() -> Rank:
    """Initialise this rank: process group, device, CPU threads (the node's cores shared by its ranks)."""
    _quiet()
    dse.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    accelerator = dse.accelerator_name()
    if accelerator == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return Rank(rank, world, device, accelerator)


def frozen_checksum(module) -> float:
    """Checksum of this rank's share of the frozen (base) weights: it must not move during training."""
    total = torch.zeros((), dtype=torch.float64)
    for p in module.parameters():
        if not p.requires_grad:
            t = getattr(p, "ds_tensor", None)  # ZeRO-3 keeps only a partition in ds_tensor
            t = p.data if t is None or t.numel() == 0 else t
            flat = t.detach().reshape(-1).to(torch.float64)
            total += (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder(97)).sum()
    return float(total)


def trainable_count(module) -> int:
    """Trainable parameters of the whole model: under ZeRO-3 a parameter holds only its partition, so count
    ``ds_numel`` (the full size DeepSpeed records) where it is there."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters() if p.requires_grad)


def frozen_unchanged(module, before: float) -> bool:
    """Collective: True when no rank's frozen-weight checksum moved since ``before``."""
    unchanged = torch.tensor([float(frozen_checksum(module) == before)])
    dist.all_reduce(unchanged, op=dist.ReduceOp.MIN)
    return bool(unchanged.item() == 1.0)


def save_adapter(engine, directory: Path, tokenizer, files: dict[str, str], rank: int) -> None:
    """Collective: gather the fp32 trainable weights; rank 0 writes adapter, tokenizer and ``files`` (name: text)."""
    state = dse.full_trainable_state(engine)
    if rank == 0:
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        engine.module.save_pretrained(str(tmp), state_dict=state)
        tokenizer.save_pretrained(str(tmp))
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    dist.barrier()


@contextlib.contextmanager
def mlflow_run(mlflow_cfg, ckpt_dir: Path, resume: bool, name: str, stage: str, logged: dict) -> Iterator[object]:
    """Rank 0's training run in MLflow, continued on ``--resume``; its id is kept beside the checkpoints.

    ``logged`` (params) is logged only when the run starts; the DeepSpeed config file is attached."""
    from pipelines.registry import tracking

    tracking.setup(mlflow_cfg)
    id_file = ckpt_dir / "mlflow_run_id"
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
    with tracking.run(name, stage, params=None if run_id else logged, run_id=run_id) as active:
        id_file.write_text(active.info.run_id)
        tracking.log_artifacts(ckpt_dir / "ds_config.json")
        yield active


def worker_args(description: str, data_dir: str, ckpt_dir: str, argv: list[str] | None = None):
    """The arguments every rank script takes (the launcher adds ``--local_rank``)."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--data-dir", type=Path, default=Path(data_dir))
    ap.add_argument("--ckpt-dir", type=Path, default=Path(ckpt_dir))
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --ckpt-dir")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by the launcher
    return ap.parse_args(argv)


def run_main(train, args) -> None:
    """Run a rank's ``train(args)``; a failure is one clear line (the launcher then stops the other ranks).

    ``FINETUNE_TRACEBACK=1`` shows the traceback. The rank leaves with ``os._exit`` once its streams are flushed
    (its outputs are written and its MLflow run closed by then), as :func:`pipelines.errors.fail` does: a normal
    interpreter teardown with torch's and gloo's native threads alive intermittently aborted with "terminate
    called without an active exception" (exit 250 from the launcher) after a run that had succeeded."""
    import sys

    code = 0
    try:
        train(args)
    except Exception as err:
        print(f"error (rank {os.environ.get('RANK', '?')}): {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        if os.environ.get("FINETUNE_TRACEBACK"):
            raise
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
