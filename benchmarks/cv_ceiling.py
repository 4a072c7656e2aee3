"""Where do bag-of-words models top out on this data, and which rows does every one of them get wrong?

    .venv/bin/python benchmarks/cv_ceiling.py [--params params.yaml] [--label spam] [--folds 10]
                                             [--models tfidf_logreg,tfidf_svm] [--out reports/cv_ceiling.csv]

A single test split of a small class is a noisy judge (about 60 SMS spam messages: one message moves the spam
F1 by 0.008). This script scores the baselines stage's own TF-IDF models (``train_tfidf``: its C grid, class
weights and calibration from ``params.yaml``) by stratified k-fold cross-validation over every *distinct* text
of the ingested data (``data/interim/dataset.parquet``: run ``dvc repro ingest`` first), so each text is
predicted once by a model that never saw it nor a copy of it. It prints, per model:

* ``--label``'s F1 pooled over all folds, and its lowest and highest per fold (what one split may show);
* its missed and false-alarm counts;

and how many ``--label`` rows every model missed, with a sample of them. Those rows, with each model's
prediction, go to ``--out`` for a person to read: on the SMS Spam Collection they are mostly messages a person
hesitates over too (jokes and horoscopes from subscription services, a "for sale" note, a warning *about*
scams), which bounds what any text model can score on a split deduplicated against its training data.
Costs about a minute per model here (10 folds, 5,146 texts). Never run by the test suite.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.classifier.classical import train_tfidf  # noqa: E402
from pipelines.classifier.model_api import predict_labels  # noqa: E402
from pipelines.config import load_params  # noqa: E402


def cross_validated(kind: str, texts: list[str], y: np.ndarray, folds: StratifiedKFold, cfg) -> np.ndarray:
    """Each text's label as predicted by ``kind`` trained on the other folds."""
    predicted = np.empty(len(texts), dtype=object)
    with tempfile.TemporaryDirectory() as cache:
        for k, (train, test) in enumerate(folds.split(texts, y), 1):
            model = train_tfidf(kind, [texts[i] for i in train], y[train], cfg, cache_dir=cache).classifier
            predicted[test] = predict_labels(model, [texts[i] for i in test])
            print(f"  {kind}: fold {k}/{folds.n_splits}", flush=True)
    return predicted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="the params whose baselines section trains the models")
    ap.add_argument("--data", default="data/interim/dataset.parquet", help="the ingest stage's output")
    ap.add_argument("--label", required=True, help="the class to report (e.g. spam)")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--models", default="tfidf_logreg,tfidf_svm", help="comma-separated: tfidf_logreg, tfidf_svm")
    ap.add_argument("--out", default="reports/cv_ceiling.csv", help="the rows of --label every model missed")
    ap.add_argument("--show", type=int, default=20, help="how many of those rows to print")
    args = ap.parse_args()

    cfg = load_params(args.params).baselines
    data = pd.read_parquet(args.data, columns=["text", "label"]).astype({"label": str})
    conflicting = data.groupby("text")["label"].nunique().gt(1).sum()
    distinct = data.drop_duplicates("text").reset_index(drop=True)
    if args.label not in set(distinct["label"]):
        sys.exit(f"--label {args.label!r} is not a label of {args.data} (labels: {sorted(set(distinct['label']))})")
    print(
        f"{len(data)} rows, {len(distinct)} distinct texts ({conflicting} with more than one label), "
        f"{(distinct['label'] == args.label).sum()} of them {args.label!r}"
    )
    texts, y = distinct["text"].tolist(), distinct["label"].to_numpy()
    folds = StratifiedKFold(args.folds, shuffle=True, random_state=cfg.seed)
    positive = y == args.label
    missed_by_all = positive.copy()
    out = distinct.copy()
    for kind in [m.strip() for m in args.models.split(",") if m.strip()]:
        if kind not in ("tfidf_logreg", "tfidf_svm"):
            sys.exit(f"--models: unknown model {kind!r} (tfidf_logreg, tfidf_svm)")
        predicted = cross_validated(kind, texts, y, folds, cfg)
        per_fold = [
            f1_score(y[test], predicted[test], labels=[args.label], average="macro", zero_division=0.0)
            for _, test in folds.split(texts, y)
        ]
        pooled = f1_score(y, predicted, labels=[args.label], average="macro", zero_division=0.0)
        missed, alarms = (positive & (predicted != args.label)).sum(), (~positive & (predicted == args.label)).sum()
        print(
            f"{kind}: {args.label} F1 {pooled:.3f} pooled over {args.folds} folds (per fold {min(per_fold):.3f}"
            f"-{max(per_fold):.3f}); {missed} {args.label} missed, {alarms} false alarms"
        )
        missed_by_all &= predicted != args.label
        out[f"predicted_{kind}"] = predicted
    print(f"{missed_by_all.sum()} of {positive.sum()} {args.label!r} texts were missed by every model")
    rows = out[missed_by_all]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(args.out, index=False)
    for text in rows["text"].head(args.show):
        print(f"  {text[:110]!r}")
    print(f"all {len(rows)} in {args.out}")


if __name__ == "__main__":
    main()
