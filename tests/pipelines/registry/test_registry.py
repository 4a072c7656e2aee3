"""Registry and promotion on a throw-away SQLite MLflow store: gate, rollback, lineage, failure injection, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from pipelines.classifier.gate import run_classifier_gate
from pipelines.classifier.model_api import SklearnTextClassifier, predict_labels
from pipelines.classifier.pyfunc import load_registered
from pipelines.classifier.registration import register_candidate
from pipelines.errors import DataError
from pipelines.registry import tracking
from pipelines.registry.aliases import CHALLENGER, CHAMPION, PREVIOUS
from pipelines.registry.gate import promote_version, rollback

WORDS = {
    "billing": "invoice charged payment card billing",
    "shipping": "parcel delivery courier tracking shipped",
    "security": "phishing breach password leaked suspicious",
}


def make_split(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(list(WORDS), size=n, p=[0.5, 0.3, 0.2])
    texts = [" ".join(rng.choice(WORDS[y].split(), size=4)) + " please help" for y in labels]
    return pd.DataFrame({"text": texts, "label": labels})


@pytest.fixture
def env(registry_cfg, tmp_path: Path):
    """Params pointing at the store, its registry, a train and a test split; a dvc.lock in cwd for lineage."""
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  leakage:\n    cmd: x\n    outs:\n"
        "    - path: data/processed/train.parquet\n      md5: abc123\n"
    )
    tracking.setup(registry_cfg.mlflow)
    return registry_cfg, tracking.Registry(registry_cfg.mlflow), make_split(300, 0), make_split(120, 1)


def save(clf, path: Path) -> Path:
    joblib.dump(clf, path)
    return path


def good_model(train: pd.DataFrame) -> SklearnTextClassifier:
    return SklearnTextClassifier(
        make_pipeline(TfidfVectorizer(), LogisticRegression(C=10)).fit(train.text, train.label), "lr"
    )


def majority(train: pd.DataFrame, strategy: str = "most_frequent") -> SklearnTextClassifier:
    return SklearnTextClassifier(DummyClassifier(strategy=strategy).fit(np.zeros((len(train), 1)), train.label), "maj")


def register(reg, cfg, clf, path: Path, test: pd.DataFrame) -> str:
    v = register_candidate(reg, cfg, getattr(clf, "name", "x"), save(clf, path), clf, test.text.head(3).tolist())
    run_classifier_gate(reg, test, cfg.register_)
    return v


def test_gate_promotion_rollback_and_loading(env, tmp_path: Path) -> None:
    cfg, reg, train, test = env
    v1 = register(reg, cfg, majority(train), tmp_path / "maj.joblib", test)
    assert reg.alias(CHAMPION) == v1  # the first model becomes champion

    good = good_model(train)
    v2 = register(reg, cfg, good, tmp_path / "good.joblib", test)
    assert (reg.alias(CHAMPION), reg.alias(PREVIOUS)) == (v2, v1)  # better: promoted
    loaded = mlflow.pyfunc.load_model(f"models:/{reg.name}@champion")
    out = loaded.predict(pd.DataFrame({"text": test.text}))
    assert out["label"].tolist() == predict_labels(good, test.text.tolist())
    assert [c for c in out.columns if c.startswith("proba_")] == [f"proba_{c}" for c in good.classes]
    # a bag-of-words model has no tokens to count
    assert load_registered(reg, "@champion").token_lengths(["a text"]) is None

    v3 = register(reg, cfg, majority(train, "prior"), tmp_path / "prior.joblib", test)
    assert reg.alias(CHALLENGER) == v3 and reg.alias(CHAMPION) == v2  # worse: refused
    assert reg.version(v3).tags["gate.decision"] == "refuse"

    assert rollback(reg) == (v2, v1)
    assert reg.alias(CHAMPION) == v1 and reg.alias(PREVIOUS) is None
    promote_version(reg, v2, "manual")
    assert (reg.alias(CHAMPION), reg.alias(PREVIOUS)) == (v2, v1)

    # same file again: no new version
    assert register_candidate(reg, cfg, "lr", tmp_path / "good.joblib", good, ["x"]) == v2


@pytest.mark.integration
def test_lineage_tags_on_the_version_and_run(env, tmp_path: Path) -> None:
    cfg, reg, train, test = env
    v = register(reg, cfg, majority(train), tmp_path / "maj.joblib", test)
    tags = reg.version(v).tags
    for key in ("stage", "git.commit", "dvc.md5.data/processed/train.parquet", "model_sha256", "source_run_id"):
        assert key in tags, key
    assert tags["dvc.md5.data/processed/train.parquet"] == "abc123" and tags["stage"] == "register"
    run = mlflow.get_run(tags["source_run_id"])
    assert run.data.tags["git.commit"] and run.data.params["candidate"] == "maj"


def test_failure_between_register_and_alias_keeps_the_old_champion(env, tmp_path: Path, monkeypatch) -> None:
    cfg, reg, train, test = env
    v1 = register(reg, cfg, majority(train), tmp_path / "maj.joblib", test)
    real = tracking.Registry.set_alias

    def boom(self, alias, version):
        if alias in (CHALLENGER, CHAMPION):
            raise RuntimeError("injected failure")
        return real(self, alias, version)

    monkeypatch.setattr(tracking.Registry, "set_alias", boom)
    with pytest.raises(RuntimeError, match="injected"):
        register(reg, cfg, good_model(train), tmp_path / "good.joblib", test)
    assert reg.alias(CHAMPION) == v1
    monkeypatch.setattr(
        tracking.Registry, "set_alias", lambda self, a, v: boom(self, a, v) if a == CHAMPION else real(self, a, v)
    )
    with pytest.raises(RuntimeError, match="injected"):
        register(reg, cfg, good_model(train), tmp_path / "good2.joblib", test)  # fails at the champion move
    assert reg.alias(CHAMPION) == v1
    assert (
        mlflow.pyfunc.load_model(f"models:/{reg.name}@champion").predict(pd.DataFrame({"text": ["x"]}))["label"][0]
        == "billing"
    )


def test_bad_input_is_a_clear_error(env, tmp_path: Path) -> None:
    cfg, reg, train, test = env
    with pytest.raises(tracking.RegistryError, match=f"no registered model named '{reg.name}'"):
        load_registered(reg, "@champion")
    register(reg, cfg, majority(train), tmp_path / "maj.joblib", test)
    with pytest.raises(tracking.RegistryError, match="has no alias 'nope'"):
        load_registered(reg, "@nope")
    with pytest.raises(tracking.RegistryError, match="has no version 99"):
        reg.load_pyfunc("99")
    with pytest.raises(DataError, match="empty"):
        run_classifier_gate(reg, test.iloc[:0], cfg.register_)
    unseen = pd.concat([test, pd.DataFrame({"text": ["new thing"], "label": ["zebra"]})])
    with pytest.raises(DataError, match="never saw"):
        run_classifier_gate(reg, unseen, cfg.register_)


@pytest.mark.integration
def test_cli_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        f"mlflow:\n  tracking_uri: sqlite:///{tmp_path / 'x.db'}\n  registered_model: ghost\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "pipelines.promote", "--rollback"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: no registered model named 'ghost'")
    assert "Traceback" not in r.stderr


@pytest.mark.integration
def test_transformer_candidate_is_registered_from_its_training_run(env, tmp_path: Path) -> None:
    """A model already logged by its training run (the fine-tuned transformer) is registered from that run's URI."""
    from pipelines.classifier.pyfunc import log_classifier
    from pipelines.classifier.registration import register_logged, transformer_candidate

    cfg, reg, train, test = env
    assert transformer_candidate(tmp_path / "absent") is None
    (tmp_path / "skipped").mkdir()
    (tmp_path / "skipped" / "candidate.json").write_text('{"name": "lora_transformer", "skipped": true}')
    assert transformer_candidate(tmp_path / "skipped") is None

    clf = good_model(train)
    with mlflow.start_run() as run:  # stands in for the finetune run that logged the adapter
        info = log_classifier(clf, example_texts=test["text"].head(3).tolist())
    published = tmp_path / "published"
    published.mkdir()
    (published / "adapter_model.safetensors").write_bytes(b"adapter weights")
    cand = {"name": "lora_transformer", "val_macro_f1": 0.99, "model_uri": info.model_uri, "run_id": run.info.run_id}
    version = register_logged(reg, cand, published)
    assert reg.alias(CHALLENGER) == version
    assert reg.version(version).tags["candidate"] == "lora_transformer"
    assert register_logged(reg, cand, published) == version  # same weights: no duplicate version
    # a fully fine-tuned model (no adapter): its encoder and head files are the weights
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors").write_bytes(b"encoder")
    (full / "classifier.safetensors").write_bytes(b"head")
    first = register_logged(reg, cand, full)
    assert first != version and register_logged(reg, cand, full) == first
    (full / "classifier.safetensors").write_bytes(b"another head")
    assert register_logged(reg, cand, full) not in (first, version)  # a changed head is another model
    with pytest.raises(DataError, match="no weights to register"):
        register_logged(reg, cand, tmp_path / "skipped")
    loaded = mlflow.pyfunc.load_model(f"models:/{reg.name}@{CHALLENGER}")
    assert loaded.predict(test[["text"]])["label"].tolist() == predict_labels(clf, test["text"].tolist())


def test_a_logged_model_carries_the_whole_pipelines_package(env, tmp_path: Path) -> None:
    """The model's code is ``pipelines`` itself (its classes import across subpackages), not one subpackage."""
    cfg, reg, train, test = env
    v = register(reg, cfg, majority(train), tmp_path / "maj.joblib", test)
    code = Path(mlflow.artifacts.download_artifacts(f"models:/{reg.name}/{v}", dst_path=str(tmp_path / "dl"))) / "code"
    assert (code / "pipelines" / "classifier" / "encoder.py").is_file(), sorted(p.name for p in code.iterdir())
    assert (code / "pipelines" / "training" / "precision.py").is_file()


def test_the_threshold_is_part_of_a_registered_version(env, tmp_path: Path) -> None:
    """Same weights with another abstention rule is another version (serving would otherwise keep the old
    threshold); the same weights and rule reuse theirs. The rule is in the logged model itself."""
    from pipelines.abstention import AbstentionRule

    cfg, reg, train, test = env
    clf, path = good_model(train), save(good_model(train), tmp_path / "good.joblib")
    texts = test.text.head(3).tolist()
    strict, lax = AbstentionRule(0.9), AbstentionRule(0.4)
    v1 = register_candidate(reg, cfg, "lr", path, clf, texts, abstention=strict)
    assert register_candidate(reg, cfg, "lr", path, clf, texts, abstention=strict) == v1
    other = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"precision": "bf16"})})
    assert register_candidate(reg, other, "lr", path, clf, texts, abstention=strict) == v1  # no torch: no precision
    v2 = register_candidate(reg, cfg, "lr", path, clf, texts, abstention=lax)
    assert v2 != v1 and reg.alias(CHALLENGER) == v2
    assert reg.version(v1).tags["model_sha256"] == reg.version(v2).tags["model_sha256"]
    assert load_registered(reg, v1).abstention == strict and load_registered(reg, v2).abstention == lax
    out = mlflow.pyfunc.load_model(f"models:/{reg.name}/{v1}").predict(pd.DataFrame({"text": test.text}))
    proba = clf.predict_proba(test.text.tolist())
    assert out["abstained"].tolist() == (proba.max(1) < 0.9).tolist()
    assert out["label"].tolist() == predict_labels(clf, test.text.tolist())  # abstaining keeps the label


def test_a_top_probability_rule_keeps_the_registration_key_it_had_before_the_confidence_was_a_choice():
    """Versions registered before ``abstention.confidence`` existed are still found (same weights, same rule);
    a rule on 1 - p(oos) is another model."""
    import hashlib
    import json

    from pipelines.abstention import AbstentionRule
    from pipelines.classifier.registration import registration_key

    old_record = {"weights": "abc", "abstention": {"threshold": 0.4, "oos_label": "oos"}, "precision": None}
    old_key = hashlib.sha256(json.dumps(old_record, sort_keys=True).encode("utf-8")).hexdigest()
    assert registration_key("abc", AbstentionRule(0.4, "oos"), None) == old_key
    assert registration_key("abc", AbstentionRule(0.4, "oos", "in_scope"), None) != old_key
