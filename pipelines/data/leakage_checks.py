"""Library of the ``leakage`` stage (its CLI is :mod:`pipelines.leakage`).

leakage: the data bugs that silently ruin models, checked before training.

On the columns (all splits together, i.e. the data before the split):

(a) a column that predicts the label too well on its own (a scikit-learn model
    on that single column, cross-validated), or that is recorded after the label's
    time (declared in params, or a datetime column that always follows the timestamp);
(f) missing values concentrated in one class (Cramér's V of "is missing" vs label).

Columns listed in ``leakage.target_columns`` are targets of another model (the generative
triage model's priority, product, order_id, summary), not features of the classifier: a
summary names the ticket's topic, so it predicts the label by design. They are never judged
by (a) or (f) nor dropped; the report lists their single-column scores under ``target_columns``.

On the splits:

(b) exact and near-duplicate texts shared across train/val/test (near: cosine
    similarity of character n-gram TF-IDF, candidates from MinHash LSH: :mod:`pipelines.data.near_duplicates`),
    removed from the evaluation splits;
(c) the same group (customer) on both sides of a split;
(d) evaluation rows older than the newest training row;
(e) class balance per split, and classes in evaluation that training never saw.

Each finding has a severity: ``blocker`` fails the stage (nothing written),
``warning`` is acted on (column dropped, rows removed) or reported as params say.

Splits the data gives (``split.strategy`` given: a benchmark's or a team's frozen test file) get every
check too. Duplicates across them follow ``leakage.duplicate_action`` like any split (``report`` keeps the
official test file untouched), and a class missing from train stays a blocker (no model can learn it, and
evaluation refuses it). (c) and (d) are only reported there: the order and grouping of given splits are
the data's, not something the split stage chose or re-splitting should silently replace.
Output: model-ready ``data/processed/{train,val,test}.parquet``, ``reports/leakage.json``
(one entry per finding) and ``metrics/leakage.json`` (counts, a DVC metric).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Collection

import numpy as np
import pandas as pd
from scipy.stats.contingency import association
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from sklearn.tree import DecisionTreeClassifier

from pipelines.config import LeakageConfig
from pipelines.data.near_duplicates import LshSettings, near_duplicates

CORE = {"id", "text", "label", "timestamp", "group"}

# near_duplicates, or its Ray Data twin (pipelines.data.distributed.near_search): (reference, other, threshold, lsh)
NearSearch = Callable[[pd.Series, pd.Series, float, LshSettings], np.ndarray]


EVAL = ("val", "test")


def finding(
    check: str,
    severity: str,
    detail: str,
    *,
    columns: list[str] | None = None,
    count: int | None = None,
    action: str = "reported",
    **extra: object,
) -> dict:
    return {
        "check": check,
        "severity": severity,
        "columns": columns or [],
        "count": count,
        "action": action,
        "detail": detail,
        **extra,
    }


def column_kind(s: pd.Series) -> str | None:
    """numeric | categorical | text | None (id-like or constant: nothing a model can learn from)."""
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        return "numeric" if s.nunique(dropna=True) > 1 else None
    if pd.api.types.is_datetime64_any_dtype(s):
        return None  # judged by the timing rule instead
    st = s.dropna().astype(str)
    nunique = st.nunique()
    if nunique <= 1:
        return None
    if nunique <= max(50, 0.05 * len(st)):
        return "categorical"
    if st.str.len().mean() >= 15 and st.str.contains(" ").mean() > 0.5:
        return "text"
    return None  # high-cardinality codes (ids): cannot generalise


def _single_column_model(kind: str):
    if kind == "numeric":
        return DecisionTreeClassifier(max_depth=4, min_samples_leaf=10, random_state=0)
    if kind == "categorical":
        return make_pipeline(OneHotEncoder(handle_unknown="ignore", min_frequency=5), LogisticRegression(max_iter=300))
    return make_pipeline(ColumnTransformer([("t", TfidfVectorizer(min_df=2), 0)]), LogisticRegression(max_iter=300))


def stratified_sample(df: pd.DataFrame, max_rows: int | None, seed: int = 0, min_per_class: int = 30) -> pd.DataFrame:
    """At most about ``max_rows`` rows of ``df``, each label in its share of the whole but never fewer than
    ``min_per_class`` rows (or all it has), so a rare class stays judgeable; ``df`` itself when small enough."""
    if max_rows is None or len(df) <= max_rows:
        return df
    frac = max_rows / len(df)
    rng = np.random.default_rng(seed)
    keep = []
    for rows in df.groupby("label", sort=True, observed=True).indices.values():
        n = min(len(rows), max(min_per_class, round(frac * len(rows))))
        keep.append(rng.choice(rows, size=n, replace=False))
    return df.iloc[np.sort(np.concatenate(keep))]


def single_column_scores(df: pd.DataFrame, seed: int = 0) -> dict[str, dict]:
    """Cross-validated macro-F1 and per-class F1 of a model that sees one column only."""
    y = df["label"].astype(str).to_numpy()
    n_folds = int(min(3, pd.Series(y).value_counts().min()))
    scores: dict[str, dict] = {}
    if n_folds < 2:
        return scores
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for col in df.columns:
        if col in CORE:
            continue
        kind = column_kind(df[col])
        if kind is None:
            continue
        s = df[col]
        if kind == "numeric":
            X = s.astype(float).to_frame().to_numpy()
        else:
            X = s.astype("string").fillna("<missing>").astype(str).to_frame().to_numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = cross_val_predict(_single_column_model(kind), X, y, cv=cv)
        labels = sorted(set(y))
        per_class = f1_score(y, pred, labels=labels, average=None, zero_division=0)
        scores[col] = {
            "kind": kind,
            "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
            "class_f1": {c: float(f) for c, f in zip(labels, per_class)},
        }
    return scores


ISO_DATE_RE = r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"


def _as_datetime(s: pd.Series) -> pd.Series | None:
    """A datetime column, or a text column of ISO dates (CSV/JSONL sources keep them as strings); else None."""
    if pd.api.types.is_datetime64_any_dtype(s):
        return s.dt.tz_localize(None) if getattr(s.dt, "tz", None) is not None else s
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return None
    st = s.dropna().astype(str).str.strip()
    if st.empty or not st.str.match(ISO_DATE_RE).all():
        return None
    parsed = pd.to_datetime(s.astype("string").str.strip(), errors="coerce", utc=True, format="ISO8601")
    return parsed.dt.tz_localize(None)


def check_columns(df: pd.DataFrame, cfg: LeakageConfig, sample: pd.DataFrame) -> list[dict]:
    """(a) and (f): leaky and post-outcome columns, label-dependent missingness (target columns exempt). The
    single-column models of (a) are fitted on ``sample`` (rows of ``df``: :func:`stratified_sample`)."""
    out: list[dict] = []
    targets = [c for c in cfg.target_columns if c in df.columns and c not in CORE]
    df, sample = df.drop(columns=targets), sample.drop(columns=targets)
    action = {"drop": "dropped", "block": "blocked", "report": "reported"}[cfg.leaky_column_action]
    severity = "blocker" if cfg.leaky_column_action == "block" else "warning"
    support = df["label"].value_counts()
    on = "" if len(sample) == len(df) else f", on a stratified sample of {len(sample):,} of {len(df):,} rows"
    for col, sc in single_column_scores(sample, cfg.seed).items():
        strong = {
            c: f
            for c, f in sc["class_f1"].items()
            if f >= cfg.single_column_class_f1_max and support.get(c, 0) >= cfg.min_class_support
        }
        if sc["macro_f1"] >= cfg.single_column_macro_f1_max or strong:
            why = (
                f"macro-F1 {sc['macro_f1']:.3f} from this column alone (limit {cfg.single_column_macro_f1_max}{on})"
                if sc["macro_f1"] >= cfg.single_column_macro_f1_max
                else f"alone it identifies {', '.join(f'{c!r} (F1 {f:.3f})' for c, f in strong.items())} "
                f"(limit {cfg.single_column_class_f1_max}{on})"
            )
            out.append(
                finding(
                    "leaky_column",
                    severity,
                    f"{col!r} predicts the label: {why}",
                    columns=[col],
                    action=action,
                    macro_f1=round(sc["macro_f1"], 4),
                )
            )
    declared = [c for c in cfg.post_outcome_columns if c in df.columns]
    for col in declared:
        out.append(
            finding(
                "post_outcome_column",
                severity,
                f"{col!r} is declared as recorded after the label (leakage.post_outcome_columns)",
                columns=[col],
                action=action,
            )
        )
    if "timestamp" in df:
        for col in df.columns:
            if col in CORE or col in declared:
                continue
            when = _as_datetime(df[col])
            if when is None:
                continue
            both = pd.DataFrame({"col": when, "ts": df["timestamp"]}).dropna()
            if len(both) and (both["col"] > both["ts"]).mean() >= 0.99:
                out.append(
                    finding(
                        "post_outcome_column",
                        severity,
                        f"{col!r} is later than the timestamp in "
                        f"{(both['col'] > both['ts']).mean():.1%} of rows: recorded after the label's time",
                        columns=[col],
                        action=action,
                    )
                )
    for col in df.columns:
        if col in {"id", "label"}:
            continue
        missing = df[col].isna() | (df[col].astype("string").str.strip() == "")
        if 0 < missing.sum() < len(df):
            table = pd.crosstab(missing, df["label"]).to_numpy()
            v = float(association(table, method="cramer"))
            if v >= cfg.missingness_cramers_v_max:
                top = df.loc[missing, "label"].value_counts()
                detail = (
                    f"missing values in {col!r} depend on the label (Cramér's V {v:.2f}); "
                    f"{top.iloc[0]:,} of {int(missing.sum()):,} are in class {top.index[0]!r}"
                )
                act = action if col not in CORE else "reported"
                out.append(
                    finding(
                        "missingness_predicts_label",
                        severity,
                        detail,
                        columns=[col],
                        count=int(missing.sum()),
                        action=act,
                        cramers_v=round(v, 4),
                    )
                )
    return out


def target_column_scores(df: pd.DataFrame, cfg: LeakageConfig, sample: pd.DataFrame) -> dict[str, dict]:
    """How well each target column alone predicts the label (fitted on ``sample``, as in :func:`check_columns`),
    and how its missing values depend on it (every row); report only."""
    cols = [c for c in cfg.target_columns if c in df.columns and c not in CORE]
    scores = single_column_scores(sample[["label", *cols]], cfg.seed) if cols else {}
    out: dict[str, dict] = {}
    for col in cols:
        missing = df[col].isna() | (df[col].astype("string").str.strip() == "")
        v = None
        if 0 < missing.sum() < len(df):
            v = round(float(association(pd.crosstab(missing, df["label"]).to_numpy(), method="cramer")), 4)
        sc = scores.get(col)
        out[col] = {
            "kind": sc["kind"] if sc else None,
            "macro_f1": round(sc["macro_f1"], 4) if sc else None,
            "missing_rate": round(float(missing.mean()), 4),
            "missing_cramers_v": v,
        }
    return out


def normalise_for_dedup(texts: pd.Series) -> pd.Series:
    return texts.astype(str).str.lower().map(lambda t: re.sub(r"[\W_]+", " ", t).strip())


def cross_duplicates(
    reference: pd.Series,
    other: pd.Series,
    threshold: float,
    lsh: LshSettings | None = None,
    near: NearSearch = near_duplicates,
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks over ``other``: exact duplicates (after normalisation) and near duplicates of ``reference``
    (cosine >= ``threshold``, found in near-linear time by ``near``: :mod:`pipelines.data.near_duplicates`)."""
    ref_n, oth_n = normalise_for_dedup(reference), normalise_for_dedup(other)
    exact = oth_n.isin(set(ref_n)).to_numpy()
    found = np.zeros(len(other), dtype=bool)
    todo = np.flatnonzero(~exact)
    if len(todo) and len(reference):
        found[todo] = near(ref_n, oth_n.iloc[todo], threshold, lsh or LshSettings())
    return exact, found


def check_duplicates(
    parts: dict[str, pd.DataFrame], cfg: LeakageConfig, near: NearSearch = near_duplicates
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """(b): returns findings and, per evaluation split, a mask of rows to drop."""
    out, drop = [], {k: np.zeros(len(parts[k]), dtype=bool) for k in EVAL}
    lsh = LshSettings(cfg.minhash_num_perm, cfg.minhash_bands, cfg.minhash_shingle, cfg.seed)
    # train is indexed once for both evaluation splits (its n-gram statistics are the costly part)
    n_val = len(parts["val"])
    exact, close = cross_duplicates(
        parts["train"]["text"], pd.concat([parts["val"]["text"], parts["test"]["text"]], ignore_index=True),
        cfg.near_duplicate_threshold, lsh, near,
    )  # fmt: skip
    found = {
        ("train", "val"): (exact[:n_val], close[:n_val]),
        ("train", "test"): (exact[n_val:], close[n_val:]),
        ("val", "test"): cross_duplicates(
            parts["val"]["text"], parts["test"]["text"], cfg.near_duplicate_threshold, lsh, near
        ),
    }
    for (ref, oth), (exact, close) in found.items():
        for kind, mask in (("exact", exact), ("near", close)):
            if mask.any():
                sev = "blocker" if cfg.duplicate_action == "block" else "warning"
                act = "removed from " + oth if cfg.duplicate_action == "remove" else cfg.duplicate_action + "ed"
                out.append(
                    finding(
                        f"cross_split_{kind}_duplicates",
                        sev,
                        f"{int(mask.sum()):,} {oth} texts are {kind} duplicates of {ref} texts",
                        count=int(mask.sum()),
                        action=act,
                        splits=[ref, oth],
                    )
                )
            if cfg.duplicate_action == "remove":
                drop[oth] |= mask
    return out, drop


def check_splits(parts: dict[str, pd.DataFrame], cfg: LeakageConfig, given: bool = False) -> list[dict]:
    """(c), (d), (e); with ``given`` splits (c) and (d) are warnings whatever their params say."""
    out: list[dict] = []
    train = parts["train"]
    note = "; the splits are given (split.strategy given), so this is reported, not blocked" if given else ""

    def severity(action: str) -> str:
        return "blocker" if action == "block" and not given else "warning"

    if "group" in train:
        train_groups = set(train["group"].dropna())
        for name in EVAL:
            shared = parts[name]["group"].isin(train_groups)
            if shared.any():
                out.append(
                    finding(
                        "group_overlap",
                        severity(cfg.group_overlap_action),
                        f"{parts[name].loc[shared, 'group'].nunique():,} groups ({int(shared.sum()):,} {name} rows) "
                        f"also appear in train{note}",
                        count=int(shared.sum()),
                        splits=["train", name],
                    )
                )
    if "timestamp" in train:
        newest = train["timestamp"].max()
        for name in EVAL:
            older = parts[name]["timestamp"] < newest
            if older.any():
                out.append(
                    finding(
                        "eval_older_than_train",
                        severity(cfg.time_order_action),
                        f"{int(older.sum()):,} {name} rows are older than the newest train row ({newest}){note}",
                        count=int(older.sum()),
                        splits=["train", name],
                    )
                )
    mix = {k: v["label"].value_counts(normalize=True) for k, v in parts.items()}
    seen = set(train["label"])
    for name in EVAL:
        unseen = sorted(set(parts[name]["label"]) - seen)
        if unseen:
            out.append(
                finding(
                    "class_unseen_in_train",
                    "blocker",
                    f"{name} has classes train never saw: {unseen}; no model can learn them and evaluation "
                    f"refuses them: add train rows of {'them' if len(unseen) > 1 else 'it'} or remove those rows",
                    count=int(parts[name]["label"].isin(unseen).sum()),
                    splits=["train", name],
                )
            )
        tvd = 0.5 * float(mix["train"].subtract(mix[name], fill_value=0).abs().sum())
        if tvd > cfg.class_balance_tvd_max:
            out.append(
                finding(
                    "class_balance_shift",
                    "warning",
                    f"label mix of {name} differs from train "
                    f"(total variation distance {tvd:.3f} > {cfg.class_balance_tvd_max})",
                    splits=["train", name],
                )
            )
    return out


def drop_feedback_copies(
    parts: dict[str, pd.DataFrame],
    cfg: LeakageConfig,
    feedback_ids: Collection[str],
    near: NearSearch = near_duplicates,
) -> tuple[dict[str, pd.DataFrame], list[dict]]:
    """Feedback rows (untrusted labels, :mod:`pipelines.data.snapshots`) in train or val that copy a test text,
    exactly or nearly, leave their split: otherwise (b) would take the trusted test row out because of them,
    and whoever can call ``/feedback`` could shrink the gate's test split."""
    if not feedback_ids or "id" not in parts["train"]:
        return parts, []
    out, findings, ids = dict(parts), [], set(feedback_ids)
    lsh = LshSettings(cfg.minhash_num_perm, cfg.minhash_bands, cfg.minhash_shingle, cfg.seed)
    for name in ("train", "val"):
        df = parts[name]
        fb = df["id"].astype("string").isin(ids).fillna(False).to_numpy(dtype=bool)
        if not fb.any():
            continue
        exact, close = cross_duplicates(
            parts["test"]["text"], df.loc[fb, "text"], cfg.near_duplicate_threshold, lsh, near
        )
        copies = np.zeros(len(df), dtype=bool)
        copies[np.flatnonzero(fb)] = exact | close
        if copies.any():
            out[name] = df[~copies].reset_index(drop=True)
            findings.append(
                finding(
                    "feedback_copies_test",
                    "warning",
                    f"{int(copies.sum()):,} feedback rows in {name} copy test texts: removed from {name}, "
                    "so the test split stays whole",
                    count=int(copies.sum()),
                    action=f"removed from {name}",
                    splits=[name, "test"],
                )
            )
    return out, findings


def audit(
    parts: dict[str, pd.DataFrame],
    cfg: LeakageConfig,
    given: bool = False,
    feedback_ids: Collection[str] = (),
    near: NearSearch = near_duplicates,
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Pure stage function: raw splits → cleaned splits and the leakage report.

    ``given``: the splits are the data's own (``split.strategy`` given), see the module docstring.
    ``feedback_ids``: ids of feedback rows (:func:`drop_feedback_copies`). ``near``: the near-duplicate search,
    here or on a Ray cluster (``compute.engine``: :func:`pipelines.data.distributed.near_search`), same findings."""
    parts, fb_findings = drop_feedback_copies(parts, cfg, feedback_ids, near)
    whole = pd.concat(parts.values(), ignore_index=True)
    # (a) is an estimate: fitted on a bounded stratified sample (leakage.column_check_max_rows); the rest reads every row
    sample = stratified_sample(whole, cfg.column_check_max_rows, cfg.seed)
    findings = fb_findings + check_columns(whole, cfg, sample)
    dup_findings, drop = check_duplicates(parts, cfg, near)
    findings += dup_findings + check_splits(parts, cfg, given)
    dropped_cols = sorted({c for f in findings if f["action"] == "dropped" for c in f["columns"]} - CORE)
    clean = {k: v.drop(columns=dropped_cols) for k, v in parts.items()}
    for k in EVAL:
        clean[k] = clean[k][~drop[k]].reset_index(drop=True)
    blockers = [f for f in findings if f["severity"] == "blocker"]
    counts = {
        "findings": len(findings),
        "blockers": len(blockers),
        "leaky_columns": len(
            {c for f in findings if f["check"] in ("leaky_column", "post_outcome_column") for c in f["columns"]}
        ),
        "dropped_columns": len(dropped_cols),
        "exact_duplicates": sum(f["count"] for f in findings if f["check"] == "cross_split_exact_duplicates"),
        "near_duplicates": sum(f["count"] for f in findings if f["check"] == "cross_split_near_duplicates"),
        "removed_eval_rows": int(sum(m.sum() for m in drop.values())),
        "removed_feedback_rows": sum(f["count"] for f in fb_findings),
        "group_overlap_rows": sum(f["count"] for f in findings if f["check"] == "group_overlap"),
        "unseen_class_rows": sum(f["count"] for f in findings if f["check"] == "class_unseen_in_train"),
        **{f"rows_{k}": int(len(v)) for k, v in clean.items()},
    }
    report = {
        "passed": not blockers,
        "given_splits": given,
        "counts": counts,
        "dropped_columns": dropped_cols,
        "findings": findings,
        "target_columns": target_column_scores(whole, cfg, sample),
        "single_column_rows": len(sample),
    }
    return clean, report
