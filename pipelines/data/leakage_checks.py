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

What each check reads: the stage never holds a split whole. It reads the Parquet files by column and in batches
(:class:`Splits`); :func:`audit` runs the same functions (:func:`audit_splits`) over frames in memory.

- (c), (d), (e), the feedback rows, and the per-class support and row choice of (a)'s sample read the key
  columns (``id``, ``label``, ``group``, ``timestamp``) of every row;
- (f) and (a)'s timing rule read every column of every row, ``BATCH_ROWS`` rows at a time, kept as counts
  (:class:`ColumnStats`: "is missing" by label, "later than the timestamp");
- (a)'s single-column models read a bounded stratified sample (``leakage.column_check_max_rows``) of the
  columns they judge (not ``text``);
- (b) reads the ``text`` column batch by batch, kept as a 64-bit hash of each normalised text (exact duplicates:
  equal hashes), MinHash band hashes and n-gram document frequencies (near duplicates), then reads only the
  candidate pairs' texts again (:mod:`pipelines.data.near_duplicates`).

The model-ready splits are the rows a mask keeps, without the dropped columns, copied from the input files
batch by batch (:func:`pipelines.io.copy_rows`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
from pipelines.data.near_duplicates import LshSettings, TextColumn, Texts, near_duplicates
from pipelines.io import parquet_columns, parquet_num_rows, read_batches, read_compact, read_rows

CORE = {"id", "text", "label", "timestamp", "group"}
KEY_COLUMNS = ("id", "label", "group", "timestamp")  # what (c), (d), (e) and the feedback rows read of every row
BATCH_ROWS = 20_000  # rows of a split read at a time where every column is read

# near_duplicates, or its Ray Data twin (pipelines.data.distributed.near_search): (reference, other, threshold, lsh)
NearSearch = Callable[[Texts, Texts, float, LshSettings], np.ndarray]


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


def sample_positions(
    labels: pd.Series, max_rows: int | None, seed: int = 0, min_per_class: int = 30
) -> np.ndarray | None:
    """The positions (ascending) of a stratified sample of at most about ``max_rows`` of rows with these
    ``labels``: each label in its share of the whole but never fewer than ``min_per_class`` rows (or all it
    has), so a rare class stays judgeable; ``None``: all rows (few enough, or no cap)."""
    if max_rows is None or len(labels) <= max_rows:
        return None
    frac = max_rows / len(labels)
    rng = np.random.default_rng(seed)
    keep = []
    by_label = labels.reset_index(drop=True).to_frame("label").groupby("label", sort=True, observed=True)
    for rows in by_label.indices.values():
        n = min(len(rows), max(min_per_class, round(frac * len(rows))))
        keep.append(rng.choice(rows, size=n, replace=False))
    return np.sort(np.concatenate(keep))


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


@dataclass
class ColumnStats:
    """What (a)'s timing rule and (f) need of every row, counted batch by batch (:meth:`add`), so that no column is
    ever held whole: per column, its missing (null or blank) and present rows by label (``pd.crosstab(missing,
    label)``, labels in the order they first appear) and, for a column that reads as datetimes, the rows that
    have both it and the timestamp and how many of those are later (``timing``; ``None`` once a value is not a
    date). ``timed``: the columns the timing rule judges."""

    columns: list[str]
    timed: list[str]
    rows: int = 0
    support: dict = field(default_factory=dict)
    missing: dict[str, dict] = field(default_factory=dict)
    present: dict[str, dict] = field(default_factory=dict)
    missing_rows: dict[str, int] = field(default_factory=dict)
    timing: dict[str, list[int] | None] = field(default_factory=dict)

    def add(self, batch: pd.DataFrame) -> None:
        self.rows += len(batch)
        label = batch["label"]
        _count(self.support, label)
        for col in self.columns:
            if col in {"id", "label"}:
                continue
            values = batch[col] if col in batch else pd.Series(None, index=batch.index, dtype=object)
            missing = (values.isna() | (values.astype("string").str.strip() == "")).to_numpy(dtype=bool)
            self.missing_rows[col] = self.missing_rows.get(col, 0) + int(missing.sum())
            _count(self.missing.setdefault(col, {}), label[missing])
            _count(self.present.setdefault(col, {}), label[~missing])
        if "timestamp" not in batch:
            return
        for col in self.timed:
            counts = self.timing.setdefault(col, [0, 0])
            if counts is None or col not in batch or not batch[col].notna().any():
                continue
            when = _as_datetime(batch[col])
            if when is None:
                self.timing[col] = None
                continue
            both = pd.DataFrame({"col": when, "ts": batch["timestamp"]}).dropna()
            counts[0] += len(both)
            counts[1] += int((both["col"] > both["ts"]).sum())

    def missing_table(self, col: str) -> np.ndarray:
        """``pd.crosstab(missing, label)`` of the rows counted (rows of "is missing" False, True; sorted labels)."""
        labels = sorted({*self.missing[col], *self.present[col]})
        return np.array([[d.get(c, 0) for c in labels] for d in (self.present[col], self.missing[col]) if d])

    def missing_top(self, col: str) -> tuple[object, int]:
        """The label most of the column's missing values have, and how many (``value_counts`` of their labels)."""
        top = pd.Series(self.missing[col], dtype="int64").sort_values(ascending=False)
        return top.index[0], int(top.iloc[0])


def _count(counts: dict, labels: pd.Series) -> None:
    for label, n in labels.value_counts(sort=False).items():
        counts[label] = counts.get(label, 0) + int(n)


def column_stats(splits: Splits, keep: Mapping[str, np.ndarray], cfg: LeakageConfig) -> ColumnStats:
    """:class:`ColumnStats` of the rows ``keep`` keeps, each split read once, ``BATCH_ROWS`` rows at a time."""
    columns = splits.columns()
    skip = CORE | set(cfg.post_outcome_columns) | set(cfg.target_columns)
    stats = ColumnStats(columns, timed=[c for c in columns if c not in skip])
    for name in splits.names:
        start = 0
        for batch in splits.batches(name):
            mask = keep[name][start : start + len(batch)]
            start += len(batch)
            stats.add(batch if mask.all() else batch[mask])
    return stats


def check_columns(stats: ColumnStats, cfg: LeakageConfig, sample: pd.DataFrame) -> list[dict]:
    """(a) and (f): leaky and post-outcome columns, label-dependent missingness (target columns exempt). The
    single-column models of (a) are fitted on ``sample`` (:func:`sample_positions` of the rows); its timing rule
    and (f) judge every row, from their counts (``stats``)."""
    out: list[dict] = []
    targets = [c for c in cfg.target_columns if c in stats.columns and c not in CORE]
    columns = [c for c in stats.columns if c not in targets]
    sample = sample.drop(columns=[c for c in targets if c in sample])
    action = {"drop": "dropped", "block": "blocked", "report": "reported"}[cfg.leaky_column_action]
    severity = "blocker" if cfg.leaky_column_action == "block" else "warning"
    on = "" if len(sample) == stats.rows else f", on a stratified sample of {len(sample):,} of {stats.rows:,} rows"
    for col, sc in single_column_scores(sample, cfg.seed).items():
        strong = {
            c: f
            for c, f in sc["class_f1"].items()
            if f >= cfg.single_column_class_f1_max and stats.support.get(c, 0) >= cfg.min_class_support
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
    declared = [c for c in cfg.post_outcome_columns if c in columns]
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
    if "timestamp" in columns:
        for col in columns:
            if col in CORE or col in declared or not stats.timing.get(col):
                continue
            both, later = stats.timing[col]
            if both and later / both >= 0.99:
                out.append(
                    finding(
                        "post_outcome_column",
                        severity,
                        f"{col!r} is later than the timestamp in "
                        f"{later / both:.1%} of rows: recorded after the label's time",
                        columns=[col],
                        action=action,
                    )
                )
    for col in columns:
        if col in {"id", "label"}:
            continue
        missing = stats.missing_rows[col]
        if 0 < missing < stats.rows:
            v = float(association(stats.missing_table(col), method="cramer"))
            if v >= cfg.missingness_cramers_v_max:
                top, top_count = stats.missing_top(col)
                detail = (
                    f"missing values in {col!r} depend on the label (Cramér's V {v:.2f}); "
                    f"{top_count:,} of {missing:,} are in class {top!r}"
                )
                act = action if col not in CORE else "reported"
                out.append(
                    finding(
                        "missingness_predicts_label",
                        severity,
                        detail,
                        columns=[col],
                        count=missing,
                        action=act,
                        cramers_v=round(v, 4),
                    )
                )
    return out


def target_column_scores(stats: ColumnStats, cfg: LeakageConfig, sample: pd.DataFrame) -> dict[str, dict]:
    """How well each target column alone predicts the label (fitted on ``sample``, as in :func:`check_columns`),
    and how its missing values depend on it (every row, from ``stats``); report only."""
    cols = [c for c in cfg.target_columns if c in stats.columns and c not in CORE]
    scores = single_column_scores(sample[["label", *cols]], cfg.seed) if cols else {}
    out: dict[str, dict] = {}
    for col in cols:
        missing = stats.missing_rows[col]
        v = None
        if 0 < missing < stats.rows:
            v = round(float(association(stats.missing_table(col), method="cramer")), 4)
        sc = scores.get(col)
        out[col] = {
            "kind": sc["kind"] if sc else None,
            "macro_f1": round(sc["macro_f1"], 4) if sc else None,
            "missing_rate": round(missing / stats.rows, 4) if stats.rows else float("nan"),
            "missing_cramers_v": v,
        }
    return out


def normalise_for_dedup(texts: pd.Series) -> pd.Series:
    return texts.astype(str).str.lower().map(lambda t: re.sub(r"[\W_]+", " ", t).strip())


def _normalised(texts: pd.Series | Texts) -> Texts:
    return texts if isinstance(texts, Texts) else Texts.of(normalise_for_dedup(texts))


def cross_duplicates(
    reference: pd.Series | Texts,
    other: pd.Series | Texts,
    threshold: float,
    lsh: LshSettings | None = None,
    near: NearSearch = near_duplicates,
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks over ``other``: exact duplicates (after normalisation) and near duplicates of ``reference``
    (cosine >= ``threshold``, found in near-linear time by ``near``: :mod:`pipelines.data.near_duplicates`).

    A Series is normalised here; :class:`Texts` are normalised as they are read (the stage's, from
    :meth:`Splits.text`). Exact duplicates are equal 64-bit hashes of the normalised texts
    (:meth:`Texts.hashes`: 8 bytes a text, not a set of the texts)."""
    ref, oth = _normalised(reference), _normalised(other)
    exact = np.isin(oth.hashes(), ref.hashes())
    found = np.zeros(len(oth), dtype=bool)
    todo = np.flatnonzero(~exact)
    if len(todo) and len(ref):
        found[todo] = near(ref, oth.subset(todo), threshold, lsh or LshSettings())
    return exact, found


def _lsh(cfg: LeakageConfig) -> LshSettings:
    return LshSettings(cfg.minhash_num_perm, cfg.minhash_bands, cfg.minhash_shingle, cfg.seed)


def check_duplicates(
    texts: Mapping[str, TextColumn],
    keep: Mapping[str, np.ndarray],
    cfg: LeakageConfig,
    near: NearSearch = near_duplicates,
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """(b) among the rows ``keep`` keeps of each split's ``texts``: returns findings and, per evaluation split, a
    mask over its kept rows of those to drop."""
    kept = {k: Texts([(texts[k], np.flatnonzero(keep[k]))]) for k in ("train", *EVAL)}
    out, drop = [], {k: np.zeros(len(kept[k]), dtype=bool) for k in EVAL}
    lsh = _lsh(cfg)
    # train is indexed once for both evaluation splits (its n-gram statistics are the costly part)
    n_val = len(kept["val"])
    exact, close = cross_duplicates(kept["train"], kept["val"] + kept["test"], cfg.near_duplicate_threshold, lsh, near)
    found = {
        ("train", "val"): (exact[:n_val], close[:n_val]),
        ("train", "test"): (exact[n_val:], close[n_val:]),
        ("val", "test"): cross_duplicates(kept["val"], kept["test"], cfg.near_duplicate_threshold, lsh, near),
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
    keys: Mapping[str, pd.DataFrame],
    texts: Mapping[str, TextColumn],
    cfg: LeakageConfig,
    feedback_ids: Collection[str],
    near: NearSearch = near_duplicates,
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Feedback rows (untrusted labels, :mod:`pipelines.data.snapshots`) in train or val that copy a test text,
    exactly or nearly, leave their split: otherwise (b) would take the trusted test row out because of them,
    and whoever can call ``/feedback`` could shrink the gate's test split. Returns per split a mask of the rows
    that stay (``keys``: the splits' key columns, ``texts``: their text columns)."""
    keep = {k: np.ones(len(v), dtype=bool) for k, v in keys.items()}
    if not feedback_ids or "id" not in keys["train"]:
        return keep, []
    findings, ids = [], set(feedback_ids)
    for name in ("train", "val"):
        fb = keys[name]["id"].astype("string").isin(ids).fillna(False).to_numpy(dtype=bool)
        if not fb.any():
            continue
        rows = np.flatnonzero(fb)
        exact, close = cross_duplicates(
            Texts([(texts["test"], None)]), Texts([(texts[name], rows)]), cfg.near_duplicate_threshold, _lsh(cfg), near
        )
        copies = np.zeros(len(fb), dtype=bool)
        copies[rows] = exact | close
        if copies.any():
            keep[name] = ~copies
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
    return keep, findings


class Splits:
    """train / val / test as the checks read them: frames in memory (:func:`audit`) or Parquet files (the stage),
    by columns (the key columns), batch by batch (every column, ``BATCH_ROWS`` rows at a time), by row (the
    sample) or as a text column (:class:`~pipelines.data.near_duplicates.TextColumn`, normalised as it is read).
    Which of the two they are is this class's business only: the checks are the same."""

    def __init__(self, parts: Mapping[str, pd.DataFrame | Path]) -> None:
        self.parts = dict(parts)
        self.names = list(self.parts)
        self._columns: dict[str, list[str]] = {}

    def _file(self, name: str) -> Path | None:
        part = self.parts[name]
        return None if isinstance(part, pd.DataFrame) else Path(part)

    def columns(self, name: str | None = None) -> list[str]:
        """The split's columns; without ``name`` every split's, in order of appearance (as ``pd.concat`` has them)."""
        if name is None:
            return list(dict.fromkeys(c for k in self.names for c in self.columns(k)))
        if name not in self._columns:
            path = self._file(name)
            self._columns[name] = list(self.parts[name].columns) if path is None else parquet_columns(path)
        return self._columns[name]

    def num_rows(self, name: str) -> int:
        path = self._file(name)
        return len(self.parts[name]) if path is None else parquet_num_rows(path)

    def read(self, name: str, columns: Collection[str]) -> pd.DataFrame:
        """Every row of those of ``columns`` the split has, with a fresh index (from a file: strings as Arrow
        buffers, ``string[pyarrow]``, a quarter of the memory of Python strings)."""
        columns = [c for c in columns if c in self.columns(name)]
        path = self._file(name)
        df = self.parts[name][columns] if path is None else read_compact(path, columns)
        return df.reset_index(drop=True)

    def batches(self, name: str) -> Iterator[pd.DataFrame]:
        """Every column, ``BATCH_ROWS`` rows at a time, in order."""
        path = self._file(name)
        if path is not None:
            yield from read_batches(path, batch_rows=BATCH_ROWS)
            return
        df = self.parts[name]
        for start in range(0, len(df), BATCH_ROWS):
            yield df.iloc[start : start + BATCH_ROWS]

    def rows(self, name: str, positions: np.ndarray, columns: Collection[str]) -> pd.DataFrame:
        """The rows at ``positions`` (ascending) of those of ``columns`` the split has."""
        columns = [c for c in columns if c in self.columns(name)]
        path = self._file(name)
        if path is None:
            return self.parts[name].iloc[positions][columns].reset_index(drop=True)
        return read_rows(path, positions, columns, BATCH_ROWS)

    def text(self, name: str) -> TextColumn:
        """The ``text`` column, normalised (:func:`normalise_for_dedup`) as it is read, batch by batch."""
        path = self._file(name)
        if path is None:
            return TextColumn(self.parts[name]["text"], transform=normalise_for_dedup)

        def read() -> Iterator[pd.Series]:
            return (batch["text"] for batch in read_batches(path, ["text"], BATCH_ROWS))

        return TextColumn(read, self.num_rows(name), normalise_for_dedup)


def sample_rows(splits: Splits, keep: Mapping[str, np.ndarray], labels: pd.Series, cfg: LeakageConfig) -> pd.DataFrame:
    """(a)'s rows: :func:`sample_positions` of the rows ``keep`` keeps (their ``labels``, the splits one after the
    other), only the columns it judges (``label`` and those outside :data:`CORE`), read by position."""
    rows = sample_positions(labels, cfg.column_check_max_rows, cfg.seed)
    rows = np.arange(len(labels)) if rows is None else rows
    columns = [c for c in splits.columns() if c == "label" or c not in CORE]
    frames, offset = [], 0
    for name in splits.names:
        kept = np.flatnonzero(keep[name])
        mine = rows[(rows >= offset) & (rows < offset + len(kept))] - offset
        frames.append(splits.rows(name, kept[mine], columns))
        offset += len(kept)
    return pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)


def audit_splits(
    splits: Splits,
    cfg: LeakageConfig,
    given: bool = False,
    feedback_ids: Collection[str] = (),
    near: NearSearch = near_duplicates,
) -> tuple[dict[str, np.ndarray], dict]:
    """The stage function over :class:`Splits` (frames or files): per split a mask of the rows its model-ready
    split keeps, and the leakage report (its ``dropped_columns`` leave every split). See :func:`audit`."""
    keys = {k: splits.read(k, KEY_COLUMNS) for k in splits.names}
    texts = {k: splits.text(k) for k in splits.names}
    keep, fb_findings = drop_feedback_copies(keys, texts, cfg, feedback_ids, near)
    keys = {k: v[keep[k]].reset_index(drop=True) for k, v in keys.items()}
    # (a) is an estimate: fitted on a bounded stratified sample (leakage.column_check_max_rows); the rest: every row
    sample = sample_rows(splits, keep, pd.concat([v["label"] for v in keys.values()], ignore_index=True), cfg)
    stats = column_stats(splits, keep, cfg)
    findings = fb_findings + check_columns(stats, cfg, sample)
    targets, sample_size = target_column_scores(stats, cfg, sample), len(sample)
    del sample  # not held while the duplicates are searched
    dup_findings, drop = check_duplicates(texts, keep, cfg, near)
    findings += dup_findings + check_splits(keys, cfg, given)
    dropped_cols = sorted({c for f in findings if f["action"] == "dropped" for c in f["columns"]} - CORE)
    for k in EVAL:
        keep[k][np.flatnonzero(keep[k])[drop[k]]] = False
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
        **{f"rows_{k}": int(v.sum()) for k, v in keep.items()},
    }
    report = {
        "passed": not blockers,
        "given_splits": given,
        "counts": counts,
        "dropped_columns": dropped_cols,
        "findings": findings,
        "target_columns": targets,
        "single_column_rows": sample_size,
    }
    return keep, report


def audit(
    parts: dict[str, pd.DataFrame],
    cfg: LeakageConfig,
    given: bool = False,
    feedback_ids: Collection[str] = (),
    near: NearSearch = near_duplicates,
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Pure stage function: raw splits → cleaned splits and the leakage report (:func:`audit_splits` on frames).

    ``given``: the splits are the data's own (``split.strategy`` given), see the module docstring.
    ``feedback_ids``: ids of feedback rows (:func:`drop_feedback_copies`). ``near``: the near-duplicate search,
    here or on a Ray cluster (``compute.engine``: :func:`pipelines.data.distributed.near_search`), same findings."""
    keep, report = audit_splits(Splits(parts), cfg, given, feedback_ids, near)
    clean = {}
    for k, df in parts.items():
        out = df.drop(columns=report["dropped_columns"])
        clean[k] = out if k not in EVAL and keep[k].all() else out[keep[k]].reset_index(drop=True)
    return clean, report
