"""The generative model's monitoring pass on constructed logs with planted defects.

The logs are written through the serving contract (:mod:`serving.llm.records`: ``generation_row`` and
``write_part``), so ``json_valid`` is what serving itself records. Expected figures are counted from the plant,
not recomputed with the module under test.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from monitoring.generative import STATE_DIR, SUMMARY_FILE, format_generative, monitor_generative, user_text
from pipelines.config import Params
from pipelines.llm.chat_data import prompt_messages, triage_answer
from serving.llm.records import (
    GENERATION_FEEDBACK,
    GENERATIONS,
    generation_feedback_row,
    generation_row,
    write_part,
)

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
SYSTEM = "You triage customer support tickets. Reply with one JSON object."
WORDS = (
    "hello my invoice shows a double charge on the card please refund the order it never arrived and the "
    "tracking page is empty the app crashes at login password reset mail does not come we need an export to csv "
    "the dashboard is slow since yesterday cancel my plan thanks"
).split()
BASE = {
    "category": "billing",
    "priority": "normal",
    "product": "Widget Pro",
    "order_id": "ORD-1",
    "summary": "A customer reports a double charge.",
}
INVALID = '{"category":"billing","priority":"nor'  # cut by max_tokens


def ticket(rng: np.random.Generator, words: tuple[int, int] = (15, 40)) -> str:
    text = " ".join(rng.choice(WORDS, size=int(rng.integers(*words))))
    return f"{text} order #{rng.integers(100000, 999999)}" if rng.random() < 0.5 else text


def gen_row(i: int, text: str, output: str, tokens: int, *, finish: str = "stop", version: str = "3") -> dict:
    prompt = json.dumps(prompt_messages(text, SYSTEM))
    return generation_row(
        ts=T0 + timedelta(seconds=i),
        request_id=rid(i),
        endpoint="chat",
        model_name="ticket-triage",
        model_version=version,
        prompt=prompt,
        stored_prompt=prompt,
        output=output,
        stored_output=output,
        response_format="json_schema",
        prompt_tokens=40 + len(text.split()),
        completion_tokens=tokens,
        ttft_ms=40.0,
        latency_ms=800.0,
        finish_reason=finish,
        max_tokens=256,
        temperature=0.0,
    )


def rid(i: int) -> str:
    return f"chatcmpl-{i:032x}"


def fb_row(i: int, fields: dict, at: int) -> dict:
    ts = T0 + timedelta(hours=1, seconds=at)
    return generation_feedback_row(ts=ts, request_id=rid(i), fields=fields, matched=True)


def clean_rows(rng: np.random.Generator, start: int, n: int, tokens: tuple[int, int] = (35, 60), **kw) -> list[dict]:
    return [gen_row(start + k, ticket(rng, **kw), triage_answer(BASE), int(rng.integers(*tokens))) for k in range(n)]


@pytest.fixture
def params(tmp_path: Path) -> Params:
    """Defaults, with the log, the reports and an SFT reference of the same kind of tickets under tmp_path."""
    rng = np.random.default_rng(7)
    sft = tmp_path / "sft" / "train.jsonl"
    sft.parent.mkdir()
    with sft.open("w", encoding="utf-8") as f:
        for k in range(400):
            messages = [*prompt_messages(ticket(rng), SYSTEM), {"role": "assistant", "content": triage_answer(BASE)}]
            f.write(json.dumps({"id": f"T{k}", "messages": messages}) + "\n")
    return Params.model_validate(
        {
            "monitor": {
                "log_dir": str(tmp_path / "log"),
                "reports_dir": str(tmp_path / "reports"),
                "persistence": 2,
                "generative": {"reference": str(sft)},
            }
        }
    )


def log(params: Params) -> str:
    return params.monitor.log_dir


def checks(summary: dict) -> dict[str, dict]:
    return {c["metric"]: c for c in summary["checks"]}


# --------------------------------------------------------------------------- no log, small logs
def test_a_missing_log_is_skipped_with_a_reason(params):
    s = monitor_generative(params, now=T0)
    assert s["skipped"].startswith("no generative log") and "not served" in s["skipped"]
    assert s["checks"] == [] and s["breached"] == [] and s["confirmed"] is False
    written = json.loads((Path(s["reports_dir"]) / SUMMARY_FILE).read_text())
    assert written["skipped"] == s["skipped"]
    assert not (Path(params.monitor.reports_dir) / STATE_DIR / "state.json").exists()
    assert "SKIPPED" in format_generative(s)


def test_an_empty_log_and_a_small_window_are_skipped(params):
    (Path(log(params)) / GENERATIONS).mkdir(parents=True)
    assert monitor_generative(params, now=T0)["skipped"] == "no generative records in the log"
    write_part(log(params), GENERATIONS, clean_rows(np.random.default_rng(0), 0, 20), now=T0)
    s = monitor_generative(params, now=T0)
    assert "window too small: 20 answer(s) of v3" in s["skipped"] and "min_window_rows=50" in s["skipped"]


def test_disabled_is_skipped(params):
    params.monitor.generative.enabled = False
    assert monitor_generative(params, now=T0)["skipped"] == "monitor.generative.enabled is false"


# --------------------------------------------------------------------------- a clean window
def test_a_clean_window_gives_no_breach(params):
    rng = np.random.default_rng(1)
    write_part(log(params), GENERATIONS, clean_rows(rng, 0, 400), now=T0)
    write_part(log(params), GENERATION_FEEDBACK, [fb_row(i, BASE, i) for i in range(360, 400)], now=T0)
    s = monitor_generative(params, now=T0)
    c = checks(s)
    assert s["breached"] == [], format_generative(s)
    assert c["json_valid_rate"]["value"] == 1.0 and c["length_cut_share"]["value"] == 0.0
    assert c["category_accuracy"]["value"] == 1.0 and c["mean_field_score"]["value"] == 1.0
    assert c["output_length_drift"]["breach"] is False and c["prompt_drift"]["breach"] is False
    assert "SFT training prompts" in s["prompt_reference"]
    assert s["window"]["window_rows"] == 200 and s["window"]["first_window_rows"] == 200
    assert s["window"]["feedback_rows"] == 40 and s["persistence"] == "no breach"
    assert set(s["reports"]) == {"output_length_drift", "prompt_drift"}
    assert all(Path(p).is_file() for p in s["reports"].values())


# --------------------------------------------------------------------------- planted defects
def defect_log(params: Params, start: int = 0, rng_seed: int = 6) -> None:
    """A clean first window, then a window with 30% invalid JSON (40 of them cut by max_tokens), outputs three
    times longer, and 50 corrected answers with known field errors (window rows: start+200 ...)."""
    rng = np.random.default_rng(rng_seed)
    rows = clean_rows(rng, start, 200) if start == 0 else []
    w0 = start + 200
    outputs: dict[int, str] = {}
    feedback: list[dict] = []

    def planted(k: int, answer: dict | None, fields: dict) -> None:
        outputs[w0 + k] = INVALID if answer is None else triage_answer(answer)
        feedback.append(fb_row(w0 + k, fields, k))

    for k in range(5):  # invalid answers with feedback: wrong on every field
        planted(k, None, BASE)
    for k in range(100, 111):  # 11 wrong categories
        planted(k, {**BASE, "category": "shipping"}, BASE)
    for k in range(111, 116):  # 5 wrong priorities
        planted(k, {**BASE, "priority": "high"}, BASE)
    for k in range(116, 120):  # 4 wrong products
        planted(k, {**BASE, "product": "Gadget"}, BASE)
    planted(120, {**BASE, "product": "widget pro"}, BASE)  # product: case does not matter -> right
    planted(121, {**BASE, "order_id": "ord-1"}, BASE)  # order_id: exact -> wrong
    planted(122, {**BASE, "product": "none"}, {**BASE, "product": None})  # "none" means none -> right
    for k in range(123, 126):  # feedback gives the category only: the other fields are not judged
        planted(k, BASE, {"category": "billing"})
    for k in range(126, 145):
        planted(k, BASE, BASE)
    feedback.append(fb_row(w0 + 126, {"category": "refund"}, -1))  # older feedback for the same answer: superseded
    feedback.append(generation_feedback_row(ts=T0, request_id=rid(10**6), fields=BASE, matched=False))  # unknown id
    for k in range(200):
        i = w0 + k
        invalid = k < 60  # 30% of the window
        out = outputs.get(i, INVALID if invalid else triage_answer(BASE))
        rows.append(gen_row(i, ticket(rng), out, int(rng.integers(130, 200)), finish="length" if k < 40 else "stop"))
    write_part(log(params), GENERATIONS, rows, now=T0 + timedelta(minutes=start))
    write_part(log(params), GENERATION_FEEDBACK, feedback, now=T0 + timedelta(minutes=start))


def test_planted_defects_give_the_counted_figures_and_verdicts(params):
    defect_log(params)
    s = monitor_generative(params, now=T0)
    c = checks(s)
    # JSON validity: 60 of 200 invalid, 40 of those cut by max_tokens
    assert c["json_valid_rate"]["value"] == pytest.approx(140 / 200) and c["json_valid_rate"]["breach"] is True
    assert "60 of 200 JSON answers invalid, 40 of them cut by max_tokens" in c["json_valid_rate"]["detail"]
    assert c["length_cut_share"]["value"] == pytest.approx(0.2) and c["length_cut_share"]["breach"] is True
    assert s["finish_reasons"] == {"stop": 0.8, "length": 0.2}
    # fields, counted from the plant: category over 50 answers, the others over the 47 that give them
    fa = s["field_accuracy"]
    assert fa["n"] == 50 and fa["category_n"] == 50 and fa["priority_n"] == 47
    cat, pri, prod, oid = (50 - 5 - 11) / 50, (47 - 5 - 5) / 47, (47 - 5 - 4) / 47, (47 - 5 - 1) / 47
    assert fa["category_accuracy"] == pytest.approx(cat)
    assert fa["priority_accuracy"] == pytest.approx(pri)
    assert fa["product_exact_match"] == pytest.approx(prod)
    assert fa["order_id_exact_match"] == pytest.approx(oid)
    assert fa["mean_field_score"] == pytest.approx((cat + pri + prod + oid) / 4)
    assert fa["triage_valid_rate"] == pytest.approx(45 / 50)
    assert fa["summary_rouge_l"] == pytest.approx(42 / 47)  # the same summary, or an invalid answer's 0
    assert c["category_accuracy"]["breach"] is True and "0.6800 < min 0.7" in c["category_accuracy"]["detail"]
    assert c["mean_field_score"]["breach"] is False  # ~0.79 >= 0.7
    # outputs ~3x longer than the first window's; prompts unchanged
    lo = c["output_length_drift"]
    assert lo["breach"] is True and s["lengths"]["mean_now"] > 2.5 * s["lengths"]["mean_first_window"]
    assert "completion tokens mean" in lo["detail"] and "first window (200 answers)" in lo["detail"]
    assert c["prompt_drift"]["breach"] is False
    assert set(s["breached"]) == {"json_valid_rate", "length_cut_share", "category_accuracy", "output_length_drift"}
    assert s["window"]["unknown_feedback"] == 1 and any("no logged answer" in n for n in s["notes"])
    assert s["confirmed"] is False and s["persistence"] == "breach 1/2 consecutive window(s)"
    assert "retrain_reason" not in s


def test_a_breach_must_persist_and_a_window_is_never_counted_twice(params):
    defect_log(params)
    assert monitor_generative(params, now=T0)["persistence"] == "breach 1/2 consecutive window(s)"
    again = monitor_generative(params, now=T0 + timedelta(minutes=1))
    assert again["confirmed"] is False and again["persistence"].startswith("same window")
    defect_log(params, start=200, rng_seed=8)  # a new defective window
    s = monitor_generative(params, now=T0 + timedelta(minutes=2))
    assert s["confirmed"] is True and s["persistence"].endswith("CONFIRMED")
    assert s["retrain_reason"].startswith("generative v3: confirmed breach of")
    state = json.loads((Path(params.monitor.reports_dir) / STATE_DIR / "state.json").read_text())
    assert state["consecutive"] == 2
    assert not (Path(params.monitor.reports_dir) / "state.json").exists()  # the classifier's count is untouched


def test_retrain_on_breach_false_reports_without_a_reason(params):
    params.monitor.persistence = 1
    params.monitor.retrain_on_breach = False
    defect_log(params)
    s = monitor_generative(params, now=T0)
    assert s["confirmed"] is True and "retrain_reason" not in s


# --------------------------------------------------------------------------- references, versions
def test_without_an_sft_reference_prompts_are_judged_against_the_first_window(params):
    Path(params.monitor.generative.reference).unlink()
    rng = np.random.default_rng(4)
    rows = clean_rows(rng, 0, 200) + clean_rows(rng, 200, 200, words=(150, 250))  # much longer tickets
    write_part(log(params), GENERATIONS, rows, now=T0)
    s = monitor_generative(params, now=T0)
    c = checks(s)
    assert s["prompt_reference"] == "the first window of v3 (200 answers)"
    assert c["prompt_drift"]["breach"] is True and "first window" in c["prompt_drift"]["detail"]
    assert set(s["lengths"]["prompt_columns"]) == {"length_chars", "word_count", "prompt_tokens"}
    assert c["output_length_drift"]["breach"] is False
    # no feedback: field accuracy is not judged, with the reason
    assert c["category_accuracy"]["breach"] is None and "0 answers with feedback" in c["category_accuracy"]["detail"]


def test_the_first_window_is_the_output_reference_so_a_young_log_is_not_judged_on_length(params):
    write_part(log(params), GENERATIONS, clean_rows(np.random.default_rng(5), 0, 120), now=T0)
    c = checks(monitor_generative(params, now=T0))
    assert c["output_length_drift"]["breach"] is None
    assert "the reference is the first window: 0 earlier answer(s)" in c["output_length_drift"]["detail"]
    assert c["prompt_drift"]["breach"] is False  # the SFT prompts need no earlier window


def test_only_the_newest_version_is_judged(params):
    rng = np.random.default_rng(6)
    old = [gen_row(k, ticket(rng), INVALID, 200, finish="length", version="2") for k in range(100)]
    write_part(log(params), GENERATIONS, old + clean_rows(rng, 100, 100), now=T0)
    s = monitor_generative(params, now=T0)
    assert s["model_version"] == "3" and s["window"]["other_version_rows"] == 100
    assert checks(s)["json_valid_rate"]["value"] == 1.0
    assert any("other versions {'2': 100}" in n for n in s["notes"])


def test_user_text_reads_chat_and_completion_prompts():
    chat = json.dumps(prompt_messages("my card was charged twice", SYSTEM))
    assert user_text(chat) == "Ticket:\nmy card was charged twice"
    assert user_text("complete this: hello") == "complete this: hello"
    assert user_text(None) is None


# --------------------------------------------------------------------------- the monitor flow covers both models
def test_the_monitor_flow_emits_the_generative_event_with_its_own_resource(tmp_path, monkeypatch):
    import yaml

    import monitoring.run
    from flows import monitor as monitor_flow
    from pipelines.config import load_params
    from tests.helpers.flows import monitor_summary

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "registered_model": "tiny"},
                "monitor": {"persistence": 1, "generative": {"reference": None}},
            }
        )
    )
    params = load_params(tmp_path / "params.yaml")
    defect_log(params)
    seen: dict = {}

    def classifier_pass(params, now=None, **_):  # the classifier's pass is monitoring.run's own tests' business
        seen["now"] = now
        return monitor_summary(False, f"reports/monitoring/{now:%Y%m%dT%H%M%S%fZ}"), None

    events: list[dict] = []
    monkeypatch.setattr(monitoring.run, "monitor_once", classifier_pass)
    monkeypatch.setattr(monitor_flow, "emit_event", lambda **kw: events.append(kw))
    out = monitor_flow.monitor()
    (event,) = events  # the classifier did not breach; the generative model did, confirmed at persistence 1
    assert event["event"] == "model.drift.detected"
    assert event["resource"] == {"prefect.resource.id": "model.ticket-triage"}
    assert event["payload"]["family"] == "generative" and event["payload"]["reason"].startswith("generative v3")
    assert out["confirmed"] is False and out["generative"]["confirmed"] is True
    gen_json = Path(out["generative"]["reports_dir"]) / SUMMARY_FILE
    assert gen_json.is_file() and gen_json.parent.name == f"{seen['now']:%Y%m%dT%H%M%S%fZ}"  # beside summary.json
    state = json.loads((tmp_path / "reports/monitoring" / STATE_DIR / "state.json").read_text())
    assert state["consecutive"] == 0 and state["last_reset"]["reason"].startswith("event model.drift.detected")
