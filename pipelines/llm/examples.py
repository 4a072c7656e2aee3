"""Library of the ``sft_data`` stage (its CLI is :mod:`pipelines.sft_data`): the generative model's chat examples.

**Sources.**

- *Built-in* (``sft_data.path`` null): one triage conversation per row of the classifier's model-ready splits
  (:func:`~pipelines.llm.chat_data.triage_conversations`), so a ticket sits in the same split for both models;
  the id is the ticket id. ``{categories}`` in the system prompt is the sorted label set of the train split:
  what the classifier trains on, and no category the model never sees answered (``validate.expected_labels``
  may be null, or name a class the data lacks). Data without the triage ground truth (your own classification
  data) is refused, naming ``llm.enabled: false`` (:mod:`pipelines.llm.skipping`) and ``sft_data.path``.
- *Bring your own* (``sft_data.path``): a chat JSONL (:func:`~pipelines.llm.chat_data.read_chat_jsonl`, one
  clear error for the first bad record), PII scrubbed in every turn (``scrub_pii``), split at random (seeded)
  by ``val_fraction`` / ``test_fraction`` with every copy of a prompt on one side; the id is a hash of the
  (scrubbed) messages, ``-2``, ``-3`` ... on repeats of an identical record; messages name an example's record
  number in your file too (``record 6``: the sixth record, blank lines not counted).

**Caps.** Each split is a seeded sample of ``max_<split>_samples`` (null: all) in the pool's order,
stratified by label when the labels allow it (built-in mode; every split, so evaluation sees the mix too).

**Contamination** (the LLM form of leakage). An eval example whose user turns are an exact (after
:func:`~pipelines.data.leakage_checks.normalise_for_dedup`) or near copy (cosine of char n-gram TF-IDF at or
above ``near_duplicate_threshold``, :func:`~pipelines.data.leakage_checks.cross_duplicates`) of a train
example's. Only user turns: the built-in system prompt is the same everywhere. The whole val/test pool is
compared with the train examples written (what the model learns from): ``remove`` takes the copies out of
the pool before sampling (val/test keep their size), ``block`` fails on any, ``report`` counts them.

**Checks** (Great Expectations, on a flat frame of one row per written example): every split has examples,
ids are unique, roles in order, assistant turns non-empty, at most :data:`MAX_SHORTENED_SHARE` of examples
longer than ``llm.max_length`` (their ticket is shortened at tokenisation, the answer kept whole), and every
example fits (:func:`~pipelines.llm.sft.encode_dataset`). A breach is one :class:`DataError` naming the
checks and counts; nothing is written.

Outputs (:func:`write_outputs`, atomic): ``<out>/{train,val,test}.jsonl``, one ``{"id", "messages"}`` per
line, read back by :func:`read_examples`; a report and a small metrics dict.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from pipelines.config import LlmConfig, SftDataConfig
from pipelines.data import quality
from pipelines.data.ingestion import scrub_pii
from pipelines.data.leakage_checks import cross_duplicates, normalise_for_dedup
from pipelines.errors import DataError
from pipelines.io import atomic_outputs, write_json
from pipelines.llm.chat_data import (  # noqa: F401 - read_examples: the stages' reader lives with the file format
    Conversation,
    conversation_problem,
    examples_path,
    read_examples,
    system_prompt,
    triage_conversations,
)
from pipelines.llm.sft import REASONS, Unencodable, encode_chat, encode_dataset, render_ids

SPLITS = ("train", "val", "test")
EVAL = ("val", "test")
MAX_SHORTENED_SHARE = 0.1  # examples over llm.max_length (shortened at tokenisation) allowed before it is a breach
ROLE_ORDER = r"^(?:system,)?user,assistant(?:,user,assistant)*$"
N_EXAMPLES = 5  # example ids kept per finding


# --------------------------------------------------------------------------- pools
def user_text(messages: Conversation) -> str:
    """The user turns, joined: what contamination compares (the system prompt is shared)."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def _pool(ids: Sequence[str], conversations: Sequence[Conversation], strata: Sequence | None = None) -> pd.DataFrame:
    """id, messages, prompt (user turns), stratum (label or None), record (n-th record of your file, or None)."""
    n = len(conversations)
    return pd.DataFrame(
        {
            "id": [str(i) for i in ids],
            "messages": pd.Series(list(conversations), index=range(n), dtype=object),
            "prompt": [user_text(c) for c in conversations],
            "stratum": list(strata) if strata is not None else [None] * n,
            "record": [None] * n if strata is not None else list(range(1, n + 1)),
        }
    )


def triage_categories(train: pd.DataFrame) -> list[str]:
    """The categories the system prompt lists: the sorted labels of the train split."""
    return sorted(train["label"].dropna().astype(str).unique())


def builtin_pools(parts: Mapping[str, pd.DataFrame], template: str) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """A triage conversation per row of each split (id: the ticket id), and the categories of the system prompt."""
    categories = triage_categories(parts["train"])
    system = system_prompt(template, categories)
    pools = {}
    for name in SPLITS:
        df = parts[name]
        try:
            conversations = triage_conversations(df, system)
        except DataError as err:
            raise DataError(
                f"the {name} split: {err}. Built-in examples need the triage ground truth of the built-in "
                "tickets; on other data set llm.enabled: false in params.yaml (skips the generative branch: "
                "sft_data, sft, llm_eval, register_llm) or sft_data.path to your own chat JSONL"
            ) from None
        pools[name] = _pool(df["id"].astype(str).tolist(), conversations, df["label"].astype(str).tolist())
    return pools, categories


def scrub_conversation(messages: Conversation) -> tuple[Conversation, int]:
    """Every turn's content with e-mail addresses and phone numbers replaced; and how many were."""
    out, n = [], 0
    for m in messages:
        content, k = scrub_pii(m["content"])
        out.append({**m, "content": content})
        n += k
    return out, n


def example_id(messages: Conversation) -> str:
    """A stable id for a bring-your-own example: a hash of its messages."""
    blob = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "chat-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def split_by_prompt(prompts: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """A split name per example: prompt groups (exact copies after normalisation) in a seeded random order
    fill test, then val, to their fractions; the rest is train."""
    codes, uniques = pd.factorize(normalise_for_dedup(pd.Series(list(prompts), dtype=object)))
    n = len(codes)
    sizes = np.bincount(codes, minlength=len(uniques))
    n_test = max(1, round(n * test_fraction))
    n_eval = n_test + max(1, round(n * val_fraction))
    side, filled = np.empty(len(uniques), dtype=object), 0
    for g in np.random.default_rng(seed).permutation(len(uniques)):
        side[g] = "test" if filled < n_test else "val" if filled < n_eval else "train"
        filled += sizes[g]
    sides = side[codes] if n else np.array([], dtype=object)
    for name in SPLITS:
        if not (sides == name).any():
            raise DataError(
                f"{n} chat example(s) ({len(uniques)} distinct prompts) are too few to split into train/val/test "
                f"with sft_data.val_fraction {val_fraction} and test_fraction {test_fraction}: {name} is empty"
            )
    return sides


def byo_pools(conversations: Sequence[Conversation], cfg: SftDataConfig) -> tuple[dict[str, pd.DataFrame], dict]:
    """Your chat records, PII-scrubbed when ``scrub_pii``, with hash ids, split by :func:`split_by_prompt`."""
    n_pii = 0
    if cfg.scrub_pii:
        scrubbed = [scrub_conversation(c) for c in conversations]
        conversations, n_pii = [c for c, _ in scrubbed], sum(k for _, k in scrubbed)
    seen: Counter = Counter()
    ids = []
    for c in conversations:
        base = example_id(c)
        seen[base] += 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    pool = _pool(ids, conversations)
    sides = split_by_prompt(pool["prompt"], cfg.val_fraction, cfg.test_fraction, cfg.seed)
    pools = {name: pool[sides == name].reset_index(drop=True) for name in SPLITS}
    info = {
        "records": len(pool),
        "distinct_prompts": int(normalise_for_dedup(pool["prompt"]).nunique()),
        "pii_replacements": n_pii,
    }
    return pools, info


# --------------------------------------------------------------------------- caps and contamination
def cap(pool: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample of ``n`` examples (all when ``n`` is None or not smaller), in the pool's order;
    stratified by ``stratum`` when every example has one and every stratum can be represented on both sides."""
    if n is None or n >= len(pool):
        return pool
    stratify = None
    if pool["stratum"].notna().all():
        counts = pool["stratum"].value_counts()
        if counts.min() >= 2 and len(counts) <= min(n, len(pool) - n):
            stratify = pool["stratum"].to_numpy()
    keep, _ = train_test_split(np.arange(len(pool)), train_size=n, random_state=seed, stratify=stratify)
    return pool.iloc[np.sort(keep)].reset_index(drop=True)


def contamination(train: pd.DataFrame, pool: pd.DataFrame, threshold: float) -> pd.Series:
    """Per example of ``pool``: ``"exact"`` or ``"near"`` when its user turns copy a train example's, else None."""
    if pool.empty or train.empty:
        return pd.Series([None] * len(pool), dtype=object)
    exact, near = cross_duplicates(train["prompt"], pool["prompt"], threshold)
    return pd.Series(np.where(exact, "exact", np.where(near, "near", None)), dtype=object)


def _finding(train: pd.DataFrame, pool: pd.DataFrame, kinds: pd.Series) -> dict:
    hits = np.flatnonzero(kinds.notna().to_numpy())
    train_of = dict(zip(normalise_for_dedup(train["prompt"]), train["id"]))
    norm = normalise_for_dedup(pool["prompt"].iloc[hits[:N_EXAMPLES]]).tolist()
    examples = []
    for i, key in zip(hits[:N_EXAMPLES], norm):
        ex = {"id": pool["id"].iat[i], "kind": kinds.iat[i]}
        if pool["record"].iat[i] is not None:
            ex["record"] = int(pool["record"].iat[i])
        if kinds.iat[i] == "exact":
            ex["train_id"] = train_of.get(key)
        examples.append(ex)
    return {"exact": int((kinds == "exact").sum()), "near": int((kinds == "near").sum()), "examples": examples}


def _blocked(found: dict, threshold: float) -> str:
    counts = "; ".join(f"{k}: {found[k]['exact']} exact and {found[k]['near']} near" for k in EVAL)
    first = next(e for k in EVAL for e in found[k]["examples"])
    split = next(k for k in EVAL if first in found[k]["examples"])
    article = "an exact copy of" if first["kind"] == "exact" else "a near copy of"
    whom = f"train example {first['train_id']!r}" if first.get("train_id") else "a train example"
    return (
        f"sft_data contamination (contamination_action: block): eval prompts copy train prompts ({counts}; "
        f"near: cosine >= {threshold}), e.g. {split} example {first['id']!r}{_where(first)} is {article} {whom}. "
        "Fix the data, or set sft_data.contamination_action to remove (or report)"
    )


def select_examples(pools: Mapping[str, pd.DataFrame], cfg: SftDataConfig) -> tuple[dict[str, pd.DataFrame], dict]:
    """The capped examples of each split, with val/test contamination removed, blocked or reported."""
    caps = {"train": cfg.max_train_samples, "val": cfg.max_val_samples, "test": cfg.max_test_samples}
    chosen = {"train": cap(pools["train"], caps["train"], cfg.seed)}
    found: dict = {}
    for name in EVAL:
        pool = pools[name].assign(kind=contamination(chosen["train"], pools[name], cfg.near_duplicate_threshold))
        found[name] = _finding(chosen["train"], pool, pool["kind"])
        if cfg.contamination_action == "remove":
            pool = pool[pool["kind"].isna()].reset_index(drop=True)
        sample = cap(pool, caps[name], cfg.seed)
        found[name] |= {
            "removed": found[name]["exact"] + found[name]["near"] if cfg.contamination_action == "remove" else 0,
            "written": int(sample["kind"].notna().sum()),
        }
        chosen[name] = sample.drop(columns="kind")
    if cfg.contamination_action == "block" and any(found[k]["exact"] + found[k]["near"] for k in EVAL):
        raise DataError(_blocked(found, cfg.near_duplicate_threshold))
    report = {
        "action": cfg.contamination_action,
        "threshold": cfg.near_duplicate_threshold,
        "compared": "user turns of each val/test pool example with those of the train examples written",
        **found,
    }
    return chosen, report


# --------------------------------------------------------------------------- checks (Great Expectations)
def example_frame(examples: Mapping[str, pd.DataFrame], tokenizer, max_length: int) -> pd.DataFrame:
    """One row per example: split, id, record (BYO: its number in your file), n_messages, roles, assistant_chars
    (its shortest assistant turn, stripped), n_tokens (the whole rendering), fit_tokens (after shortening to
    ``max_length``; NaN when it cannot fit) and unencodable (the :data:`~pipelines.llm.sft.REASONS` key, or None).
    Malformed conversations are not tokenised."""
    rows, conversations = [], []
    for name in SPLITS:
        part = examples[name]
        records = part["record"] if "record" in part else [None] * len(part)
        for rid, record, messages in zip(part["id"], records, part["messages"]):
            answers = [m["content"] for m in messages if m["role"] == "assistant"]
            rows.append(
                {
                    "split": name,
                    "id": rid,
                    "record": record,
                    "n_messages": len(messages),
                    "roles": ",".join(str(m["role"]) for m in messages),
                    "assistant_chars": min((len(a.strip()) for a in answers), default=0),
                    "n_tokens": np.nan,
                    "fit_tokens": np.nan,
                    "unencodable": None,
                }
            )
            conversations.append(messages)
    valid = [i for i, c in enumerate(conversations) if conversation_problem(c) is None]
    if valid:
        try:
            encoded, stats = encode_dataset(tokenizer, [conversations[i] for i in valid], max_length, "drop")
        except DataError as err:  # every example was dropped
            raise DataError(f"sft_data check 'fits_max_length' failed: {err}") from None
        dropped, kept = set(stats.dropped_index), iter(encoded)
        for j, i in enumerate(valid):
            rows[i]["n_tokens"] = len(render_ids(tokenizer, conversations[i]))
            if j not in dropped:
                rows[i]["fit_tokens"] = len(next(kept)["input_ids"])
                continue
            try:  # only the rare dropped example is encoded again, for its reason
                encode_chat(tokenizer, conversations[i], max_length)
            except Unencodable as err:
                rows[i]["unencodable"] = err.reason
    return pd.DataFrame(rows)


def _checks(max_length: int) -> list:
    gxe = quality.expectation_types()

    def meta(check: str, what: str) -> dict:
        return {"meta": {"check": check, "what": what}}

    longer = f"at most {MAX_SHORTENED_SHARE:.0%} of examples longer than llm.max_length ({max_length} tokens)"
    return [
        gxe.ExpectColumnDistinctValuesToContainSet(
            column="split", value_set=list(SPLITS), **meta("examples", "every split has examples")
        ),
        gxe.ExpectColumnValuesToBeUnique(column="id", **meta("unique_ids", "example ids are unique")),
        gxe.ExpectColumnValuesToMatchRegex(
            column="roles",
            regex=ROLE_ORDER,
            **meta("role_order", "roles: [system,] user, assistant alternating, ending with assistant"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="assistant_chars", min_value=1, **meta("assistant_non_empty", "no empty assistant turn")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="n_tokens",
            max_value=max_length,
            mostly=1.0 - MAX_SHORTENED_SHARE,
            **meta("length_within_max_length", f"{longer}: raise it, or shorten the examples"),
        ),
        gxe.ExpectColumnValuesToBeNull(
            column="unencodable",
            **meta("fits_max_length", f"every example fits llm.max_length ({max_length} tokens) once shortened"),
        ),
    ]


def _where(row: dict) -> str:
    return f" (record {int(row['record'])})" if pd.notna(row.get("record")) else ""


def _shown(key: str, value: object) -> bool:
    return key not in ("id", "record") and value is not None and not (isinstance(value, float) and np.isnan(value))


def _failure(check: str, what: str, result: dict, frame: pd.DataFrame) -> str:
    if check == "examples":
        missing = [s for s in SPLITS if s not in set(frame["split"])]
        return f"'{check}' ({what}): no examples in {missing}"
    rows = result.get("unexpected_index_list") or []
    split_of = dict(zip(frame["id"], frame["split"]))
    per_split = Counter(split_of.get(r["id"]) for r in rows)
    splits = ", ".join(f"{s} {per_split[s]}" for s in SPLITS if per_split[s])
    eg = [f"{r['id']}{_where(r)}" + "".join(f" ({k}={v})" for k, v in r.items() if _shown(k, v)) for r in rows[:3]]
    text = f"'{check}' ({what}): {result.get('unexpected_count')} of {result.get('element_count')} examples"
    text += f" ({splits}), e.g. {eg}"
    reasons = sorted({r["unencodable"] for r in rows if r.get("unencodable")})
    return text + "".join(f"; {k}: {REASONS.get(k, k)}" for k in reasons)


def check_examples(frame: pd.DataFrame, max_length: int) -> list[dict]:
    """Run the expectations on :func:`example_frame`'s frame (as :mod:`pipelines.data.quality` runs its suites);
    one :class:`DataError` naming every breached check, else a row per expectation (check, expectation, column,
    success, observed)."""
    result = quality.run_suite(frame, _checks(max_length), "sft_examples", ["id", "record"])
    outcome, failures = quality.ValidationOutcome(success=bool(result["success"])), []
    for res in result["results"]:
        meta = res["expectation_config"]["meta"]
        expectation, column, observed = quality.describe(res)  # the validate stage's wording of a result
        if meta["check"] == "examples":  # GE's COMPLETE format leaves this aggregate's observed value out
            observed = f"examples per split: {frame['split'].value_counts().reindex(SPLITS, fill_value=0).to_dict()}"
        outcome.results.append(
            {"check": meta["check"], "expectation": expectation, "column": column, "success": bool(res["success"]),
             "observed": observed}
        )  # fmt: skip
        if not res["success"]:
            failures.append(_failure(meta["check"], meta["what"], res.get("result") or {}, frame))
    if failures:
        raise DataError(f"sft_data checks failed ({len(failures)} of {len(outcome.results)}): " + "; ".join(failures))
    return outcome.results


def token_stats(frame: pd.DataFrame, max_length: int) -> dict[str, dict]:
    """Per split: p50 / p95 / max tokens of the whole rendering, and how many get shortened to ``max_length``."""
    out = {}
    for name in SPLITS:
        n = frame.loc[frame["split"] == name, "n_tokens"].dropna()
        if n.empty:
            continue
        out[name] = {
            "p50": int(n.quantile(0.5)),
            "p95": int(np.ceil(n.quantile(0.95))),
            "max": int(n.max()),
            "shortened": int((n > max_length).sum()),
        }
    return out


# --------------------------------------------------------------------------- the stage
def build_sft_data(
    cfg: SftDataConfig,
    llm: LlmConfig,
    tokenizer,
    *,
    parts: Mapping[str, pd.DataFrame] | None = None,
    conversations: Sequence[Conversation] | None = None,
) -> tuple[dict[str, list[dict]], dict]:
    """Pure stage function: the classifier's splits (``parts``, built-in) or your chat records (``conversations``)
    → ``{split: [{"id", "messages"}, ...]}`` and the report. Raises :class:`DataError` on a breach."""
    if (parts is None) == (conversations is None):
        raise ValueError("give exactly one of parts (built-in) or conversations (your JSONL)")
    if parts is not None:
        pools, source = builtin_pools(parts, llm.system_prompt)
        mode, info = "builtin", {"categories": source}
    else:
        pools, info = byo_pools(conversations, cfg)
        mode = "byo"
    chosen, found = select_examples(pools, cfg)
    frame = example_frame(chosen, tokenizer, llm.max_length)
    checks = check_examples(frame, llm.max_length)
    examples = {k: [{"id": i, "messages": m} for i, m in zip(v["id"], v["messages"])] for k, v in chosen.items()}
    report = {
        "mode": mode,
        "source": cfg.path or "data/processed (the classifier's splits)",
        **info,
        "max_length": llm.max_length,
        "counts": {k: {"pool": len(pools[k]), "written": len(chosen[k])} for k in SPLITS},
        "contamination": found,
        "tokens": token_stats(frame, llm.max_length),
        "checks": checks,
    }
    return examples, report


def stage_metrics(report: dict) -> dict:
    """The few numbers DVC tracks: examples per split, contamination found and removed, shortened examples."""
    found = report["contamination"]
    return {
        **{f"examples_{k}": v["written"] for k, v in report["counts"].items()},
        "contaminated_exact": sum(found[k]["exact"] for k in EVAL),
        "contaminated_near": sum(found[k]["near"] for k in EVAL),
        "contamination_removed": sum(found[k]["removed"] for k in EVAL),
        "shortened": sum(t["shortened"] for t in report["tokens"].values()),
    }


# --------------------------------------------------------------------------- files
def write_outputs(
    examples: Mapping[str, list[dict]], report: dict, out_dir: Path, report_path: Path, metrics_path: Path
) -> None:
    """The three JSONL files, the report and the metrics, published together (nothing on failure)."""
    with atomic_outputs(out_dir, report_path, metrics_path) as staged:
        for name in SPLITS:
            path = examples_path(staged[out_dir], name)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as f:
                for record in examples[name]:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        write_json(report, staged[report_path])
        write_json(stage_metrics(report), staged[metrics_path])
