"""Library of the ``register_llm`` stage (its CLI is :mod:`pipelines.register_llm`): the generative model's own
registered model (``register_llm.registered_model``), with the classifier's aliases, gate machinery and rollback.

Order (so the registry is never half-updated), as for the classifier: check that ``metrics/llm_eval.json``
scores *this* adapter on *these* test rows → log the adapter as a pyfunc (:mod:`pipelines.llm.pyfunc`: the
adapter folder only, the base by reference) → create the version, tagged with the adapter's sha256, the base
model reference and lineage → alias ``challenger`` → gate → move ``champion`` (the single commit point,
:func:`pipelines.registry.gate.run_gate`). The same adapter file (same sha256) is not registered twice.

**The gate.** Challenger and champion are compared on the current ``data/sft/test.jsonl`` rows. The
challenger's scores are the ``finetuned`` entry of ``metrics/llm_eval.json``, used only when that file's
``adapter_sha256`` is the challenger's adapter and its ``test_ids_sha256`` the hash of the current test ids
(otherwise :class:`StaleEvaluation`: re-run llm_eval); the champion is loaded from the registry and scored
now on the same rows (its pyfunc answers the rows' prompts, :func:`pipelines.llm.evaluation.score_answers`
grades them). The challenger is promoted unless it is below the champion by more than
``register_llm.gate_mean_field_tolerance`` in mean field score or ``gate_json_valid_tolerance`` in valid-JSON
rate; the first model becomes champion. Data whose answers are not triage JSON cannot be graded by field:
such a challenger is refused (promote it by hand: ``python -m pipelines.promote --family llm --version N``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipelines.config import Params, RegisterLlmConfig
from pipelines.errors import ConfigError, DataError
from pipelines.llm.skipping import REASON as SKIPPED_REASON
from pipelines.llm.skipping import is_skipped, load_record
from pipelines.registry.aliases import CHALLENGER

ADAPTER_FILE = "adapter_model.safetensors"  # what llm_eval hashes (adapter_sha256)
ADAPTER_TAG = "adapter_sha256"
SFT_DATA = ("data/sft", "data/sft/train.jsonl", "data/sft/val.jsonl", "data/sft/test.jsonl")
# (score key, what it is called, the tolerance's field in register_llm)
GATED = (
    ("mean_field_score", "mean field score", "gate_mean_field_tolerance"),
    ("json_valid_rate", "valid-JSON rate", "gate_json_valid_tolerance"),
)
NOT_SCORES = ("n", "seconds", "new_tokens", "tokens_per_s")  # counts and speed: not compared
RERUN = "re-run the evaluation: `dvc repro llm_eval` (or `python -m pipelines.llm_eval`)"


class StaleEvaluation(DataError):
    """``metrics/llm_eval.json`` scores another adapter or other test rows than the ones being gated."""


def refuse_skipped(eval_metrics: str | Path) -> None:
    """A :class:`~pipelines.errors.ConfigError` when ``eval_metrics`` is a skipped record (``llm.enabled: false``):
    the branch did not run, so there is no challenger to gate (promote or roll back a version by hand still works)."""
    if is_skipped(load_record(eval_metrics)):
        raise ConfigError(
            f"{eval_metrics} is a 'skipped' record ({SKIPPED_REASON}): the generative branch did not run, so there "
            "is no challenger to gate; set llm.enabled: true in params.yaml and run `dvc repro register_llm`"
        )


# --------------------------------------------------------------------------- what is being gated
def adapter_sha256(adapter_dir: str | Path) -> str:
    """sha256 of the adapter's weights file (the fingerprint llm_eval records and the registry tags)."""
    from pipelines.llm.evaluation import file_sha256

    path = Path(adapter_dir) / ADAPTER_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist: run the sft stage first (dvc repro sft)")
    return file_sha256(path)


def test_examples(path: str | Path) -> tuple[list[dict], str]:
    """The ``{"id", "messages"}`` test examples and the sha256 of their ordered ids."""
    from pipelines.llm.chat_data import read_examples
    from pipelines.llm.evaluation import ids_sha256

    examples = read_examples(path)
    return examples, ids_sha256([e["id"] for e in examples])


def challenger_scores(eval_metrics: str | Path, adapter_sha: str, test_ids_sha: str) -> dict:
    """The ``finetuned`` scores of ``eval_metrics`` when they belong to this adapter and these test rows."""
    path = Path(eval_metrics)
    if not path.is_file():
        raise StaleEvaluation(f"{path} does not exist: the challenger has no scores; {RERUN}")
    refuse_skipped(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    entry = data.get("finetuned")
    if not isinstance(entry, dict) or "skipped" in entry:
        raise StaleEvaluation(f"{path} has no 'finetuned' scores; {RERUN}")
    scored_adapter = entry.get("adapter_sha256", data.get("adapter_sha256"))
    scored_ids = entry.get("test_ids_sha256", data.get("test_ids_sha256"))
    if scored_adapter != adapter_sha:
        raise StaleEvaluation(
            f"{path} scores adapter sha256 {str(scored_adapter)[:12]}, not the adapter being gated "
            f"({adapter_sha[:12]}); {RERUN}"
        )
    if scored_ids != test_ids_sha:
        raise StaleEvaluation(
            f"{path} was scored on other test rows (ids sha256 {str(scored_ids)[:12]}) than the current "
            f"data/sft/test.jsonl ({test_ids_sha[:12]}); {RERUN}"
        )
    return entry


# --------------------------------------------------------------------------- the decision
def gate_decision(challenger: dict, champion: dict | None, cfg: RegisterLlmConfig) -> dict:
    """Pure gate on two :func:`~pipelines.llm.evaluation.score_answers` dicts (same test rows)."""
    if champion is None:
        return {"promote": True, "reasons": ["no champion yet: the first model becomes champion"], "deltas": {}}
    promote, reasons, deltas = True, [], {}
    for key, label, tolerance_field in GATED:
        tolerance = getattr(cfg, tolerance_field)
        new, old = challenger.get(key), champion.get(key)
        if new is None or old is None:
            promote = False
            why = challenger.get("reason") or champion.get("reason") or f"no {key}"
            reasons.append(f"{label} cannot be compared ({why}): promote by hand if this model should serve")
            continue
        delta = new - old
        deltas[key] = round(delta, 6)
        if delta < -tolerance:
            promote = False
            reasons.append(
                f"{label} {new:.4f} is {-delta:.4f} below the champion's {old:.4f} "
                f"(tolerance {tolerance}, register_llm.{tolerance_field})"
            )
        else:
            reasons.append(f"{label} {new:.4f} vs champion {old:.4f} (delta {delta:+.4f}, tolerance {tolerance})")
    return {"promote": promote, "reasons": reasons, "deltas": deltas}


def brief(scores: dict) -> dict:
    """The scores kept in the decision (and tagged ``gate.test_<name>``): the graded ones, not counts or speed."""
    return {
        k: v
        for k, v in scores.items()
        if k not in NOT_SCORES and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))
    }


def score_registered(reg, ref: str, examples: Sequence[dict], max_new_tokens: int, batch_size: int) -> dict:
    """Load ``ref`` from the registry and score its greedy answers to the examples' prompts now."""
    from pipelines.llm.evaluation import prompts_and_references, score_answers
    from pipelines.registry.gate import load_checked

    prompts, references = prompts_and_references(examples)
    model = load_checked(reg, ref, "champion", reg.load_pyfunc)  # unloadable: ModelLoadFailed naming the version
    answers = model.predict(
        pd.DataFrame({"messages": [[{"role": m["role"], "content": m["content"]} for m in p] for p in prompts]}),
        params={"max_new_tokens": int(max_new_tokens), "batch_size": int(batch_size)},
    )
    return score_answers([str(a) for a in list(answers)], references)


def run_llm_gate(
    reg,
    cfg: Params,
    examples: Sequence[dict],
    ids_sha: str,
    finetuned: dict,
    *,
    adapter_sha: str = "",
    challenger: str | None = None,
) -> dict:
    """The gate on the current challenger (``challenger``: the version already resolved): its ``finetuned``
    scores vs the champion scored now on ``examples``. The challenger is loaded once as serving would load it
    (one that cannot be loaded stops the gate, :class:`~pipelines.registry.gate.ModelLoadFailed`)."""
    from pipelines.registry.gate import load_checked, run_gate

    def score(version: str, role: str) -> dict:
        if role == CHALLENGER:
            load_checked(reg, version, role, reg.load_pyfunc)  # loadable, then dropped; its scores are llm_eval's
            return finetuned
        print(f"register_llm: scoring the champion v{version} on {len(examples)} test rows (generation)")
        return score_registered(reg, version, examples, cfg.llm_eval.max_new_tokens, cfg.llm_eval.batch_size)

    basis = (
        f"compared on the current test rows ({len(examples):,}, ids sha256 {ids_sha[:12]}): the challenger's "
        f"scores from llm_eval (same adapter, same rows), the champion loaded from the registry and scored now"
    )
    d = run_gate(
        reg,
        score,
        lambda chall, champ: gate_decision(chall, champ, cfg.register_llm),
        rows=len(examples),
        brief=brief,
        family="llm",
        basis=basis,
        auto_promote=cfg.register_llm.auto_promote,
        challenger=challenger,
    )
    d.update({"adapter_sha256": adapter_sha, "test_ids_sha256": ids_sha})
    reg.tag_version(d["challenger_version"], {"gate.test_ids_sha256": ids_sha})
    return d


def gate_and_report(reg, cfg: Params, test: Path, eval_metrics: Path, report: Path, decision_json: Path) -> dict:
    """Gate the current challenger (its scores from ``eval_metrics``, checked against its adapter tag and the
    ``test`` ids) and write the decision (markdown + JSON, together)."""
    from pipelines.registry.gate import write_decision

    refuse_skipped(eval_metrics)  # before reading data/sft, which a skipped branch leaves without examples
    examples, ids_sha = test_examples(test)
    chall_v = reg.alias(CHALLENGER)
    if chall_v is None:
        raise ConfigError(f"registered model '{reg.name}' has no '{CHALLENGER}' alias; run register_llm first")
    adapter_sha = reg.version(chall_v).tags.get(ADAPTER_TAG, "")
    finetuned = challenger_scores(eval_metrics, adapter_sha, ids_sha)
    d = run_llm_gate(reg, cfg, examples, ids_sha, finetuned, adapter_sha=adapter_sha, challenger=chall_v)
    write_decision(d, report, decision_json)
    return d


# --------------------------------------------------------------------------- registering
def register_adapter(
    reg,
    cfg: Params,
    adapter_dir: Path,
    system: str,
    *,
    scores: dict | None = None,
) -> str:
    """Log and register the adapter (or reuse the version with the same adapter sha256); alias it ``challenger``.

    ``system`` is the system prompt recorded for bare tickets (:func:`served_system_prompt`); ``scores`` (the
    challenger's llm_eval scores) are logged with the run."""
    from pipelines.llm.pyfunc import log_triage_model, model_config
    from pipelines.registry import tracking

    digest = adapter_sha256(adapter_dir)
    version = reg.find_version(ADAPTER_TAG, digest)
    if version is not None:
        print(f"register_llm: {adapter_dir} is already '{reg.name}' v{version}; not registering it again")
        reg.set_alias(CHALLENGER, version)
        return version
    config = model_config(
        cfg.llm.base_model,
        cfg.llm.cache_dir,
        system,
        cfg.llm_eval.max_new_tokens,
        cfg.llm_eval.batch_size,
    )
    lineage = tracking.lineage_tags("register_llm", paths=(*tracking.DATA_OUTS, *SFT_DATA))
    params = {"adapter_dir": str(adapter_dir), "base_model": cfg.llm.base_model, "llm_eval": cfg.llm_eval.model_dump()}
    with tracking.run("register-llm", "register_llm", params=params, tags=lineage) as active:
        if scores:
            tracking.log_metrics(brief(scores), prefix="test_")
        info = log_triage_model(adapter_dir, config)
        tags = {
            ADAPTER_TAG: digest,
            "base_model": cfg.llm.base_model,
            "llm.cache_dir": cfg.llm.cache_dir,
            "source_run_id": active.info.run_id,
            **lineage,
        }
        version = reg.register(info.model_uri, tags=tags)
    print(f"register_llm: '{reg.name}' v{version} (adapter {digest[:12]}, base {cfg.llm.base_model})")
    reg.set_alias(CHALLENGER, version)
    return version


def served_system_prompt(examples: Sequence[dict], template: str) -> str:
    """The system prompt a bare ticket (``text`` input) is sent with: the one the examples carry (built-in data:
    ``llm.system_prompt`` with the train split's categories, what the model was trained and evaluated with),
    else ``template`` with the generator's categories."""
    from pipelines.config import GENERATOR_LABELS
    from pipelines.llm.chat_data import system_prompt

    found = {e["messages"][0]["content"] for e in examples if e["messages"] and e["messages"][0]["role"] == "system"}
    return found.pop() if len(found) == 1 else system_prompt(template, GENERATOR_LABELS)
