"""The one evaluation module: agrees with scikit-learn, ECE matches a hand computation, bad splits are refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from pipelines.errors import DataError
from pipelines.metrics import check_labels, evaluate, expected_calibration_error, score, write_plots


class Fixed:
    """A TextClassifier that returns preset probabilities."""

    def __init__(self, classes: list[str], proba: np.ndarray) -> None:
        self.classes, self.proba = classes, proba

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.proba[: len(texts)]


def test_ece_matches_hand_computation() -> None:
    proba = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.6, 0.4]])
    y = np.array([0, 1, 1, 1])
    # 4 bins of width .25: {.95 ok, .85 wrong} in (.75, 1]: |0.5 - 0.9| * 2/4 = 0.2
    #                       {.65 ok, .60 wrong} in (.5, .75]: |0.5 - 0.625| * 2/4 = 0.0625
    assert expected_calibration_error(y, proba, n_bins=4) == pytest.approx(0.2625)
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]), 10) == pytest.approx(0.0)


def test_score_agrees_with_sklearn() -> None:
    classes = ["a", "b", "c"]
    y = ["a", "a", "b", "b", "c", "c", "c", "a"]
    proba = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.5, 0.4, 0.1],
            [0.1, 0.1, 0.8],
            [0.2, 0.2, 0.6],
            [0.1, 0.6, 0.3],
            [0.9, 0.05, 0.05],
        ]
    )
    pred = [classes[i] for i in proba.argmax(1)]
    m = score(y, proba, classes, ece_bins=10)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=classes)
    for i, c in enumerate(classes):
        assert m["per_class"][c] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    assert np.array(m["confusion"]["matrix"]).sum() == len(y)


class Clock:
    """A stand-in for ``time.perf_counter``: it moves only when a model says it spent time."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


class Slow(Fixed):
    """:class:`Fixed` that takes ``seconds`` of the fake clock per call."""

    def __init__(self, classes: list[str], proba: np.ndarray, clock: Clock, seconds: float) -> None:
        super().__init__(classes, proba)
        self.clock, self.seconds = clock, seconds

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        self.clock.now += self.seconds
        return super().predict_proba(texts)


def test_evaluate_reports_latency_per_1k_texts_and_predictions(monkeypatch) -> None:
    import pipelines.metrics

    clock = Clock()
    monkeypatch.setattr(pipelines.metrics, "time", clock)  # only the metrics module's clock
    model = Slow(["x", "y"], np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]), clock, seconds=0.5)
    clock.now += 7.0  # time before the call is not the model's
    m, preds = evaluate(model, ["t1", "t2", "t3", "t4"], ["x", "x", "x", "y"], split="val")
    # 0.5 s for 4 texts = 125 ms a text = 125,000 ms per 1,000 texts
    assert m["latency_ms_per_1k"] == pytest.approx(0.5 * 1000 / 4 * 1000)
    assert preds == ["x", "y", "x", "y"] and m["n"] == 4
    assert m["per_class"]["y"]["support"] == 1


def test_empty_split_and_unseen_class_are_refused() -> None:
    with pytest.raises(DataError, match="test split is empty"):
        check_labels([], ["a", "b"], "test")
    with pytest.raises(DataError, match=r"class\(es\) \['zebra'\] that the model never saw"):
        check_labels(["a", "zebra"], ["a", "b"], "test")
    check_labels(["a", "zebra"], ["a", "b"], "test", allow_unseen=True)


def test_write_plots(tmp_path) -> None:
    write_plots(["a", "b", "a"], ["a", "a", "a"], tmp_path / "c.csv", tmp_path / "c.png", "t")
    df = pd.read_csv(tmp_path / "c.csv")
    assert list(df.columns) == ["actual", "predicted"] and len(df) == 3
    assert (tmp_path / "c.png").stat().st_size > 1000
