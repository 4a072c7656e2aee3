"""Abstention: the tuned threshold meets its target on a constructed validation set (checked against a brute-force
search over every candidate threshold), its metrics match a hand computation, and bad settings name the key."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.abstention import AbstentionRule, rates, tune
from pipelines.config import AbstentionConfig, parse_params
from pipelines.errors import ConfigError, DataError
from pipelines.metrics import evaluate, evaluate_splits, headline

CLASSES = ["a", "b", "oos"]


def constructed(n_in: int = 200, n_oos: int = 50, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """In-scope rows mostly confident, out-of-scope rows mostly not; a few of each predicted as ``oos``."""
    rng = np.random.default_rng(seed)
    labels = [str(rng.choice(["a", "b"])) for _ in range(n_in)] + ["oos"] * n_oos
    proba = np.zeros((len(labels), 3))
    for i, y in enumerate(labels):
        top = rng.uniform(0.55, 0.99) if y != "oos" else rng.uniform(0.34, 0.8)
        j = {"a": 0, "b": 1}[y] if y != "oos" else int(rng.integers(0, 2))
        if rng.random() < 0.03:  # the model's own out-of-scope class wins now and then
            j = 2
        rest = (1 - top) / 2
        proba[i] = rest
        proba[i, j] = top
    return labels, proba


def brute_force(labels: list[str], proba: np.ndarray, target: str, value: float, kind: str = "top_class") -> float:
    """The threshold the target defines, by trying every distinct confidence (and just above it) as a threshold;
    the confidence is the top probability or one minus the ``oos`` column's (``kind``)."""
    labels_a = np.array(labels)
    conf = proba.max(1) if kind == "top_class" else 1.0 - proba[:, CLASSES.index("oos")]
    pred = np.array(CLASSES)[proba.argmax(1)]
    oos = labels_a == "oos"
    candidates = sorted({0.0, *conf.tolist(), *np.nextafter(conf, np.inf).tolist()})

    def abstain(t: float) -> np.ndarray:
        return (conf < t) | (pred == "oos")

    if target == "in_scope_rate":
        ok = [t for t in candidates if abstain(t)[~oos].sum() <= np.floor(value * (~oos).sum() + 1e-9)]
        return max(ok, default=0.0)  # none: the oos class alone is over budget, so no threshold
    ok = [t for t in candidates if abstain(t)[oos].sum() >= np.ceil(value * oos.sum() - 1e-9)]
    return min(ok)


@pytest.mark.parametrize("kind", ["top_class", "in_scope"])
@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.29])
def test_in_scope_rate_target_is_the_largest_threshold_within_the_budget(rate, kind):
    labels, proba = constructed()
    cfg = AbstentionConfig(oos_label="oos", max_in_scope_rate=rate, confidence=kind)
    rule, report = tune(labels, proba, CLASSES, cfg)
    assert rule.confidence == kind and report["confidence"] == kind
    assert rule.threshold == pytest.approx(brute_force(labels, proba, "in_scope_rate", rate, kind))
    in_scope = np.array(labels) != "oos"
    if "note" in report:  # the model's own oos predictions already exceed the budget (rate 0 here)
        assert rate == 0.0 and rule.threshold == 0.0
        return
    share = rule.abstained(proba, CLASSES)[in_scope].mean()
    assert share <= rate + 1e-12 and report["in_scope_rate"] == pytest.approx(share)
    bigger = AbstentionRule(float(np.nextafter(rule.threshold, np.inf)), "oos", kind)  # any larger one breaks it
    assert bigger.abstained(proba, CLASSES)[in_scope].mean() > rate


@pytest.mark.parametrize("kind", ["top_class", "in_scope"])
@pytest.mark.parametrize("recall", [0.3, 0.5, 0.9, 1.0])
def test_oos_recall_target_is_the_smallest_threshold_reaching_it(recall, kind):
    labels, proba = constructed()
    cfg = AbstentionConfig(oos_label="oos", target="oos_recall", min_oos_recall=recall, confidence=kind)
    rule, report = tune(labels, proba, CLASSES, cfg)
    assert rule.threshold == pytest.approx(brute_force(labels, proba, "oos_recall", recall, kind))
    assert report["oos_recall"] >= recall
    if rule.threshold > 0:
        smaller = AbstentionRule(float(np.nextafter(rule.threshold, -np.inf)), "oos", kind)
        assert smaller.abstained(proba, CLASSES)[np.array(labels) == "oos"].mean() < recall


def test_without_out_of_scope_rows_the_budget_still_applies():
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.2, 0.8], [0.3, 0.7]])
    labels = ["a", "a", "b", "b", "a"]
    # in-scope rate 0.4 of 5 rows: at most 2 abstained; confidences sorted .55 .6 .7 .8 .9 -> threshold .7
    rule, report = tune(labels, proba, ["a", "b"], AbstentionConfig(max_in_scope_rate=0.4))
    assert rule == AbstentionRule(0.7, None)
    assert rule.abstained(proba, ["a", "b"]).tolist() == [False, True, True, False, False]
    # 2 of 5 rows abstained; answered: rows 0, 3, 4 -> predicted a, b, b vs true a, b, a -> 2 of 3 right
    assert report == {
        "threshold": 0.7,
        "confidence": "top_class",  # auto, and the model has no out-of-scope class
        "abstention_rate": 0.4,
        "in_scope_rate": 0.4,
        "answered_accuracy": pytest.approx(2 / 3),
    }


def test_a_budget_the_oos_class_alone_exceeds_gives_no_threshold_and_says_why():
    proba = np.array([[0.1, 0.1, 0.8], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    rule, report = tune(["a", "a", "b", "b"], proba, CLASSES, AbstentionConfig(oos_label="oos", max_in_scope_rate=0.1))
    assert rule.threshold == 0.0 and "above abstention.max_in_scope_rate=0.1" in report["note"]


def test_disabled_keeps_only_the_out_of_scope_class():
    labels, proba = constructed()
    rule, _ = tune(labels, proba, CLASSES, AbstentionConfig(enabled=False, oos_label="oos"))
    assert rule == AbstentionRule(0.0, "oos", "in_scope")  # auto: the model has the oos class
    assert rule.abstained(proba, CLASSES).tolist() == (proba.argmax(1) == 2).tolist()


def test_oos_recall_target_without_oos_rows_is_refused_naming_the_key():
    proba = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    with pytest.raises(DataError, match="abstention.target: oos_recall needs validation rows"):
        tune(["a", "b"], proba, CLASSES, AbstentionConfig(oos_label="oos", target="oos_recall"))


def test_rates_match_a_hand_computation_the_clinc150_way():
    proba = np.array(
        [
            [0.8, 0.1, 0.1],  # a, right, confident
            [0.4, 0.35, 0.25],  # a, right, below .5 -> abstained: wrong for in-scope accuracy
            [0.1, 0.7, 0.2],  # a, wrong (b)
            [0.1, 0.2, 0.7],  # b, predicted oos -> abstained
            [0.2, 0.6, 0.2],  # b, right
            [0.45, 0.3, 0.25],  # oos, below .5 -> abstained (recall)
            [0.1, 0.1, 0.8],  # oos, predicted oos -> abstained (recall)
            [0.7, 0.2, 0.1],  # oos, answered a -> missed
        ]
    )
    labels = ["a", "a", "a", "b", "b", "oos", "oos", "oos"]
    m = rates(labels, proba, CLASSES, AbstentionRule(0.5, "oos"))
    # in scope: 5 rows, answered right: rows 0 and 4 -> 2/5; abstained: rows 1, 3 -> 2/5
    # out of scope: 3 rows, abstained: rows 5, 6 -> 2/3; all rows abstained: 1, 3, 5, 6 -> 4/8
    assert m == {
        "abstention_rate": 0.5,
        "in_scope_rate": pytest.approx(0.4),
        "in_scope_accuracy": pytest.approx(0.4),
        "oos_recall": pytest.approx(2 / 3),
    }


class Fixed:
    def __init__(self, classes: list[str], proba: np.ndarray) -> None:
        self.classes, self.proba = classes, proba

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.proba[[int(t) for t in texts]]


def test_evaluate_splits_tunes_on_val_and_scores_test_with_the_same_rule():
    # a model that knows only the in-scope classes: out-of-scope rows are caught by the threshold alone
    val_p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.35, 0.65], [0.55, 0.45], [0.52, 0.48]])
    test_p = np.array([[0.95, 0.05], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    model = Fixed(["a", "b"], np.vstack([val_p, test_p]))
    splits = {
        "val": ([str(i) for i in range(6)], ["a", "a", "b", "b", "oos", "oos"]),
        "test": ([str(i) for i in range(6, 10)], ["a", "a", "b", "oos"]),
    }
    cfg = AbstentionConfig(oos_label="oos", target="oos_recall", min_oos_recall=1.0)
    rule, out = evaluate_splits(model, splits, cfg)
    assert rule == AbstentionRule(float(np.nextafter(0.55, np.inf)), "oos")  # just above the most confident oos row
    test, preds = out["test"]
    assert preds == ["a", "a", "b", "a"]
    # test: in scope rows 0..2 conf .95 .6 .8 all above .55 -> answered right: 3/3; the oos row (.5) is abstained
    assert test["in_scope_accuracy"] == 1.0 and test["oos_recall"] == 1.0 and test["abstention_rate"] == 0.25
    assert headline(test)["abstention_threshold"] == rule.threshold
    assert out["val"][0]["abstention_tuning"] == {"target": "oos_recall", "value": 1.0}
    # the same numbers from evaluate() with the rule, and without one no abstention metrics at all
    again, _ = evaluate(model, *splits["test"], abstention=rule)
    assert {k: again[k] for k in ("in_scope_accuracy", "oos_recall")} == {"in_scope_accuracy": 1.0, "oos_recall": 1.0}
    with pytest.raises(DataError, match="never saw in training"):
        evaluate(model, *splits["test"])  # without the rule, 'oos' is a class the model does not know


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"abstention": {"target": "oos_recall"}}, "abstention.target: oos_recall needs abstention.oos_label"),
        ({"abstention": {"max_in_scope_rate": 1.5}}, "abstention.max_in_scope_rate"),
        ({"abstention": {"target": "recall"}}, "abstention.target"),
        ({"abstention": {"threshold": 0.3}}, "abstention.threshold: unknown key"),
        ({"abstention": {"confidence": "max"}}, "abstention.confidence"),
        ({"evaluate": {"precision": "fp16"}}, "evaluate.precision"),
    ],
)
def test_bad_settings_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_params(raw)


def test_rule_round_trips_and_a_model_without_one_never_abstains():
    rule = AbstentionRule(0.42, "oos")
    assert AbstentionRule.from_dict(rule.to_dict()) == rule
    assert AbstentionRule.from_dict(None).abstained(np.array([[0.5, 0.5]]), ["a", "b"]).tolist() == [False]
    # a rule registered before the confidence was a choice judged the top probability
    assert AbstentionRule.from_dict({"threshold": 0.42, "oos_label": "oos"}).confidence == "top_class"
    kept = AbstentionRule(0.42, "oos", "in_scope")
    assert AbstentionRule.from_dict(kept.to_dict()) == kept


def test_in_scope_confidence_catches_what_the_top_probability_misses():
    """Hard in-scope texts spread their mass over similar intents (low top probability, little oos mass);
    out-of-scope texts put it on ``oos`` without it winning. Tuned for the same 1-in-4 in-scope budget, the
    oos probability catches both out-of-scope rows, the top probability neither."""
    proba = np.array(
        [
            [0.48, 0.47, 0.05],  # a, hard: two intents alike
            [0.45, 0.5, 0.05],  # b, hard
            [0.9, 0.05, 0.05],  # a, easy
            [0.05, 0.9, 0.05],  # b, easy
            [0.6, 0.0, 0.4],  # oos, but 'a' wins
            [0.0, 0.55, 0.45],  # oos, but 'b' wins
        ]
    )
    labels = ["a", "b", "a", "b", "oos", "oos"]
    found = {}
    for kind in ("top_class", "in_scope"):
        rule, report = tune(labels, proba, CLASSES, AbstentionConfig(oos_label="oos", max_in_scope_rate=0.25,
                                                                       confidence=kind))  # fmt: skip
        assert report["in_scope_rate"] <= 0.25
        found[kind] = rule.abstained(proba, CLASSES).tolist()
    assert found["in_scope"] == [False, False, False, False, True, True]  # threshold 1 - .05: every oos row
    assert found["top_class"] == [True, False, False, False, False, False]  # threshold .5: a hard in-scope row
    auto, _ = tune(labels, proba, CLASSES, AbstentionConfig(oos_label="oos", max_in_scope_rate=0.25))
    assert auto.confidence == "in_scope"


def test_in_scope_confidence_for_a_model_without_the_oos_class_is_refused_naming_the_key():
    proba = np.array([[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(DataError, match="abstention.confidence: in_scope needs a model trained with"):
        tune(["a", "oos"], proba, ["a", "b"], AbstentionConfig(oos_label="oos", confidence="in_scope"))
    rule, _ = tune(["a", "oos"], proba, ["a", "b"], AbstentionConfig(oos_label="oos", target="oos_recall"))
    assert rule.confidence == "top_class"  # auto: the threshold alone catches out-of-scope rows
