"""``--resume`` reads a checkpoint folder before any rank starts: only the folder ``latest`` names inside it, and
only with ``torch.load(weights_only=True)`` plus the few plain-data classes DeepSpeed pickles.

A pickle that would run code is refused before DeepSpeed's own loader (``weights_only=False``) sees it; the
slow test writes real DeepSpeed shards (a tiny model, one CPU rank) and checks they need nothing more.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.errors import PipelineError
from pipelines.training.launch import check_checkpoint
from tests.helpers import ROOT


class RunsCode:
    """Unpickling it calls ``Path.touch`` on ``marker``: what any code in a pickle could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _checkpoint(root: Path, tag: str = "epoch-1", payload: object = None) -> Path:
    (root / tag).mkdir(parents=True, exist_ok=True)
    torch.save(
        payload if payload is not None else {"module": {"w": torch.ones(2)}}, root / tag / "mp_rank_00_model_states.pt"
    )
    (root / "latest").write_text(tag)
    return root


def test_a_plain_checkpoint_passes(tmp_path):
    check_checkpoint(_checkpoint(tmp_path / "ckpt"))


def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    ckpt = _checkpoint(tmp_path / "ckpt", payload={"module": {}, "extra": RunsCode(marker)})
    with pytest.raises(PipelineError, match=r"mp_rank_00_model_states.pt is corrupt or unsafe to load"):
        check_checkpoint(ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("tag", ["../outside", "/ABS", "..", ".", "", "epoch-1/../../outside", "link"])
def test_latest_must_name_a_folder_directly_inside_the_checkpoint_dir(tmp_path, tag):
    outside = _checkpoint(tmp_path / "outside", tag="epoch-1") / "epoch-1"  # a readable checkpoint elsewhere
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "link").symlink_to(outside, target_is_directory=True)
    (ckpt / "latest").write_text(tag.replace("/ABS", str(outside)))
    with pytest.raises(PipelineError, match="not a checkpoint folder directly inside"):
        check_checkpoint(ckpt)


SHARDS = """
import os, socket, sys
from pathlib import Path
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import torch
from torch import nn
from pipelines.config import FinetuneConfig
from pipelines.training import engine as dse
out, stage, precision = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
model[0].weight.requires_grad_(False)  # frozen, as the LoRA base model (not saved)
cfg = FinetuneConfig(zero_stage=stage, micro_batch_size=4, precision=precision)
dse.init_distributed()
engine = dse.initialize(model, dse.build_config(cfg, precision=precision, accelerator="cpu", total_steps=4))
x = torch.randn(4, 8, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
engine.backward(engine(x).float().pow(2).mean())
engine.step()
state = {"epoch": 0, "best_f1": 0.5, "best_epoch": 1, "bad_epochs": 0, "history": [{"epoch": 1, "step": 1}]}
dse.save_checkpoint(engine, out, tag="epoch-1", client_state=state)
"""


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("stage, precision", [(2, "fp32"), (3, "bf16")])
def test_real_deepspeed_shards_load_with_weights_only(tmp_path, stage, precision):
    """What DeepSpeed writes (engine + optimizer shards, client state) needs only the allowlisted classes."""
    from pipelines.training.engine import checkpoint_safe_globals

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SHARDS, str(tmp_path / "ckpt"), str(stage), precision],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted((tmp_path / "ckpt" / "epoch-1").glob("*.pt"))
    assert any("optim_states" in f.name for f in files) and any("model_states" in f.name for f in files)
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in checkpoint_safe_globals()}
    needed = {g for f in files for g in torch.serialization.get_unsafe_globals_in_checkpoint(f)}
    assert needed and needed <= allowed, needed - allowed  # the optimizer shards pickle DeepSpeed classes
    check_checkpoint(tmp_path / "ckpt")
