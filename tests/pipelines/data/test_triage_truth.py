"""The generator's triage ground truth (priority, product, order_id, summary): every field is planted in the
text in varied forms, so it can be graded from the text alone, survives ingest's cleaning, and is never
mistaken for a label leak by the leakage stage."""

from __future__ import annotations

import re
from collections import Counter

import pandas as pd
import pytest

from pipelines.config import DataConfig, IngestConfig, LeakageConfig, SplitConfig, parse_params
from pipelines.data import generator as gen
from pipelines.data.ingestion import ingest
from pipelines.data.leakage_checks import audit
from pipelines.data.splitting import split_frame
from pipelines.errors import ConfigError

TRIAGE = ("priority", "product", "order_id", "summary")
LEVELS_WITH_CUES = ("low", "high", "urgent")
SIX_DIGITS = re.compile(r"(?<!\d)\d{6}(?!\d)")
# every way the generator writes an order number (lower-cased text: near duplicates are lower-cased)
ORDER_FORM_RES = {
    "order #482913": r"order #\d{6}(?!\d)",
    "ORD-482913": r"(?<![\w-])ord-\d{6}(?!\d)",
    "order number 482 913": r"order number \d{3} \d{3}(?!\d)",
    "my order 482913": r"my order \d{6}(?!\d)",
    "order 482913": r"(?<!my )(?<![\w#-])order \d{6}(?!\d)",
    "order ID 482913": r"order id \d{6}(?!\d)",
}


def _text(df: pd.DataFrame) -> pd.Series:
    return df["subject"] + "\n" + df["body"]


def _markers(level: str) -> list[str]:
    """What a reader looks for: each body cue, and each subject template without the subject."""
    cues = gen.PRIORITY_CUES[level]
    return [c.lower() for c in cues["body"]] + [t.replace("{s}", "").strip().lower() for t in cues["subject"]]


def _levels(text: str) -> set[str]:
    low = text.lower()
    return {lvl for lvl in LEVELS_WITH_CUES if any(m in low for m in _markers(lvl))}


def _join_digit_groups(text: str) -> str:
    return re.sub(r"(?<=\d) (?=\d)", "", text)


@pytest.fixture(scope="module")
def ingested(small_tickets) -> pd.DataFrame:
    df, _ = ingest(small_tickets, DataConfig(), IngestConfig())
    return df


# --------------------------------------------------------------------------- the vocabularies
def test_cues_of_one_level_never_contain_another_levels_cue_or_other_text():
    levels = [*LEVELS_WITH_CUES]
    for a in levels:
        texts_a = [c.lower() for c in gen.PRIORITY_CUES[a]["body"] + gen.PRIORITY_CUES[a]["subject"]]
        for b in levels:
            if a != b:
                clashes = [(m, t) for m in _markers(b) for t in texts_a if m in t]
                assert not clashes, (a, b, clashes)
    other = [
        *(p for v in gen.PHRASES.values() for p in v),
        *(p for v in gen.DRIFT_PHRASES.values() for p in v),
        *(p for v in gen.SUBJECTS.values() for p in v),
        *gen.GENERIC_SUBJECTS,
        *gen.DRIFT_SUBJECTS,
        *gen.FILLER,
        *gen.DRIFT_FILLER,
        *gen.GREETINGS,
        *gen.PRODUCT_MENTIONS,
        *gen.PRODUCT_SUBJECTS,
        *gen.ORDER_MENTIONS,
        *gen.ORDER_SUBJECTS,
        *gen.ORDER_FORMS,
        *(a for v in gen.PRODUCT_ALIASES.values() for a in v),
        *gen.NO_ORDER,
        *gen.wording(),
    ]
    for lvl in levels:
        assert not [(m, t) for m in _markers(lvl) for t in other if m in t.lower()], lvl
    assert not gen.PRIORITY_CUES["normal"]["body"] and not gen.PRIORITY_CUES["normal"]["subject"]
    assert all(
        len(gen.PRIORITY_CUES[lvl]["body"]) >= 5 and len(gen.PRIORITY_CUES[lvl]["subject"]) >= 4 for lvl in levels
    )


def test_aliases_name_one_product_each_and_no_other_text_names_a_product():
    for name, aliases in gen.PRODUCT_ALIASES.items():
        assert len(aliases) >= 4 and name in aliases
        for alias in aliases:
            assert gen.products_named(f"x {alias} y") == {name}, alias
    other = [
        *(p for v in gen.PHRASES.values() for p in v),
        *(p for v in gen.SUBJECTS.values() for p in v),
        *gen.GENERIC_SUBJECTS,
        *gen.FILLER,
        *gen.GREETINGS,
        *gen.SURFACES,
        *gen.ORDER_MENTIONS,
        *(c for lvl in gen.PRIORITY_CUES.values() for c in lvl["body"] + lvl["subject"]),
        *gen.wording(),
    ]
    assert not [t for t in other if gen.products_named(t)]


def test_every_phrase_has_its_issue_for_the_summary():
    for cat in gen.CATEGORIES:
        assert len(gen.ISSUES[cat]) == len(gen.PHRASES[cat]), cat
        assert len(gen.DRIFT_ISSUES[cat]) == len(gen.DRIFT_PHRASES[cat]), cat


# --------------------------------------------------------------------------- the generated tickets
def test_truth_columns_have_their_values_and_a_realistic_mix(small_tickets):
    df = small_tickets
    assert set(df["priority"]) == set(gen.PRIORITIES)
    mix = df["priority"].value_counts(normalize=True)
    for level, share in zip(gen.PRIORITIES, (0.15, 0.55, 0.20, 0.10)):
        assert abs(mix[level] - share) < 0.04, (level, mix[level])
    named = df["product"].dropna()
    assert set(named) == set(gen.BASE_PRODUCTS)  # Nimbus Copilot only exists in the drift period
    assert 0.3 < df["product"].isna().mean() < 0.5
    orders = df["order_id"].dropna()
    assert orders.str.fullmatch(r"ORD-\d{6}").all()
    assert 0.45 < df["order_id"].isna().mean() < 0.7
    # priority is not a function of the category: every category has every level
    assert (pd.crosstab(df["category"], df["priority"]) > 0).all().all()


def test_order_digits_are_in_the_text_iff_there_is_an_order(small_tickets):
    text = _text(small_tickets).map(_join_digit_groups)
    for t, order in zip(text, small_tickets["order_id"]):
        if order is None:
            assert not SIX_DIGITS.search(t), t
        else:
            assert order[4:] in t, (order, t)


def test_order_numbers_are_written_in_several_forms(small_tickets):
    low = _text(small_tickets[small_tickets["order_id"].notna()]).str.lower()
    seen = {form: int(low.str.count(rx).sum()) for form, rx in ORDER_FORM_RES.items()}
    assert sum(n > 0 for n in seen.values()) >= 5, seen
    # both in topic sentences ("a refund for order #..."), in a sentence of its own and in the subject
    assert (
        small_tickets.loc[small_tickets["order_id"].notna(), "subject"].str.contains(r"\d{3}", regex=True).mean() > 0.1
    )


def test_a_product_is_named_iff_there_is_one(small_tickets, small_drift_tickets):
    for df in (small_tickets, small_drift_tickets):
        for t, product in zip(_text(df), df["product"]):
            assert gen.products_named(t) == ({product} if product else set()), (product, t)


def test_products_are_named_in_several_forms(small_tickets):
    text = _text(small_tickets)
    for name in gen.BASE_PRODUCTS:
        rows = text[small_tickets["product"] == name]
        used = {a for a in gen.PRODUCT_ALIASES[name] if rows.str.contains(re.escape(a), regex=True).any()}
        assert len(used) >= 3, (name, used)
    named = small_tickets["product"].notna()
    in_subject = small_tickets.loc[named, "subject"].map(gen.products_named).astype(bool).mean()
    assert 0.1 < in_subject < 0.5


def test_drift_period_tickets_about_copilot_have_it_as_their_product(small_drift_tickets):
    df = small_drift_tickets
    copilot = _text(df).str.contains(r"copilot|assistant", case=False, regex=True)
    assert (df.loc[copilot, "product"] == gen.DRIFT_PRODUCT).all()
    assert (df["product"] == gen.DRIFT_PRODUCT).mean() > 0.8
    assert set(df.loc[~copilot, "product"].dropna()) <= set(gen.BASE_PRODUCTS)


def test_priority_cues_match_the_priority_in_varied_phrasings(small_tickets, small_drift_tickets):
    for df in (small_tickets, small_drift_tickets):
        for t, level in zip(_text(df), df["priority"]):
            assert _levels(t) == ({level} if level != "normal" else set()), (level, t)
    df = small_tickets
    for level in LEVELS_WITH_CUES:
        rows = df[df["priority"] == level]
        text, subject = _text(rows).str.lower(), rows["subject"].str.lower()
        used = {m for m in _markers(level) if text.str.contains(m, regex=False).any()}
        assert len(used) >= 6, (level, used)
        # cues sometimes in the subject, sometimes only in the body
        in_subject = subject.map(lambda s, lv=level: any(m in s for m in _markers(lv)))
        assert 0.15 < in_subject.mean() < 0.8, (level, in_subject.mean())


def test_summaries_are_one_varied_sentence_with_the_tickets_facts(small_tickets, small_drift_tickets):
    for df in (small_tickets, small_drift_tickets):
        s = df["summary"]
        assert s.str.match(r"^[A-Z]").all() and s.str.endswith(".").all()
        assert not s.str[:-1].str.contains(r"[.!?](?:\s|$)|\{|\}|\n", regex=True).any()
        assert s.str.len().between(15, 250).all()
        assert s.nunique() > 0.5 * len(s)
        for summary, product, order in zip(s, df["product"], df["order_id"]):
            if product and product != gen.DRIFT_PRODUCT:
                assert product in summary, (product, summary)
            found = re.findall(r"ORD-\d{6}", summary)
            assert found == [] or found == [order], (order, summary)
    frames = Counter(s.split(" ")[0] for s in small_tickets["summary"])
    assert len(frames) >= 5


def test_empty_tickets_keep_only_what_their_subject_says(small_tickets):
    df = small_tickets
    empty = df["body"].str.strip() == ""
    assert empty.sum() >= 8
    blank = empty & (df["subject"] == "")
    assert (df.loc[blank, "priority"] == "normal").all()
    assert df.loc[blank, ["product", "order_id"]].isna().all().all()
    assert (df.loc[blank, "summary"] == "The ticket is empty.").all()
    assert df.loc[empty & ~blank, "summary"].str.startswith("The ticket has an empty body").all()


# --------------------------------------------------------------------------- through ingest
def test_triage_fields_survive_ingest_and_pii_scrubbing(small_tickets, ingested):
    df = ingested
    assert set(TRIAGE) <= set(df.columns)
    assert len(df) == int((_text(small_tickets).str.strip() != "").sum())
    assert df["text"].str.contains("<PHONE>|<EMAIL>", regex=True).sum() >= 0.1 * len(df)  # the scrubber did run
    joined = df["text"].map(_join_digit_groups)
    for t, order, product, level in zip(joined, df["order_id"], df["product"], df["priority"]):
        has_order = not pd.isna(order)
        assert (order[4:] in t) if has_order else not SIX_DIGITS.search(t), (order, t)
        assert gen.products_named(t) == (set() if pd.isna(product) else {product}), (product, t)
        assert _levels(t) == ({level} if level != "normal" else set()), (level, t)
    for col in TRIAGE:
        assert str(df[col].dtype) == "string", col


# --------------------------------------------------------------------------- through the leakage stage
@pytest.fixture(scope="module")
def parts(ingested) -> dict[str, pd.DataFrame]:
    return split_frame(ingested, SplitConfig())[0]


def test_leakage_stage_keeps_the_triage_columns_and_reports_their_scores(parts):
    cfg = LeakageConfig()
    assert set(cfg.target_columns) == set(TRIAGE)
    clean, report = audit(parts, cfg)
    assert not [f for f in report["findings"] if set(f["columns"]) & set(TRIAGE)]
    assert all(set(TRIAGE) <= set(v.columns) for v in clean.values())
    scores = report["target_columns"]
    assert set(scores) == set(TRIAGE)
    assert scores["priority"]["macro_f1"] < 0.2 and scores["product"]["macro_f1"] < 0.2
    assert scores["order_id"]["kind"] is None  # an id-like code: no single-column model
    assert scores["order_id"]["missing_cramers_v"] < 0.3 and scores["product"]["missing_cramers_v"] < 0.3
    assert scores["summary"]["kind"] == "text" and scores["summary"]["macro_f1"] > scores["priority"]["macro_f1"]


def test_without_the_exemption_only_the_summary_could_be_judged_a_leak(parts):
    _, report = audit(parts, LeakageConfig(target_columns=[]))
    flagged = {c for f in report["findings"] for c in f["columns"]} & set(TRIAGE)
    assert flagged <= {"summary"}
    assert report["target_columns"] == {}


def test_a_column_cannot_be_both_a_target_and_post_outcome():
    with pytest.raises(ConfigError, match="target_columns"):
        parse_params({"leakage": {"post_outcome_columns": ["summary"]}})
