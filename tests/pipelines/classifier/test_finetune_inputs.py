"""Bad fine-tuning inputs are refused before any rank starts, with one clear line and a non-zero exit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines.classifier.base_model import resolve_base_model
from pipelines.classifier.lora import build_model
from pipelines.config import FinetuneConfig
from pipelines.errors import ConfigError, PipelineError
from pipelines.training.engine import build_config
from tests.helpers import ROOT

LABELS = [f"class_{i}" for i in range(10)]


def test_trainable_count_matches_the_analytic_formula():
    """MiniLM-L6: hidden 384, 6 layers. query+value: 12 layers of r*(384+384), plus a 384x10 head with bias."""
    cfg = FinetuneConfig(target_modules=["query", "value"], lora_r=8)
    model = build_model(resolve_base_model("minilm"), LABELS, cfg, on_meta=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 6 * 2 * 8 * (384 + 384) + 384 * 10 + 10 == 77_578


def test_all_linear_targets_count():
    cfg = FinetuneConfig(target_modules=["query", "key", "value", "dense"], lora_r=4, pooling="cls")
    model = build_model(resolve_base_model("minilm"), LABELS, cfg, on_meta=True)
    per_layer = 3 * (384 + 384) + (384 + 384) + (384 + 1536) + (1536 + 384)  # q,k,v, attn out, ffn in, ffn out
    expected = 4 * (6 * per_layer + (384 + 384)) + 384 * 10 + 10  # + pooler.dense
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_wrong_target_module_fails_loudly_naming_the_real_layers():
    with pytest.raises(
        ConfigError, match=r"q_proj.*match no linear layer.*\['classifier', 'dense', 'key', 'query', 'value'\]"
    ):
        build_model(
            resolve_base_model("minilm"), LABELS, FinetuneConfig(target_modules=["query", "q_proj"]), on_meta=True
        )


def test_deepspeed_config_comes_from_params():
    cfg = FinetuneConfig(
        zero_stage=3,
        micro_batch_size=4,
        gradient_accumulation_steps=2,
        gradient_clipping=0.5,
        learning_rate=2e-4,
        warmup_ratio=0.1,
    )
    ds = build_config(cfg, precision="bf16", accelerator="cpu", total_steps=100)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["optimizer"]["params"]["lr"] == 2e-4 and ds["optimizer"]["params"]["torch_adam"] is True
    assert 0 < ds["scheduler"]["params"]["warmup_min_lr"] < 2e-4  # step 1 runs at warmup_min_lr: never 0
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 10 and ds["scheduler"]["params"]["total_num_steps"] == 100


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    pd.DataFrame({"id": ["a", "b"], "text": ["x y", "z w"], "label": ["p", "q"]}).to_parquet(d / "train.parquet")
    return d


def _cli(tmp_path: Path, data_dir: Path, finetune: dict, *extra: str) -> subprocess.CompletedProcess:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"finetune": finetune}))
    cmd = [
        sys.executable,
        "-m",
        "pipelines.finetune",
        "--params",
        str(params),
        "--data-dir",
        str(data_dir),
        "--ckpt-dir",
        str(tmp_path / "ckpt"),
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )


def _main(tmp_path: Path, data_dir: Path, finetune: dict, resume: bool = False) -> None:
    from pipelines.finetune import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"finetune": finetune}))
    main(params=params, data_dir=data_dir, ckpt_dir=tmp_path / "ckpt", out=tmp_path / "out", resume=resume)


@pytest.mark.parametrize(
    "finetune, expected",
    [
        ({"base_model": "./no/such/model"}, "no/such/model"),
        ({"target_modules": ["q_proj"]}, "q_proj"),
        ({"world_size": 4096}, "world_size is 4096 but this machine has"),
        ({"lora_r": 0}, "finetune.lora_r"),
    ],
)
def test_bad_inputs_are_refused_before_launch(tmp_path, data_dir, finetune, expected):
    with pytest.raises(PipelineError, match=re.escape(expected)):
        _main(tmp_path, data_dir, finetune)
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()


def test_cli_turns_a_bad_input_into_one_line_and_exit_2(tmp_path, data_dir):
    proc = _cli(tmp_path, data_dir, {"world_size": 4096})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: finetune.world_size is 4096")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_resume_without_a_checkpoint_is_refused(tmp_path, data_dir):
    with pytest.raises(PipelineError, match="no checkpoint"):
        _main(tmp_path, data_dir, {}, resume=True)


def test_resume_from_a_corrupt_checkpoint_is_refused(tmp_path, data_dir):
    tag = tmp_path / "ckpt" / "epoch-1"
    tag.mkdir(parents=True)
    (tmp_path / "ckpt" / "latest").write_text("epoch-1")
    (tag / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"\x00not a torch file")
    with pytest.raises(PipelineError, match="corrupt"):
        _main(tmp_path, data_dir, {}, resume=True)


def test_a_disabled_finetune_still_writes_every_output_dvc_declares(tmp_path, data_dir, monkeypatch):
    """`dvc repro` with finetune.enabled: false fails on any declared out, metric or plot that is missing."""
    from pipelines.finetune import main

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["finetune"]
    declared = [next(iter(x)) if isinstance(x, dict) else x for key in ("outs", "metrics", "plots") for x in stage[key]]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"finetune": {"enabled": False}}))
    main(params=tmp_path / "params.yaml", data_dir=data_dir, ckpt_dir=tmp_path / "ckpt")
    missing = [p for p in declared if not (tmp_path / p).exists()]
    assert not missing, f"declared by dvc.yaml but not written when skipped: {missing}"
    assert json.loads((tmp_path / "metrics/finetune.json").read_text())["skipped"] is True
