"""Library of the ``baselines`` stage (its CLI is :mod:`pipelines.baselines`).

baselines: majority class, TF-IDF (word + char n-grams) + logistic regression / calibrated linear SVM,
and a frozen MiniLM encoder + logistic regression.

C is chosen by stratified CV on train only (``GridSearchCV``, macro-F1); the candidate with the
best *validation* macro-F1 is the one the register stage registers. Every model is scored by the
one evaluation module (:mod:`pipelines.metrics`) on val and test through the
:class:`~pipelines.classifier.model_api.TextClassifier` interface, in ``evaluate.precision``, each with its own
abstention threshold tuned on its validation predictions (:mod:`pipelines.abstention`).

Outputs: ``models/baselines/<name>.joblib`` + ``selected.json`` (with the selected model's abstention rule,
which the register stage logs with it), ``metrics/baselines.json`` (each model, val and test),
``plots/baselines/`` (confusion CSV + PNG), and an MLflow run per model with lineage tags.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from pipelines.abstention import AbstentionRule
from pipelines.classifier.encoder import EncoderClassifier, MeanPoolEncoder
from pipelines.classifier.model_api import SklearnTextClassifier, TextClassifier, resolve_precision
from pipelines.config import AbstentionConfig, BaselinesConfig, EvaluateConfig
from pipelines.errors import DataError
from pipelines.metrics import check_labels, evaluate_splits, headline


@dataclass
class Trained:
    classifier: TextClassifier
    best_params: dict = field(default_factory=dict)
    cv_macro_f1: float | None = None
    fit_seconds: float = 0.0
    abstention: AbstentionRule = field(default_factory=AbstentionRule)  # tuned on val by evaluate_baselines


def tfidf_features(cfg: BaselinesConfig) -> FeatureUnion:
    """Word 1..n-grams and char_wb n-grams, sublinear TF, side by side."""
    common = dict(sublinear_tf=True, min_df=cfg.min_df, max_features=cfg.max_features, dtype=np.float32)
    return FeatureUnion(
        [
            ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, cfg.word_ngram_max), **common)),
            (
                "char",
                TfidfVectorizer(analyzer="char_wb", ngram_range=(cfg.char_ngram_min, cfg.char_ngram_max), **common),
            ),
        ]
    )


def _class_weight(cfg: BaselinesConfig) -> str | None:
    return None if cfg.class_weight == "none" else cfg.class_weight


def _grid_search(estimator: object, grid: dict, X: object, y: np.ndarray, cfg: BaselinesConfig) -> Trained:
    """Stratified CV on train only, macro-F1; refit the best on all of train."""
    cv = StratifiedKFold(n_splits=cfg.cv_folds, shuffle=True, random_state=cfg.seed)
    t0 = time.perf_counter()
    search = GridSearchCV(
        estimator, grid, scoring="f1_macro", cv=cv, n_jobs=cfg.n_jobs, refit=True, error_score="raise"
    )
    search.fit(X, y)
    params = {k.split("__")[-1]: v for k, v in search.best_params_.items()}
    return Trained(search.best_estimator_, params, float(search.best_score_), time.perf_counter() - t0)


def train_tfidf(
    kind: str, texts: list[str], y: np.ndarray, cfg: BaselinesConfig, cache_dir: str | None = None
) -> Trained:
    """``tfidf_logreg`` or ``tfidf_svm``; fold vectorisations are cached within the run (``cache_dir``).

    The SVM's C is chosen on the bare LinearSVC (CV on decision values), then that C is wrapped in
    ``CalibratedClassifierCV`` and fitted once on all of train, so it has probabilities.
    """
    cw = _class_weight(cfg)
    clf = (
        LogisticRegression(max_iter=2000, class_weight=cw)
        if kind == "tfidf_logreg"
        else LinearSVC(class_weight=cw, random_state=cfg.seed)
    )
    pipe = Pipeline([("features", tfidf_features(cfg)), ("clf", clf)], memory=cache_dir)
    t = _grid_search(pipe, {"clf__C": cfg.c_grid}, texts, y, cfg)
    if kind == "tfidf_svm":
        t0 = time.perf_counter()
        svm = LinearSVC(C=t.best_params["C"], class_weight=cw, random_state=cfg.seed)
        calibrated = CalibratedClassifierCV(svm, cv=cfg.calibration_folds, method="sigmoid", n_jobs=cfg.n_jobs)
        t.classifier = Pipeline([("features", tfidf_features(cfg)), ("clf", calibrated)], memory=cache_dir).fit(
            texts, y
        )
        t.fit_seconds += time.perf_counter() - t0
    t.classifier = SklearnTextClassifier(_drop_memory(t.classifier), kind)
    return t


def _drop_memory(pipe: Pipeline) -> Pipeline:
    """The run's vectoriser cache is temporary: do not pickle a reference to it."""
    pipe.memory = None
    return pipe


def train_encoder(texts: list[str], y: np.ndarray, cfg: BaselinesConfig) -> Trained:
    """Frozen encoder (mean-pooled) + logistic regression; C by CV on the train embeddings."""
    if cfg.embed_max_train_rows and len(texts) > cfg.embed_max_train_rows:
        idx, _ = train_test_split(
            np.arange(len(texts)), train_size=cfg.embed_max_train_rows, stratify=y, random_state=cfg.seed
        )
        texts, y = [texts[i] for i in idx], y[idx]
    enc = MeanPoolEncoder(
        cfg.base_model,
        max_length=cfg.embed_max_length,
        batch_size=cfg.embed_batch_size,
        dtype=cfg.embed_dtype,
        threads=cfg.torch_threads,
        progress=True,
    )
    t0 = time.perf_counter()
    X = enc.encode(texts)
    embed_s = time.perf_counter() - t0
    t = _grid_search(LogisticRegression(max_iter=2000, class_weight=_class_weight(cfg)), {"C": cfg.c_grid}, X, y, cfg)
    t.classifier, t.fit_seconds = EncoderClassifier(enc, t.classifier, "minilm_logreg"), t.fit_seconds + embed_s
    return t


def train_baselines(train: pd.DataFrame, cfg: BaselinesConfig) -> dict[str, Trained]:
    """Fit every model in ``cfg.models`` on the train split."""
    if train.empty:
        raise DataError("the train split is empty: nothing to train on")
    texts, y = train["text"].astype(str).tolist(), train["label"].astype(str).to_numpy()
    if len(set(y)) < 2:
        raise DataError(f"the train split has a single class ({y[0]!r}); a classifier needs at least two")
    out: dict[str, Trained] = {}
    with tempfile.TemporaryDirectory(prefix="tfidf-cache-") as cache:
        for name in cfg.models:
            print(f"baselines: training {name} ...", flush=True)
            if name == "majority":
                t0 = time.perf_counter()
                model = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(y), 1)), y)
                out[name] = Trained(SklearnTextClassifier(model, name), {}, None, time.perf_counter() - t0)
            elif name == "minilm_logreg":
                out[name] = train_encoder(texts, y, cfg)
            else:
                out[name] = train_tfidf(name, texts, y, cfg, cache)
    return out


def evaluate_baselines(
    models: dict[str, Trained],
    val: pd.DataFrame,
    test: pd.DataFrame,
    ecfg: EvaluateConfig,
    acfg: AbstentionConfig | None = None,
) -> tuple[dict, str, dict]:
    """Score every model on val and test in ``ecfg.precision``, each with an abstention rule tuned on its own
    validation predictions (``acfg``; stored in ``Trained.abstention``); pick the best by val macro-F1.

    Returns ``(summary per model, selected name, full results {name: {split: (metrics, preds)}})``.
    """
    acfg = acfg or AbstentionConfig()
    for split, df in (("val", val), ("test", test)):
        for t in models.values():
            check_labels(df["label"].astype(str).tolist(), t.classifier.classes, split, oos_label=acfg.oos_label)
    splits = {
        split: (df["text"].astype(str).tolist(), df["label"].astype(str).tolist())
        for split, df in (("val", val), ("test", test))
    }
    full: dict[str, dict] = {}
    summary: dict[str, dict] = {}
    for name, t in models.items():
        print(f"baselines: evaluating {name} ...", flush=True)
        if hasattr(t.classifier, "set_precision"):  # a torch model (the frozen encoder): judged as it will be served
            t.classifier.set_precision(resolve_precision(ecfg.precision))
        t.abstention, full[name] = evaluate_splits(t.classifier, splits, acfg, ece_bins=ecfg.ece_bins)
        summary[name] = {
            "cv_macro_f1": t.cv_macro_f1,
            "best_params": t.best_params,
            "fit_seconds": round(t.fit_seconds, 2),
            "abstention": {**t.abstention.to_dict(), "tuned": full[name]["val"][0]["abstention_tuning"]},
            **{split: headline(m) for split, (m, _) in full[name].items()},
        }
    selected = max(summary, key=lambda n: summary[n]["val"]["macro_f1"])
    return summary, selected, full


def _track(cfg, summary: dict, selected: str, full: dict, plot_dir: Path, metrics_json: Path) -> None:
    """One parent MLflow run for the stage, a nested run per model (params, val/test metrics)."""
    from pipelines.registry import tracking

    tracking.setup(cfg.mlflow)
    params = {
        "baselines": cfg.baselines.model_dump(),
        "evaluate": cfg.evaluate.model_dump(),
        "abstention": cfg.abstention.model_dump(),
    }
    with tracking.run("baselines", "baselines", params=params, tags={"selected": selected}):
        for name, s in summary.items():
            with tracking.run(name, "baselines", params={"model": name, **s["best_params"]}, nested=True):
                tracking.log_metrics({f"{split}_{k}": v for split in ("val", "test") for k, v in s[split].items()})
                if s["cv_macro_f1"] is not None:
                    tracking.log_metrics({"cv_macro_f1": s["cv_macro_f1"]})
        tracking.log_metrics(
            {f"{split}_{k}": v for split in ("val", "test") for k, v in summary[selected][split].items()},
            prefix="selected.",
        )
        tracking.log_artifacts(plot_dir, artifact_path="plots")
        tracking.log_artifacts(metrics_json)
