"""The DeepSpeed wrapper: config from params, engine, checkpoints, gathered weights.

This is the only module that imports deepspeed, so an upgrade touches one file.
It runs on GPUs (NCCL) and, here, on the CPU accelerator (``DS_ACCELERATOR=cpu``,
gloo): the same code, selected by the environment only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipelines.config import DeepSpeedConfig
from pipelines.training.precision import bf16_supported


def accelerator_name() -> str:
    """'cuda' when a GPU is visible (and DS_ACCELERATOR does not say otherwise), else 'cpu'."""
    forced = os.environ.get("DS_ACCELERATOR")
    if forced:
        return forced
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(cfg: DeepSpeedConfig, accelerator: str) -> str:
    """``<section>.precision``, with ``auto`` resolved by :func:`pipelines.training.precision.bf16_supported`."""
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if bf16_supported(accelerator) else "fp32"


def devices_available(accelerator: str) -> int:
    """How many ranks one node can run: GPUs, or CPU cores on the CPU accelerator."""
    if accelerator == "cuda":
        return torch.cuda.device_count()
    return os.cpu_count() or 1


def build_config(
    cfg: DeepSpeedConfig,
    *,
    precision: str,
    accelerator: str,
    total_steps: int,
    group_lrs: list[float] | None = None,
) -> dict[str, Any]:
    """The DeepSpeed JSON config, generated from a training section of params (``finetune`` or ``sft``).

    ``group_lrs``: one peak learning rate per parameter group given to :func:`initialize` (e.g. a new
    classification head faster than the adapters); the schedule warms up and decays each group to its own peak.
    """
    warmup = int(cfg.warmup_ratio * total_steps)
    peak: float | list[float] = list(group_lrs) if group_lrs else cfg.learning_rate
    floor: float | list[float] = [0.01 * lr for lr in group_lrs] if group_lrs else 0.01 * cfg.learning_rate
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": cfg.gradient_clipping,
        "zero_optimization": {
            "stage": cfg.zero_stage,
            "overlap_comm": accelerator == "cuda",
            "contiguous_gradients": True,
            **({"stage3_gather_16bit_weights_on_model_save": True} if cfg.zero_stage == 3 else {}),
        },
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW on CPU; DeepSpeed's fused kernel on GPUs.
            "params": {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay, "torch_adam": accelerator == "cpu"},
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            # DeepSpeed steps the scheduler after the optimizer, so step 1 runs at warmup_min_lr:
            # start warm-up at 1% of the peak rather than 0, or a one-step run trains nothing.
            "params": {
                "warmup_min_lr": floor,
                "warmup_max_lr": peak,
                "warmup_num_steps": max(warmup, 1),
                "total_num_steps": max(total_steps, warmup + 1),
            },
        },
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def initialize(model: nn.Module, ds_config: dict[str, Any], param_groups: list[dict] | None = None):
    """Wrap ``model`` in a DeepSpeed engine (optimizer and scheduler from the config).

    ``param_groups``: torch optimizer groups (``{"params": [...]}``), in the order of ``build_config``'s
    ``group_lrs``; default one group of every trainable parameter."""
    import deepspeed

    params = param_groups if param_groups is not None else [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    return engine


def init_distributed() -> None:
    """Join the process group (gloo on the CPU accelerator, whose op DeepSpeed builds here from a private copy:
    see :mod:`pipelines.training.cpu_ops`)."""
    import deepspeed

    cpu = accelerator_name() == "cpu"
    if cpu:
        from pipelines.training.cpu_ops import ensure_private_extensions

        ensure_private_extensions()
    deepspeed.init_distributed(dist_backend="gloo" if cpu else None)


def full_trainable_state(engine) -> dict[str, torch.Tensor]:
    """fp32 master copies of the trainable parameters, gathered across ranks (ZeRO-2 and ZeRO-3).

    A collective: every rank must call it. Without the gather a ZeRO-3 adapter saves empty.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, p in engine.module.named_parameters():
        if p.requires_grad:
            full = safe_get_full_fp32_param(p)
            state[name] = (full if full is not None else p.detach().float()).cpu().clone()
    return state


def save_checkpoint(engine, directory: Path, tag: str, client_state: dict) -> None:
    """Engine + optimizer + scheduler state of the trainable parameters only (about 1 MB for LoRA)."""
    engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, exclude_frozen_parameters=True)


def checkpoint_safe_globals() -> list[type]:
    """The classes DeepSpeed pickles into its checkpoint files besides tensors and plain containers (seen in the
    ZeRO-2/3 fp32/bf16 optimizer shards; the model-states files hold none): what a ``weights_only`` load of a
    shard needs. Each is plain data (an enum, a dataclass, a loss-scale holder); nothing else is allowed."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]


def read_checkpoint_file(path: Path) -> Any:
    """One checkpoint file with ``torch.load(weights_only=True)`` and only :func:`checkpoint_safe_globals`
    (DeepSpeed's own loader unpickles with ``weights_only=False``: read a shard this way first)."""
    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(engine, directory: Path) -> dict:
    """Resume from the latest checkpoint in ``directory``; return its client state."""
    path, client_state = engine.load_checkpoint(str(directory), load_module_strict=False)
    if path is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint found in {directory}")
    return client_state or {}
