"""The promotion gate as a pure function: worse refused, better accepted, per-class drop rule, first model."""

from __future__ import annotations

from pipelines.config import RegisterConfig
from pipelines.registry.gate import gate_decision


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
