"""Persistence: one noisy window never confirms a breach; K consecutive distinct windows do."""

from __future__ import annotations

import pandas as pd
import pytest

from monitoring import decision as dec
from pipelines.config import MonitorConfig
from pipelines.errors import DataError

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
    few = dec.performance(pd.Series(["a", "b"]), pd.Series(["a", "a"]), ["a", "b"])
    assert all(c["breach"] is None for c in dec.performance_checks(few, {"accuracy": 0.9}, few, cfg))
    true = pd.Series(["a"] * 10 + ["b"] * 10)
    good = dec.performance(true, true, ["a", "b"])
    bad = dec.performance(true, pd.Series(["a"] * 20), ["a", "b"])
    checks = {c["metric"]: c for c in dec.performance_checks(bad, {"accuracy": 1.0, "macro_f1": 1.0}, good, cfg)}
    assert checks["accuracy_drop"]["breach"] and checks["accuracy_drop"]["value"] == 0.5
    assert checks["macro_f1_drop"]["breach"] and checks["class_f1_drop"]["breach"]
    ok = {c["metric"]: c["breach"] for c in dec.performance_checks(good, {"accuracy": 1.0, "macro_f1": 1.0}, good, cfg)}
    assert ok == {"accuracy_drop": False, "macro_f1_drop": False, "class_f1_drop": False}


@pytest.mark.parametrize(
    "true, pred, classes",
    [
        (["a", "a", "b"], ["a", "c", "b"], ["a", "b", "c"]),  # a class predicted but absent from the labels
        (["a", "z", "b", "z"], ["a", "a", "b", "b"], ["a", "b"]),  # a label the model never saw
        (["a", "a", "a"], ["a", "b", "a"], ["a", "b", "c"]),  # classes missing from the window
        (["b"] * 3 + ["a"] * 5, ["b"] * 8, ["a", "b"]),
    ],
)
def test_performance_is_pipelines_metrics_over_the_models_classes(true, pred, classes):
    """The number compared with the registered test macro-F1 comes from the same function and label set."""
    from pipelines.metrics import score

    got = dec.performance(pd.Series(true), pd.Series(pred), classes)
    want = score(true, dec.one_hot(pd.Series(pred), classes), classes)
    assert got["macro_f1"] == want["macro_f1"] and got["accuracy"] == want["accuracy"]
    assert got["per_class"] == {c: {"f1": v["f1"], "support": v["support"]} for c, v in want["per_class"].items()}


def test_a_prediction_outside_the_models_classes_is_refused():
    with pytest.raises(DataError, match=r"predictions \['spam'\] are not classes of the model"):
        dec.performance(pd.Series(["a"]), pd.Series(["spam"]), ["a", "b"])


def test_reset_state_acknowledges_a_confirmed_breach(tmp_path):
    state = {"consecutive": 0, "history": []}
    for i in range(3):
        state, confirmed, _ = dec.update(state, f"w{i}", ["data_drift"], CFG)
    dec.save_state(state, tmp_path)
    assert confirmed
    dec.reset_state(tmp_path, "event emitted")
    after = dec.load_state(tmp_path)
    assert after["consecutive"] == 0 and after["last_reset"]["reason"] == "event emitted"
    assert not dec.update(after, "w3", ["data_drift"], CFG)[1]  # the count starts again
