"""The generative model's real DeepSpeed path (``python -m pipelines.sft``), two CPU ranks, a tiny Llama on triage
chat examples: a ZeRO-3 smoke step whose gathered adapter reloads to the engine's own logits, resume, and the
checks that refuse a bad run before any rank starts.

Each launch costs 25-35 s of start-up on this machine, so these are marked slow.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.errors import ConfigError
from tests.helpers.llm import run_module, smol_tokenizer, tiny_base, triage_splits, write_chat_examples, write_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_TRAIN, N_VAL, MICRO_BATCH = 32, 8, 4
# LoRA r=8 (llm.lora_r) on all seven projections of the 2 layers of the 32-wide Llama (4 heads of 8, 2 key/value
# heads, MLP 64): r * (in + out) = q, o 8*(32+32); k, v 8*(32+16); gate, up, down 8*(32+64)
ANALYTIC_LORA = 2 * (2 * 512 + 2 * 384 + 3 * 768)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = smol_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return tiny_base(tmp_path_factory.mktemp("tiny-base"), tok)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Triage chat examples (train, val) from built-in tickets: 32 train rows make 4 steps per epoch on 2 ranks."""
    parts = triage_splits(100, seed=5)
    parts = {"train": parts["train"].iloc[:N_TRAIN], "val": parts["val"].iloc[:N_VAL]}
    return write_chat_examples(parts, tmp_path_factory.mktemp("sft"))


def sft(tmp: Path, base: Path, data: Path, cfg: dict, *, resume: bool = False, probe: Path | None = None, **llm):
    """``python -m pipelines.sft`` with the tiny base and ``sft`` keys ``cfg``; with ``probe``, the ranks also
    write the engine's logits on the first validation examples there."""
    params = write_params(
        tmp / "params.yaml", tmp, base, sft={"micro_batch_size": MICRO_BATCH, **cfg}, llm={"max_length": 512, **llm}
    )
    args = ["--params", str(params), "--data-dir", str(data), "--ckpt-dir", str(tmp / "ckpt")]
    args += ["--out", str(tmp / "out"), "--metrics-out", str(tmp / "metrics.json")]
    return run_module("pipelines.sft", *args, *(["--resume"] if resume else []), cwd=tmp, probe=probe)


def history(tmp: Path) -> dict:
    return json.loads((tmp / "out" / "history.json").read_text())


def test_one_step_zero3_two_ranks_saves_a_whole_adapter_that_reloads_to_the_same_logits(tmp_path, base, data_dir):
    cfg = {"zero_stage": 3, "world_size": 2, "precision": "fp32", "smoke_steps": 1, "epochs": 1, "master_port": 29631}
    proc = sft(tmp_path, base, data_dir, cfg, probe=tmp_path / "probe")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{ANALYTIC_LORA:,} trainable parameters (matches the analytic count)" in proc.stdout
    h = history(tmp_path)
    assert (h["world_size"], h["zero_stage"], h["precision"]) == (2, 3, "fp32")
    assert [(e["epoch"], e["step"]) for e in h["history"]] == [(1, 1)]  # smoke mode: one optimizer step
    assert h["frozen_weights_unchanged"] is True  # only the adapter moved
    assert h["train_examples"] == N_TRAIN

    # The adapter holds every LoRA weight whole (the analytic count: no empty or half ZeRO-3 partitions) and
    # nothing of the base.
    weights = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights), sorted(weights)[:5]
    assert sum(v.numel() for v in weights.values()) == ANALYTIC_LORA
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "lora_B starts at zero: one step must move it"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["zero_stage"] == 3 and metrics["frozen_weights_unchanged"] is True

    # save -> reload: the base folder + the published adapter give the engine's own logits on the probe batch
    # (one step, one epoch: the best adapter is the state on which the ranks computed the probe). A limit: this
    # model is far below stage3_max_reuse_distance (1e9 elements), so ZeRO-3 keeps every fetched parameter
    # resident after the first forward; a save without the gather wrote the same whole file here (tried).
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    probe = torch.load(tmp_path / "probe" / "probe.pt")
    assert probe["logits"].shape[0] == probe["batch"]["input_ids"].shape[0] > 1
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "out").eval()
    with torch.no_grad():
        logits = model(input_ids=probe["batch"]["input_ids"], attention_mask=probe["batch"]["attention_mask"]).logits
    torch.testing.assert_close(logits, probe["logits"], atol=1e-4, rtol=1e-4)
    with torch.no_grad(), model.disable_adapter():  # the step changed the model: the comparison has teeth
        plain = model(input_ids=probe["batch"]["input_ids"], attention_mask=probe["batch"]["attention_mask"]).logits
    assert not torch.allclose(plain, probe["logits"], atol=1e-4, rtol=1e-4)

    # counted with ZeRO-3's full sizes, not the partitions (p.numel() is 0 there after deepspeed.initialize)
    assert h["trainable_parameters"] == ANALYTIC_LORA


def test_resume_continues_after_the_saved_epoch_at_the_saved_step(tmp_path, base, data_dir):
    cfg = {"zero_stage": 2, "world_size": 2, "master_port": 29632}
    first = sft(tmp_path, base, data_dir, {**cfg, "epochs": 1})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    written = {p.name for d in (tmp_path / "ckpt", tmp_path / "out") for p in d.iterdir()}
    assert not written & {"probe", "probe.pt"}, "a production run wrote the test-only probe"
    (epoch1,) = history(tmp_path)["history"]
    steps = -(-N_TRAIN // MICRO_BATCH) // 2  # batches per rank (gradient_accumulation_steps 1)
    assert epoch1["step"] == steps

    second = sft(tmp_path, base, data_dir, {**cfg, "epochs": 2, "master_port": 29633}, resume=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"after epoch 1 (optimizer step {steps}); continuing with epoch 2" in second.stdout
    shown = second.stdout + second.stderr
    assert "epoch 2/2" in shown and "epoch 1/2" not in shown, "the resumed run trained epoch 1 again"
    h = history(tmp_path)["history"]
    assert [e["epoch"] for e in h] == [1, 2]
    assert h[1]["step"] == 2 * h[0]["step"]  # the optimizer and scheduler state came back with the weights
    assert h[0] == epoch1  # epoch 1's record is the checkpoint's, not a new run of it
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["trainable_parameters"] == ANALYTIC_LORA


@pytest.mark.parametrize(
    ("sft_keys", "llm_keys", "message"),
    [
        ({}, {"target_modules": ["nope_proj"]}, r"llm.target_modules: \['nope_proj'\] match no linear layer.*q_proj"),
        ({"world_size": (os.cpu_count() or 1) + 1}, {}, rf"sft.world_size is {(os.cpu_count() or 1) + 1} but"),
    ],
    ids=["unknown_lora_target", "world_size_above_cores"],
)
def test_a_bad_run_is_refused_before_any_rank_starts(
    tmp_path, base, data_dir, monkeypatch, sft_keys: dict, llm_keys: dict, message: str
):
    """In process, with the launcher replaced by a failure: the refusal must come before it is called."""
    from pipelines import sft as stage

    monkeypatch.setattr(stage, "launch", lambda *a, **k: pytest.fail("a DeepSpeed run was launched"))
    params = write_params(tmp_path / "params.yaml", tmp_path, base, sft=sft_keys, llm=llm_keys)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest").write_text("epoch-1")  # an earlier run's checkpoints survive a refused run
    with pytest.raises(ConfigError, match=re.compile(message, re.S)):
        stage.main(params, data_dir, tmp_path / "ckpt", tmp_path / "out", tmp_path / "metrics.json")
    assert (tmp_path / "ckpt" / "latest").is_file()
    assert not (tmp_path / "out").exists() and not (tmp_path / "metrics.json").exists()
