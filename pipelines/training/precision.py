"""Whether this machine computes natively in bf16: the one answer for training and inference.

The DeepSpeed engine picks ``precision: auto`` from it (bf16 made a ZeRO-2 LoRA step ~2.5x faster on a
CPU with native bf16) and the frozen-encoder baseline turns on bf16 autocast from it. It imports neither
DeepSpeed nor (until asked about a GPU) torch, so the baselines use it without the training stack.
"""

from __future__ import annotations

from pathlib import Path

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 CPUs with native bf16 (AVX512-BF16 / AMX)


def cpu_flags() -> str:
    """The CPU's feature flags as the kernel reports them (``/proc/cpuinfo``); empty where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """True where the CPU advertises native bf16; False elsewhere (including non-Linux)."""
    flags = cpu_flags()
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def bf16_supported(accelerator: str = "cpu") -> bool:
    """Native bf16 on ``accelerator``: a visible GPU that supports it (``cuda``), else the CPU's flags."""
    if accelerator == "cuda":
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_bf16()
