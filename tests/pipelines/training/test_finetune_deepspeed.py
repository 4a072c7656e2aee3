"""The real DeepSpeed path, two CPU ranks, tiny data: smoke, save → reload, resume, failures without hangs.

Each launch costs 25-35 s of start-up on this machine, so these are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipelines.classifier.base_model import resolve_base_model
from pipelines.classifier.finetune_worker import PROBE_ENV
from pipelines.classifier.lora import load_trained
from tests.helpers import ROOT
from tests.helpers.data import write_ticket_splits

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_ticket_splits(tmp_path_factory.mktemp("data"))


def run(
    tmp: Path,
    data: Path,
    finetune: dict,
    *,
    resume: bool = False,
    ckpt: Path | None = None,
    probe: Path | None = None,
    timeout: int = 420,
) -> subprocess.CompletedProcess:
    """``python -m pipelines.finetune`` on ``data``; with ``probe``, the ranks also write the engine's logits there."""
    params = tmp / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "finetune": {"max_length": 64, "micro_batch_size": 8, **finetune},
                "evaluate": {"precision": "fp32"},  # the published model is compared with the engine's fp32 logits
                "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "artifact_root": str(tmp / "mlartifacts")},
            }
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "pipelines.finetune",
        "--params",
        str(params),
        "--data-dir",
        str(data),
        "--ckpt-dir",
        str(ckpt or tmp / "ckpt"),
        "--out",
        str(tmp / "out"),
        "--metrics-out",
        str(tmp / "metrics.json"),
        "--plots-dir",
        str(tmp / "plots"),
    ] + (["--resume"] if resume else [])
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop(PROBE_ENV, None)
    if probe is not None:
        env[PROBE_ENV] = str(probe)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_one_step_zero3_two_ranks_saves_a_whole_adapter(tmp_path, tiny_data):
    proc = run(
        tmp_path,
        tiny_data,
        {
            "zero_stage": 3,
            "world_size": 2,
            "precision": "fp32",
            "smoke_steps": 1,
            "epochs": 1,
            "master_port": 29611,
            "merge_adapter": True,
        },
        probe=tmp_path / "probe",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert history["world_size"] == 2 and history["zero_stage"] == 3
    assert history["history"][0]["step"] == 1
    # Only adapter and head parameters change during training.
    assert history["frozen_weights_unchanged"] is True
    weights = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert weights and all("lora_" in k or "classifier" in k for k in weights), sorted(weights)[:5]
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "lora_B starts at zero: one step must move it"
    # Save (ZeRO-3, gathered from two ranks) → reload of the published adapter gives the engine's own logits
    # (one step, one epoch: the best adapter is the last state, on which the ranks computed the probe).
    probe = torch.load(tmp_path / "probe" / "probe.pt")
    model = load_trained(tmp_path / "out", resolve_base_model("minilm"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        logits = model(**tok(probe["texts"], truncation=True, max_length=64, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(logits, probe["logits"], atol=1e-4, rtol=1e-4)
    # merge_adapter: the plain transformers encoder with the adapter folded in + the mean-pooled linear head
    # (MiniLM is a mean-pooling checkpoint) gives the same logits.
    from safetensors.torch import load_file as load_tensors
    from transformers import AutoModel

    merged = AutoModel.from_pretrained(tmp_path / "out" / "merged").eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert json.loads((tmp_path / "out" / "merged" / "pooling.json").read_text())["pooling"] == "mean"
    head = load_tensors(tmp_path / "out" / "merged" / "classifier.safetensors")
    enc = tok(probe["texts"], truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = merged(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        merged_logits = pooled @ head["weight"].T + head["bias"]
    torch.testing.assert_close(merged_logits, probe["logits"], atol=1e-4, rtol=1e-4)
    # Evaluated by the shared metrics module and logged, by rank 0's run, as the common pyfunc.
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["macro_f1"] <= 1.0
    assert metrics["test"]["n"] == len(pd.read_parquet(tiny_data / "test.parquet"))
    candidate = json.loads((tmp_path / "out" / "candidate.json").read_text())
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlrun = mlflow.get_run(candidate["run_id"])
    assert mlrun.data.params["finetune.zero_stage"] == "3" and "val_macro_f1" in mlrun.data.metrics
    pyfunc = mlflow.pyfunc.load_model(candidate["model_uri"])
    out = pyfunc.predict(pd.DataFrame({"text": probe["texts"]}))
    expected = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    assert out["label"].tolist() == expected
    # the loaded pyfunc predicts with the adapter merged (faster): the same probabilities as the engine's logits
    labels = [model.config.id2label[i] for i in range(logits.shape[-1])]
    np.testing.assert_allclose(
        out[[f"proba_{c}" for c in labels]].to_numpy(), torch.softmax(logits, -1).numpy(), atol=1e-4
    )
    # the serving batcher's budget counts the model's own tokens, read through the registry's loaded model
    from pipelines.classifier.pyfunc import PyfuncTextClassifier

    assert PyfuncTextClassifier(pyfunc).token_lengths(probe["texts"]) == [
        len(ids) for ids in tok(probe["texts"], truncation=True, max_length=64)["input_ids"]
    ]


def test_full_fine_tuning_under_zero3_saves_the_whole_model_gathered_from_two_ranks(tmp_path, tiny_data):
    """method full: every weight trains; under ZeRO-3 each rank holds a partition, so the published folder is
    the gathered model (no adapter), its reload gives the engine's own logits, and so does the logged pyfunc.
    head_init linear_probe: the two ranks start from the logistic regression on the frozen base's pooled train
    vectors (the head barely moves in one step at 1e-7), computed here independently."""
    proc = run(
        tmp_path,
        tiny_data,
        {"method": "full", "zero_stage": 3, "world_size": 2, "precision": "fp32", "smoke_steps": 1,
         "learning_rate": 1e-4, "head_learning_rate": 1e-7, "head_init": "linear_probe", "master_port": 29615},
        probe=tmp_path / "probe",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "full fine-tuning: 22," in proc.stdout
    assert "head from a linear probe of the frozen base on 240 train rows" in proc.stdout
    out = tmp_path / "out"
    assert not (out / "adapter_config.json").exists() and (out / "classifier.safetensors").is_file()
    history = json.loads((out / "history.json").read_text())
    assert history["trainable_parameters"] > 22_000_000  # the whole encoder and the head
    base = load_file(Path(resolve_base_model("minilm")) / "model.safetensors")
    saved = load_file(out / "model.safetensors")
    key = next(k for k in saved if k.endswith("word_embeddings.weight"))
    base_key = next(k for k in base if k.endswith("word_embeddings.weight"))
    assert saved[key].shape == base[base_key].shape  # gathered whole, not one rank's partition
    moved = [k for k in saved if k in base and not torch.equal(saved[k], base[k])]
    assert len(moved) > 50, "one full step moves (nearly) every base weight"
    _assert_head_is_the_linear_probe(load_file(out / "classifier.safetensors"), tiny_data, history)
    probe = torch.load(tmp_path / "probe" / "probe.pt")
    model = load_trained(out, resolve_base_model("minilm"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        logits = model(**tok(probe["texts"], truncation=True, max_length=64, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(logits, probe["logits"], atol=1e-4, rtol=1e-4)
    import mlflow

    candidate = json.loads((out / "candidate.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    pyfunc = mlflow.pyfunc.load_model(candidate["model_uri"])
    answers = pyfunc.predict(pd.DataFrame({"text": probe["texts"]}))
    labels = [model.config.id2label[i] for i in range(logits.shape[-1])]
    np.testing.assert_allclose(
        answers[[f"proba_{c}" for c in labels]].to_numpy(), torch.softmax(logits, -1).numpy(), atol=1e-4
    )


def _assert_head_is_the_linear_probe(head: dict, data: Path, history: dict) -> None:
    """``head`` gives the probabilities of a logistic regression fitted on the plain base's mean-pooled vectors
    of the train rows (fp32, the stage's max_length 64), and the run reports that fit's train accuracy."""
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoTokenizer

    train = pd.read_parquet(data / "train.parquet")
    labels = sorted(train["label"].unique())
    y = train["label"].map({c: i for i, c in enumerate(labels)}).to_numpy()
    path = resolve_base_model("minilm")
    tok, encoder = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    pooled = []
    with torch.no_grad():
        for start in range(0, len(train), 32):
            enc = tok(train["text"].tolist()[start : start + 32], truncation=True, max_length=64, padding=True,
                      return_tensors="pt")  # fmt: skip
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled.append(((encoder(**enc).last_hidden_state * mask).sum(1) / mask.sum(1)).numpy())
    x = np.concatenate(pooled)
    probe = LogisticRegression(max_iter=2000).fit(x, y)
    logits = torch.from_numpy(x) @ head["weight"].T + head["bias"]
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), probe.predict_proba(x), atol=2e-3)
    assert history["head_init_train_accuracy"] == pytest.approx(probe.score(x, y))


def test_resume_continues_from_saved_step_and_a_broken_rank_does_not_hang(tmp_path, tiny_data):
    # 64 training rows: 4 optimizer steps an epoch on two ranks of 8 (resume is about steps, not learning)
    base = {"zero_stage": 2, "world_size": 2, "early_stopping_patience": 5, "master_port": 29621}
    base |= {"max_train_samples": 64, "max_eval_samples": 32}
    first = run(tmp_path, tiny_data, {**base, "epochs": 1})
    assert first.returncode == 0, first.stderr[-3000:]
    written = {p.name for d in (tmp_path / "ckpt", tmp_path / "out") for p in d.iterdir()}
    assert not written & {"last_adapter", "probe.pt", "probe"}, "a production run wrote test-only files"
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    steps_epoch1 = history["history"][-1]["step"]
    assert steps_epoch1 == 64 // (8 * 2)
    # the training precision (auto: bf16 on a CPU with AMX) and the logged model's inference precision (fp32,
    # evaluate.precision, in its model_config) are two params: neither is refused as a changed value
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = mlflow.get_run(json.loads((tmp_path / "out" / "candidate.json").read_text())["run_id"]).data.params
    assert (logged["training_precision"], logged["precision"]) == (history["precision"], "fp32")

    broken = tmp_path / "broken_ckpt"
    shutil.copytree(tmp_path / "ckpt", broken)
    second = run(tmp_path, tiny_data, {**base, "epochs": 2, "master_port": 29622}, resume=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"after epoch 1 (optimizer step {steps_epoch1}); continuing with epoch 2" in second.stdout
    hist = json.loads((tmp_path / "out" / "history.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[1]["step"] == 2 * steps_epoch1

    # Rank 1's optimizer shard is missing: rank 1 fails to load, the launcher must stop rank 0 (no hang).
    shards = list((broken / "epoch-1").glob("*zero_pp_rank_1_*optim_states.pt"))  # bf16_ prefix under bf16
    assert len(shards) == 1, sorted(p.name for p in (broken / "epoch-1").iterdir())
    shards[0].unlink()
    third = run(tmp_path, tiny_data, {**base, "epochs": 2, "master_port": 29623}, resume=True, ckpt=broken, timeout=240)
    assert third.returncode != 0
    assert "error (rank" in third.stderr
