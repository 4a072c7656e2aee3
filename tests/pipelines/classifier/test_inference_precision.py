"""``evaluate.precision`` is one knob: the fine-tuned model is scored and logged in it, the baselines' torch model is
scored in it, and the gate and serving load registered models in it (the registered default otherwise)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from pipelines.classifier.base_model import resolve_base_model
from pipelines.classifier.lora import build_model
from pipelines.classifier.model_api import resolve_precision
from pipelines.config import FinetuneConfig, parse_params
from tests.helpers import mlflow_uris_restored

LABELS = ["billing", "shipping", "access"]
TEXTS = ["I was charged twice", "where is my parcel", "reset link broken", "refund please", "login fails", "late box"]


def split(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [str(i) for i in range(n)], "text": TEXTS[:n], "label": (LABELS * 2)[:n]})


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory):
    """An adapter (random LoRA weights: answers differ from the base), val/test splits, a run, then
    ``evaluate_and_publish`` with ``evaluate.precision: bf16``; returns (params, output dir, metrics)."""
    import mlflow

    from pipelines.classifier.finetuning import evaluate_and_publish
    from pipelines.registry import tracking

    root = tmp_path_factory.mktemp("precision")
    base = resolve_base_model("minilm")
    torch.manual_seed(0)
    model = build_model(base, LABELS, FinetuneConfig(target_modules=["query", "value"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    ckpt = root / "ckpt"
    model.save_pretrained(str(ckpt / "best_adapter"))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(ckpt / "best_adapter"))
    (ckpt / "best_adapter" / "labels.json").write_text(json.dumps(LABELS))
    (ckpt / "history.json").write_text(json.dumps({"history": [], "best_epoch": 1}))
    data = root / "data"
    data.mkdir()
    split(6).to_parquet(data / "val.parquet")
    split(6).to_parquet(data / "test.parquet")
    p = parse_params(
        {
            "mlflow": {
                "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
                "artifact_root": str(root / "art"),
                "registered_model": "precision-router",
            },
            "finetune": {"max_length": 32},
            "evaluate": {"precision": "bf16"},
            "abstention": {"max_in_scope_rate": 0.2},
        }
    )
    old_cwd = Path.cwd()
    os.chdir(root)
    try:
        with mlflow_uris_restored():
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            tracking.setup(p.mlflow)
            with mlflow.start_run() as run:
                (ckpt / "mlflow_run_id").write_text(run.info.run_id)
            out, metrics = root / "out", root / "metrics.json"
            summary = evaluate_and_publish(p, ckpt, data, out, metrics, root / "plots")
    finally:
        os.chdir(old_cwd)
    return p, out, summary


def test_the_fine_tuned_model_is_scored_and_logged_in_the_configured_precision(published):
    p, out, summary = published
    candidate = json.loads((out / "candidate.json").read_text())
    assert candidate["precision"] == "bf16" and summary["inference_precision"] == "bf16"
    # its threshold was tuned on its own validation predictions: at most 1 of 6 rows (0.2) abstained there
    assert summary["abstention"] == {**candidate["abstention"], "tuned": {"target": "in_scope_rate", "value": 0.2}}
    assert summary["val"]["in_scope_rate"] <= 0.2
    assert summary["test"]["abstention_threshold"] == candidate["abstention"]["threshold"] > 0
    import mlflow

    mlflow.set_tracking_uri(p.mlflow.tracking_uri)
    logged = mlflow.models.get_model_info(candidate["model_uri"]).flavors["python_function"]["config"]
    assert logged["precision"] == "bf16" and logged["abstention"] == candidate["abstention"]


def test_gate_and_serving_load_the_registered_model_in_the_knobs_precision(published, tmp_path, monkeypatch):
    from pipelines.classifier.gate import gate_and_report
    from pipelines.classifier.pyfunc import load_registered
    from pipelines.classifier.registration import register_logged
    from pipelines.registry import tracking
    from serving.model_source import ChampionSource

    p, out, _ = published
    monkeypatch.setenv("MLFLOW_TRACKING_URI", p.mlflow.tracking_uri)
    monkeypatch.chdir(tmp_path)
    tracking.setup(p.mlflow)
    reg = tracking.Registry(p.mlflow)
    version = register_logged(reg, json.loads((out / "candidate.json").read_text()), out)
    as_logged, fp32 = load_registered(reg, version), load_registered(reg, version, precision="fp32")
    assert as_logged.precision == "bf16" and fp32.precision == "fp32"
    inner = fp32.model.unwrap_python_model().classifier.model
    assert next(inner.parameters()).dtype == torch.float32
    a, b = as_logged.predict_proba(TEXTS), fp32.predict_proba(TEXTS)
    assert np.abs(a - b).max() < 0.05 and as_logged.abstention == fp32.abstention  # same model, other precision
    # the gate scores in evaluate.precision (fp32 here), and says so in what the register stage writes
    scores: dict = {}
    fp32_params = p.model_copy(update={"evaluate": p.evaluate.model_copy(update={"precision": "fp32"})})
    gate_and_report(reg, split(6), fp32_params, tmp_path / "r.md", tmp_path / "r.json", scores=scores)
    assert scores[version]["precision"] == "fp32"
    assert {"accuracy", "macro_f1", "abstention_rate", "answered_accuracy"} <= set(scores[version])
    # serving's source loads in the knob's precision
    handle = ChampionSource(p.mlflow, precision="auto").load(version)
    assert handle.classifier.precision == resolve_precision("auto")
    assert handle.abstention == as_logged.abstention


def test_serving_takes_evaluate_precision_from_params(tmp_path):
    import yaml

    from serving.app import build_settings

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"evaluate": {"precision": "bf16"}, "serve": {"port": 8123}}))
    cfg, _, project, precision = build_settings({"params": str(path), "project_dir": str(tmp_path)})
    assert precision == "bf16" and cfg.port == 8123 and project == tmp_path.resolve()
    assert build_settings({"params": str(path), "precision": "fp32"})[3] == "fp32"  # a measurement's override
    from pipelines.errors import ConfigError

    with pytest.raises(ConfigError, match="precision: must be one of auto, fp32, bf16"):
        build_settings({"params": str(path), "precision": "fp16"})


class TorchLike:
    """A classifier with a precision switch (as the frozen encoder has), picklable from this module."""

    def __init__(self) -> None:
        self.classes, self.precision = ["a", "b"], "fp32"

    def set_precision(self, precision: str) -> None:
        self.precision = precision

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.tile([0.7, 0.3] if self.precision == "bf16" else [0.6, 0.4], (len(texts), 1))


def test_the_baselines_score_a_torch_model_in_the_configured_precision():
    from pipelines.classifier.classical import Trained, evaluate_baselines
    from pipelines.config import EvaluateConfig

    df = pd.DataFrame({"text": ["x", "y", "z"], "label": ["a", "a", "b"]})
    models = {"torchlike": Trained(TorchLike())}
    summary, selected, full = evaluate_baselines(models, df, df, EvaluateConfig(precision="bf16"))
    assert models["torchlike"].classifier.precision == "bf16"
    assert full[selected]["test"][0]["abstention_threshold"] == pytest.approx(0.7)  # tuned on bf16's confidences
    assert summary[selected]["abstention"]["threshold"] == pytest.approx(0.7)


def test_a_pickled_torch_model_is_switched_to_the_loaded_precision(tmp_path, monkeypatch):
    import mlflow

    from pipelines.classifier.pyfunc import load_registered, log_classifier
    from pipelines.config import MlflowConfig
    from pipelines.registry.tracking import Registry, setup

    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", artifact_root=str(tmp_path / "a"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking_uri)
    setup(cfg)
    with mlflow.start_run():
        info = log_classifier(TorchLike(), example_texts=["x"], precision="fp32")
    reg = Registry(cfg)
    v = reg.register(info.model_uri, tags={})
    assert load_registered(reg, v).predict_proba(["x"]).tolist() == [[0.6, 0.4]]
    assert load_registered(reg, v, precision="bf16").predict_proba(["x"]).tolist() == [[0.7, 0.3]]
