"""One bf16 answer (pipelines.training.precision) for the DeepSpeed engine and the frozen-encoder baseline."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.classifier.encoder import MeanPoolEncoder
from pipelines.config import FinetuneConfig
from pipelines.training import engine, precision
from tests.helpers import ROOT

WITH_BF16 = "flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n"
WITHOUT = "flags\t\t: fpu sse2 avx2\n"


@pytest.mark.parametrize(
    "flags, native", [(WITH_BF16, True), (WITHOUT, False), ("flags: amx_bf16\n", True), ("", False)]
)
def test_both_callers_follow_the_cpu_flags(monkeypatch, flags: str, native: bool) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert precision.bf16_supported("cpu") is native
    assert engine.resolve_precision(FinetuneConfig(precision="auto"), "cpu") == ("bf16" if native else "fp32")
    assert MeanPoolEncoder(dtype="auto").uses_bf16() is native


def test_explicit_settings_win_over_the_detection(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: WITH_BF16)
    assert engine.resolve_precision(FinetuneConfig(precision="fp32"), "cpu") == "fp32"
    assert MeanPoolEncoder(dtype="float32").uses_bf16() is False
    monkeypatch.setattr(precision, "cpu_flags", lambda: WITHOUT)
    assert MeanPoolEncoder(dtype="bfloat16").uses_bf16() is True


def test_cuda_asks_torch_not_the_cpu(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(precision, "cpu_flags", lambda: WITH_BF16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.bf16_supported("cuda") is False
    assert engine.resolve_precision(FinetuneConfig(precision="auto"), "cuda") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert engine.resolve_precision(FinetuneConfig(precision="auto"), "cuda") == "bf16"


@pytest.mark.integration  # starts a Python process
def test_the_baseline_encoder_does_not_import_deepspeed() -> None:
    """The frozen-encoder baseline shares the detection without pulling in the training stack."""
    code = "import sys, pipelines.classifier.encoder; print('deepspeed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
