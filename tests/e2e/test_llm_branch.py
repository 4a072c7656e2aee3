"""End to end: the generative branch's four stage CLIs, in order, with their default paths, on a tiny Llama.

Built-in tickets as the classifier's model-ready splits (data/processed) → ``sft_data`` (capped chat examples)
→ ``sft`` (LoRA under DeepSpeed ZeRO-2, 2 CPU ranks, 2 smoke steps) → ``llm_eval`` (fine-tuned, zero-shot,
few-shot and the classifier champion + rules on the same rows) → ``register_llm`` (its own registered model,
the gate), twice. A TF-IDF classifier is registered as the classifier champion first, so the classical system
is really scored. Everything (MLflow SQLite store, artifacts, base-model cache) lives in a temporary workspace.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.llm import run_module, smol_tokenizer, tiny_base, triage_splits, write_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CAPS = {"train": 48, "val": 16, "test": 16}
SYSTEMS = ("finetuned", "zero_shot", "few_shot", "classical")


def stage(module: str, work: Path):
    proc = run_module(module, cwd=work)  # every path at its default: params.yaml, data/, models/, metrics/ in work
    assert proc.returncode == 0, f"{module} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_generative_branch_from_splits_to_a_registered_champion(tmp_path, monkeypatch):
    import mlflow
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from pipelines.config import load_params
    from pipelines.llm.classical import ticket_text
    from pipelines.llm.evaluation import file_sha256
    from pipelines.registry import tracking
    from pipelines.registry.aliases import CHALLENGER, CHAMPION
    from tests.helpers.flows import register

    base = tiny_base(tmp_path / "base", smol_tokenizer(tmp_path / "tokenizer"))
    work = tmp_path / "work"
    (work / "data" / "processed").mkdir(parents=True)
    parts = triage_splits(200, seed=3)
    for name, df in parts.items():
        df.to_parquet(work / "data" / "processed" / f"{name}.parquet", index=False)
    write_params(
        work / "params.yaml",
        work,
        base,
        sft_data={f"max_{k}_samples": n for k, n in CAPS.items()},
        sft={"world_size": 2, "zero_stage": 2, "smoke_steps": 2, "micro_batch_size": 4, "master_port": 29641},
        llm_eval={"systems": list(SYSTEMS), "max_new_tokens": 24, "few_shot_examples": 1, "torch_threads": 2},
    )
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_params("params.yaml")

    # the classifier champion the classical system asks for its categories
    train = parts["train"]
    clf = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000)).fit(train["text"], train["label"])
    classifier = tracking.Registry(cfg.mlflow)
    classifier.set_alias(CHAMPION, register(cfg, clf, "tfidf", parts["test"]))

    # sft_data: capped chat examples, each ticket in the split it has for the classifier
    stage("pipelines.sft_data", work)
    sft = {name: jsonl(work / "data" / "sft" / f"{name}.jsonl") for name in CAPS}
    assert {k: len(v) for k, v in sft.items()} == CAPS
    assert json.loads((work / "metrics" / "sft_data.json").read_text())["examples_test"] == CAPS["test"]
    for name, examples in sft.items():
        assert {e["id"] for e in examples} <= set(parts[name]["id"]), name

    # sft: two DeepSpeed ranks, ZeRO-2, two optimizer steps; the adapter and its figures published
    stage("pipelines.sft", work)
    trained = json.loads((work / "metrics" / "sft.json").read_text())
    assert (trained["world_size"], trained["zero_stage"], trained["train_examples"]) == (2, 2, CAPS["train"])
    assert json.loads((work / "models" / "llm" / "history.json").read_text())["history"][-1]["step"] == 2
    adapter = work / "models" / "llm" / "adapter_model.safetensors"

    # llm_eval: every system scored on the same 16 test rows, for this adapter
    stage("pipelines.llm_eval", work)
    scores = json.loads((work / "metrics" / "llm_eval.json").read_text())
    assert (scores["rows"], scores["graded"]) == (CAPS["test"], "triage")
    assert scores["adapter_sha256"] == file_sha256(adapter)
    for system in SYSTEMS:
        assert "skipped" not in scores[system], (system, scores[system])
        for key in ("json_valid_rate", "mean_field_score"):
            assert 0.0 <= scores[system][key] <= 1.0, (system, key, scores[system][key])
    # the classical system's categories are the registered champion's: its accuracy on these rows, to the row
    prompts = [e["messages"][:-1] for e in sft["test"]]
    truth = [json.loads(e["messages"][-1]["content"])["category"] for e in sft["test"]]
    predicted = clf.predict([ticket_text(p) for p in prompts])
    expected = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    assert scores["classical"]["category_accuracy"] == pytest.approx(expected)
    assert scores["classical"]["json_valid_rate"] == 1.0  # rules always answer the schema

    # register_llm: the first adapter becomes champion (and challenger) of the LLM's own registered model
    first = stage("pipelines.register_llm", work)
    llm = tracking.Registry(cfg.mlflow, cfg.register_llm.registered_model)
    assert llm.name != classifier.name and (llm.alias(CHAMPION), llm.alias(CHALLENGER)) == ("1", "1"), first.stdout
    decision = json.loads((work / "reports" / "promotion_llm.json").read_text())
    assert decision["promoted"] and decision["family"] == "llm"
    assert llm.version("1").tags["adapter_sha256"] == file_sha256(adapter)
    # the logged model holds the adapter, not the base weights (the base is a reference)
    files = Path(mlflow.artifacts.download_artifacts(llm.model_uri("1"), dst_path=str(tmp_path / "download")))
    stored = {p.name for p in files.rglob("*") if p.is_file()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= stored
    assert not stored & {"model.safetensors", "pytorch_model.bin"}, sorted(stored)
    base_bytes = (base / "model.safetensors").stat().st_size
    assert max(p.stat().st_size for p in files.rglob("*") if p.is_file()) < base_bytes

    # the same adapter again: no second version, the champion stays
    again = stage("pipelines.register_llm", work)
    assert f"is already '{llm.name}' v1; not registering it again" in again.stdout
    versions = llm.client.search_model_versions(f"name = '{llm.name}'")
    assert [str(v.version) for v in versions] == ["1"] and llm.alias(CHAMPION) == "1"
    assert classifier.alias(CHAMPION) == "1"  # the classifier's registered model was not touched
