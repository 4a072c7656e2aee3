"""The one promote/rollback dispatch (run_promotion) on a throw-away SQLite registry: each action and each refusal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from pipelines import promotion
from pipelines.config import Params, parse_params
from pipelines.errors import ConfigError, DataError, GateFailed
from pipelines.registry import tracking
from pipelines.registry.aliases import CHALLENGER, CHAMPION
from pipelines.registry.gate import fail_on_refusal
from tests.helpers.flows import register, split


@pytest.fixture
def cfg(registry_cfg: Params, tmp_path: Path) -> Params:
    """The registry's params, with a small test split in cwd."""
    split(80, 1).to_parquet(tmp_path / "test.parquet")
    return registry_cfg


def run(cfg: Params, **action) -> promotion.PromotionResult:
    return promotion.run_promotion(
        cfg, test=Path("test.parquet"), report=Path("promotion.md"), decision_json=Path("promotion.json"), **action
    )


def good(cfg: Params) -> str:
    train = split(200, 0)
    return register(
        cfg,
        make_pipeline(TfidfVectorizer(), LogisticRegression(C=10)).fit(train.text, train.label),
        "good",
        split(80, 1),
    )


def worse(cfg: Params) -> str:
    train = split(200, 0)
    clf = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(train), 1)), train.label)
    return register(cfg, clf, "majority", split(80, 1))


def test_version_and_rollback_together_are_refused_before_the_registry_is_touched(cfg, monkeypatch) -> None:
    monkeypatch.setattr(tracking, "setup", lambda _: pytest.fail("the registry was contacted"))
    with pytest.raises(ConfigError, match="version and rollback were both given"):
        run(cfg, version="1", rollback=True)


@pytest.mark.parametrize("family", ["classifier", "llm"])
@pytest.mark.parametrize("action", [{}, {"version": "1"}, {"rollback": True}])
def test_no_registered_model_is_refused_for_every_action(cfg, action: dict, family: str) -> None:
    name = cfg.mlflow.registered_model if family == "classifier" else cfg.register_llm.registered_model
    with pytest.raises(tracking.RegistryError, match=re.escape(f"no registered model named '{name}'")):
        run(cfg, family=family, **action)
    assert not Path("promotion.json").exists()


def test_the_llm_family_acts_on_its_own_registered_model(cfg) -> None:
    """A classifier champion is invisible to ``family="llm"``: its rollback finds no model of that name."""
    good(cfg)
    run(cfg)
    llm = cfg.register_llm.registered_model
    with pytest.raises(tracking.RegistryError, match=f"no registered model named '{llm}'"):
        run(cfg, family="llm", rollback=True)
    assert tracking.Registry(cfg.mlflow).alias(CHAMPION) == "1"


def test_an_unknown_version_is_refused_and_the_champion_stays(cfg) -> None:
    v1 = good(cfg)
    assert run(cfg).champion_after == v1  # the gate: the first model becomes champion
    with pytest.raises(tracking.RegistryError, match="has no version 99"):
        run(cfg, version="99")
    assert tracking.Registry(cfg.mlflow).alias(CHAMPION) == v1


def test_gate_then_manual_promotion_then_rollback(cfg) -> None:
    reg = tracking.Registry(cfg.mlflow)
    v1 = good(cfg)
    first = run(cfg)
    assert (first.action, first.champion_before, first.champion_after) == ("gate", None, v1)
    assert json.loads(Path("promotion.json").read_text())["promoted"] is True
    assert "PROMOTED" in first.message and "PROMOTED" in Path("promotion.md").read_text()

    v2 = worse(cfg)
    refused = run(cfg)
    assert refused.refused and refused.champion_after == v1 and reg.alias(CHALLENGER) == v2
    assert any("below the champion" in r for r in refused.decision["reasons"])

    manual = run(cfg, version=v2)
    assert (manual.action, manual.champion_before, manual.champion_after) == ("version", v1, v2)
    assert manual.decision is None and not manual.refused
    assert reg.version(v2).tags["promotion_reason"] == "manual: python -m pipelines.promote"
    assert manual.message == f"promoted '{reg.name}' v{v2} to {CHAMPION} (was v{v1})"

    back = run(cfg, rollback=True)
    assert (back.action, back.champion_before, back.champion_after) == ("rollback", v2, v1)
    assert back.message == f"rolled back '{reg.name}': {CHAMPION} v{v2} -> v{v1}"


def test_a_refusal_fails_the_run_only_when_params_say_so() -> None:
    refused = {"promote": False, "challenger_version": "2", "reasons": ["macro-F1 worse"]}
    fail_on_refusal(refused, Params())  # register.fail_on_refusal defaults to false
    fail_on_refusal(None, parse_params({"register": {"fail_on_refusal": True}}))  # no gate ran
    fail_on_refusal({**refused, "promote": True}, parse_params({"register": {"fail_on_refusal": True}}))
    with pytest.raises(GateFailed, match="challenger v2 refused: macro-F1 worse"):
        fail_on_refusal(refused, parse_params({"register": {"fail_on_refusal": True}}))


def test_the_gate_reads_its_split_through_read_split(cfg) -> None:
    """A split without labels is refused naming the file, before any model is loaded."""
    good(cfg)
    split(10, 2)[["text"]].to_parquet("test.parquet")
    with pytest.raises(DataError, match=r"the test split test.parquet has no column\(s\) \['label'\]"):
        run(cfg)
