"""Persistence: one noisy window never confirms a breach; K consecutive distinct windows do."""

from __future__ import annotations

import pandas as pd

from monitoring import decision as dec
from pipelines.config import MonitorConfig

CFG = MonitorConfig(persistence=3)


def test_single_noisy_window_is_not_confirmed_but_a_persistent_breach_is(tmp_path):
    state = dec.load_state(tmp_path)
    seq = [["data_drift"], [], ["data_drift"], ["data_drift"], ["accuracy_drop"]]
    confirmed = []
    for i, breached in enumerate(seq):
        state, ok, _ = dec.update(state, f"w{i}", breached, CFG)
        dec.save_state(state, tmp_path)
        state = dec.load_state(tmp_path)
        confirmed.append(ok)
    assert confirmed == [False, False, False, False, True]
    assert dec.reset(state, "retrained")["consecutive"] == 0


def test_the_same_window_is_not_counted_twice():
    state = {"consecutive": 0, "history": []}
    state, _, _ = dec.update(state, "k", ["data_drift"], CFG)
    state, ok, note = dec.update(state, "k", ["data_drift"], CFG)
    assert state["consecutive"] == 1 and not ok and "not counted again" in note


def test_performance_needs_enough_labels_and_compares_with_registration():
    cfg = MonitorConfig(min_labelled_rows=10, min_class_support=5)
    few = dec.performance(pd.Series(["a", "b"]), pd.Series(["a", "a"]))
    assert all(c["breach"] is None for c in dec.performance_checks(few, {"accuracy": 0.9}, few, cfg))
    true = pd.Series(["a"] * 10 + ["b"] * 10)
    good = dec.performance(true, true)
    bad = dec.performance(true, pd.Series(["a"] * 20))
    checks = {c["metric"]: c for c in dec.performance_checks(bad, {"accuracy": 1.0, "macro_f1": 1.0}, good, cfg)}
    assert checks["accuracy_drop"]["breach"] and checks["accuracy_drop"]["value"] == 0.5
    assert checks["macro_f1_drop"]["breach"] and checks["class_f1_drop"]["breach"]
    ok = {c["metric"]: c["breach"] for c in dec.performance_checks(good, {"accuracy": 1.0, "macro_f1": 1.0}, good, cfg)}
    assert ok == {"accuracy_drop": False, "macro_f1_drop": False, "class_f1_drop": False}
