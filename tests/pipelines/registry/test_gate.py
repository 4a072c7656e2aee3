"""The promotion gate as pure functions: the classifier's rule (worse refused, better accepted, per-class drop,
first model), the report of either family, each family's settings."""

from __future__ import annotations

import pytest

from pipelines.classifier.gate import gate_decision
from pipelines.config import RegisterConfig, parse_params
from pipelines.errors import ConfigError, GateFailed
from pipelines.registry.families import gate_settings, registered_model
from pipelines.registry.gate import fail_on_refusal, report_markdown


def m(macro: float, **f1: float) -> dict:
    return {"macro_f1": macro, "per_class": {c: {"f1": v, "support": 10} for c, v in f1.items()}}


CFG = RegisterConfig(gate_macro_f1_tolerance=0.01, gate_class_f1_max_drop=0.05)


def test_first_model_becomes_champion() -> None:
    assert gate_decision(m(0.5, a=0.5), None, CFG)["promote"]


def test_worse_challenger_is_refused_with_a_reason() -> None:
    d = gate_decision(m(0.80, a=0.8, b=0.8), m(0.85, a=0.85, b=0.85), CFG)
    assert not d["promote"] and "below the champion" in d["reasons"][0]


def test_better_or_within_tolerance_is_accepted() -> None:
    assert gate_decision(m(0.90, a=0.9, b=0.9), m(0.85, a=0.85, b=0.85), CFG)["promote"]
    assert gate_decision(m(0.845, a=0.84, b=0.85), m(0.85, a=0.85, b=0.85), CFG)["promote"]


def test_one_class_dropping_too_much_blocks_a_better_macro_f1() -> None:
    d = gate_decision(m(0.90, a=0.99, b=0.78), m(0.85, a=0.85, b=0.85), CFG)
    assert not d["promote"]
    assert "b -0.0700" in d["reasons"][-1] and d["class_f1_drops"]["b"] == 0.07


def decision(family: str, challenger: dict, champion: dict | None, promote: bool = True) -> dict:
    return {
        "promote": promote,
        "promoted": promote,
        "reasons": ["why"],
        "model": "m",
        "family": family,
        "challenger_version": "2",
        "champion_version_before": "1" if champion else None,
        "champion_version_after": "2" if promote else "1",
        "test_rows": 10,
        "challenger": challenger,
        "champion": champion,
        "decided_at": "now",
    }


def test_the_report_shows_per_class_f1_for_a_classifier_and_a_metric_table_otherwise() -> None:
    clf = {"macro_f1": 0.9, "accuracy": 0.9, "ece": 0.1, "per_class_f1": {"a": 0.9, "b": 0.8}}
    md = report_markdown(decision("classifier", clf, {**clf, "per_class_f1": {"a": 0.95, "b": 0.8}}))
    assert "## Per-class F1 (test)" in md and "| a | 0.9500 | 0.9000 | +0.0500 |" in md
    assert "both models loaded from the registry" in md

    llm = {"json_valid_rate": 0.9, "mean_field_score": 0.7, "summary_rouge_l": None}
    md = report_markdown(decision("llm", llm, {**llm, "mean_field_score": 0.75}, promote=False))
    assert "REFUSED" in md and "## Metrics (test)" in md and "Per-class" not in md
    assert "| mean_field_score | 0.7500 | 0.7000 | -0.0500 |" in md and "| summary_rouge_l | n/a | n/a |  |" in md
    first = report_markdown(decision("llm", llm, None))
    assert "| metric | challenger |" in first and "| json_valid_rate | 0.9000 |" in first


def test_the_report_shows_each_classifiers_abstention_without_judging_it() -> None:
    clf = {"macro_f1": 0.9, "accuracy": 0.9, "ece": 0.1, "per_class_f1": {"a": 0.9}}
    chall = {**clf, "abstention_rate": 0.08, "in_scope_accuracy": 0.95, "oos_recall": 0.6}
    md = report_markdown(decision("classifier", chall, {**clf, "abstention_rate": 0.02, "oos_recall": 0.3}))
    assert "## Abstention (test, each model with its own threshold)" in md
    assert "| oos_recall | 0.3000 | 0.6000 |" in md and "| in_scope_accuracy | n/a | 0.9500 |" in md
    assert "Abstention" not in report_markdown(decision("classifier", clf, clf))  # a model without a rule


def test_a_refusal_fails_by_its_own_familys_setting() -> None:
    refused = {"promote": False, "challenger_version": "2", "reasons": ["worse"]}
    strict_llm = parse_params({"register_llm": {"fail_on_refusal": True}})
    fail_on_refusal({**refused, "family": "classifier"}, strict_llm)  # the classifier's setting is false
    with pytest.raises(GateFailed, match="challenger v2 refused: worse"):
        fail_on_refusal({**refused, "family": "llm"}, strict_llm)


def test_each_family_has_its_registered_model_and_an_unknown_one_is_refused() -> None:
    cfg = parse_params({"mlflow": {"registered_model": "router"}, "register_llm": {"registered_model": "triage"}})
    assert (registered_model(cfg), registered_model(cfg, "llm")) == ("router", "triage")
    assert gate_settings(cfg, "llm") is cfg.register_llm and gate_settings(cfg) is cfg.register_
    with pytest.raises(ConfigError, match="unknown model family 'vision'"):
        registered_model(cfg, "vision")
