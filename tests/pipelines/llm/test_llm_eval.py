"""llm_eval: scoring against hand-computed values, the classical rules on constructed tickets, the report and
plots, one system's run on a tiny LM, and the stage end to end on a tiny LM + LoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.errors import DataError
from pipelines.llm.chat_data import triage_answer
from pipelines.llm.classical import (
    TriageRules,
    classical_system,
    learn_rules,
    priority_of,
    summary_of,
    ticket_text,
)
from pipelines.llm.evaluation import (
    INVALID,
    NOT_TRIAGE,
    evaluate_system,
    few_shot_prompt,
    field_confusion,
    field_pairs,
    ids_sha256,
    lcs_length,
    pick_shots,
    rouge_l,
    score_answers,
    tokens,
    worst_examples,
)
from pipelines.llm.evaluation_report import render_report, write_confusion_csv, write_field_plot


def ans(**fields) -> str:
    base = {
        "category": "billing",
        "priority": "normal",
        "product": None,
        "order_id": None,
        "summary": "The customer was charged twice.",
    }
    return triage_answer({**base, **fields})


def example(i: int, text: str, system: str = "Triage.", **fields) -> dict:
    return {
        "id": f"t{i}",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Ticket:\n{text}"},
            {"role": "assistant", "content": ans(**fields)},
        ],
    }


# --------------------------------------------------------------------------- ROUGE-L
@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        ("police kill the gunman", "police killed the gunman", 0.75),  # LCS 3 of 4 and 4
        ("the gunman kill police", "police killed the gunman", 0.5),  # LCS "the gunman": 2/4, 2/4
        ("the cat on the mat", "the cat sat on the mat", 10 / 11),  # P 5/5, R 5/6 -> 2PR/(P+R) = 10/11
        ("Hello, WORLD!", "hello world", 1.0),  # lowercased, punctuation is not a token
        ("a b c d", "e f", 0.0),
        ("", "anything", 0.0),  # empty on either side scores 0 (as rouge-score)
        ("", "", 0.0),
    ],
)
def test_rouge_l_known_values(answer: str, reference: str, expected: float) -> None:
    assert rouge_l(answer, reference) == pytest.approx(expected)


def test_tokens_and_lcs() -> None:
    assert tokens("Order ORD-123, café_bar!") == ["order", "ord", "123", "café", "bar"]
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example
    assert lcs_length([], ["a"]) == 0


# --------------------------------------------------------------------------- scoring
def test_score_answers_matches_hand_computed_values() -> None:
    refs = [
        ans(category="billing", priority="high", product="Nimbus Drive", order_id="ORD-123456"),
        ans(category="refund", priority="low", product=None, order_id=None, summary="a refund for an order"),
        ans(category="shipping", priority="urgent", product="Nimbus Mail", order_id="ORD-000001"),
        ans(category="security"),
    ]
    answers = [
        # all four fields right, whitespace and casing aside; summary identical
        ans(category=" Billing ", priority="HIGH", product="nimbus drive", order_id=" ORD-123456 "),
        # category right, priority wrong; "null"/"" mean none; summary shares "a refund" of 5 reference words
        ans(category="refund", priority="normal", product="null", order_id="", summary="a refund please"),
        # category and product right; order_id differs in case (exact match only), priority wrong
        ans(category="shipping", priority="high", product="NIMBUS MAIL", order_id="ord-000001"),
        "I think this is about security.",  # not a triage answer: 0 on every field
    ]
    s = score_answers(answers, refs)
    assert s["n"] == 4 and s["json_valid_rate"] == 0.75
    assert s["category_accuracy"] == 0.75
    assert s["priority_accuracy"] == 0.25
    assert s["product_exact_match"] == 0.75
    assert s["order_id_exact_match"] == 0.5
    assert s["mean_field_score"] == pytest.approx((0.75 + 0.25 + 0.75 + 0.5) / 4)
    # row 2: LCS "a refund" = 2, P 2/3, R 2/5 -> 0.5; rows 1 and 3: 1.0; row 4: 0
    assert s["summary_rouge_l"] == pytest.approx((1.0 + 0.5 + 1.0 + 0.0) / 4)


def test_invalid_answers_score_zero_everywhere() -> None:
    refs = [ans(), ans(priority="urgent", product="Nimbus Hub")]
    for bad in ["", "{}", "not json", '{"category": "billing"}', ans().replace('"summary"', '"gist"')]:
        s = score_answers([bad, bad], refs)
        assert s["json_valid_rate"] == 0.0
        assert all(s[k] == 0.0 for k in ("category_accuracy", "priority_accuracy", "mean_field_score"))
        assert s["product_exact_match"] == s["order_id_exact_match"] == s["summary_rouge_l"] == 0.0


def test_null_fields_match_only_none() -> None:
    refs = [ans(product=None, order_id=None), ans(product="Nimbus Notes", order_id="ORD-1")]
    s = score_answers([ans(product="Nimbus Notes", order_id="ORD-1"), ans(product=None, order_id=None)], refs)
    assert s["json_valid_rate"] == 1.0 and s["product_exact_match"] == s["order_id_exact_match"] == 0.0
    s = score_answers([ans(product="None", order_id=" "), ans(product="nimbus notes", order_id="ORD-1")], refs)
    assert s["product_exact_match"] == s["order_id_exact_match"] == 1.0


def test_other_references_get_exact_match_and_rouge_l() -> None:
    s = score_answers(["Shipped yesterday.", "no idea"], [" Shipped yesterday.", "It ships on Monday"])
    assert s["json_valid_rate"] is None and s["mean_field_score"] is None and s["reason"] == NOT_TRIAGE
    assert s["exact_match"] == 0.5 and s["rouge_l"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 answers for 1 references"):
        score_answers(["a", "b"], ["a"])


def test_confusion_and_worst_examples() -> None:
    refs = [ans(priority="high"), ans(priority="low"), ans(priority="high", category="refund")]
    answers = [ans(priority="high"), "garbage", ans(priority="urgent", category="refund")]
    assert field_pairs(answers, refs, "priority") == (["high", "low", "high"], ["high", INVALID, "urgent"])
    table = field_confusion(answers, refs, "priority")
    assert list(table) == ["low", "high"] and list(table["high"]) == ["low", "high", "urgent", INVALID]
    assert table["high"] == {"low": 0, "high": 1, "urgent": 1, INVALID: 0} and table["low"][INVALID] == 1
    assert field_pairs([ans()], [ans()], "product") == (["null"], ["null"])
    worst = worst_examples(answers, refs, ["a", "b", "c"], k=5, width=20)
    assert [w["id"] for w in worst] == ["b", "c"]  # invalid first; the right answer is not a failure
    assert worst[0]["problem"] == "not a valid triage answer" and worst[1]["problem"] == "wrong: priority"
    assert len(worst[1]["answer"]) == 20 and worst[1]["answer"].endswith("…")


def test_ids_hash_depends_on_the_order() -> None:
    assert ids_sha256(["a", "b"]) != ids_sha256(["b", "a"]) and len(ids_sha256(["a"])) == 64


# --------------------------------------------------------------------------- few-shot prompts
def test_few_shot_picks_short_varied_examples_and_puts_them_before_the_ticket() -> None:
    train = [example(i, "short " * (i % 5 + 1), category=c) for i, c in enumerate(["billing", "refund"] * 10)]
    shots = pick_shots(train, 2)
    assert len(shots) == 2 and {json.loads(s["messages"][-1]["content"])["category"] for s in shots} == {
        "billing",
        "refund",
    }
    assert shots == pick_shots(train, 2)  # seeded
    prompt = example(99, "my ticket")["messages"][:-1]
    conv = few_shot_prompt(prompt, shots)
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert conv[0] == prompt[0] and conv[-1] == prompt[-1] and conv[2] == shots[0]["messages"][-1]


# --------------------------------------------------------------------------- the classical rules
@pytest.mark.parametrize(
    "text",
    [
        "Please check order #482913 today",
        "Where is ORD-482913?",
        "Where is ord 482913?",
        "This is about order number 482 913.",
        "Cancel my order 482913 before it ships",
        "regarding order 482913",
        "Order ID 482913: Money back",
        "order no. 482913",
        "ORDER #482-913 is late",
    ],
)
def test_every_order_number_form_is_read_back_canonical(text: str) -> None:
    assert TriageRules(order_prefix="ORD-").order_id(text) == "ORD-482913"


@pytest.mark.parametrize(
    "text", ["my order never came", "I ordered 3 items", "refund of $391.21", "the order of 12 days", ""]
)
def test_no_order_number(text: str) -> None:
    assert TriageRules(order_prefix="ORD-").order_id(text) is None


@pytest.mark.parametrize(
    ("text", "priority"),
    [
        ("URGENT: site down", "urgent"),
        ("we need this fixed immediately", "urgent"),
        ("[ASAP] login", "urgent"),
        ("this is not urgent at all", "low"),
        ("Minor: typo in footer", "low"),
        ("No rush on this", "low"),
        ("this is quite urgent for our team", "high"),
        ("Important: invoice", "high"),
        ("please prioritise this", "high"),
        ("the app crashes when I export", "normal"),
        ("the minority report", "normal"),  # a cue is a whole word or phrase
    ],
)
def test_priority_cues(text: str, priority: str) -> None:
    assert priority_of(text) == priority


def test_learnt_priority_cues_extend_the_list() -> None:
    assert priority_of("everything is on hold until this is solved") == "normal"
    assert priority_of("everything is on hold until this is solved", {"urgent": ["on hold"]}) == "urgent"


def test_rules_learnt_from_train_products_aliases_and_order_format() -> None:
    texts, refs = [], []
    for k in range(6):
        for where, product in (("the Drive app", "Nimbus Drive"), ("Nimbus Mail", "Nimbus Mail"), ("the site", None)):
            hold = " Everything is on hold." if k % 2 == 0 else ""
            texts.append(f"Slow {k}\nHi,\n{where} is slow.{hold} Quoting ORD-10000{k}.")
            refs.append(ans(product=product, order_id=f"ORD-10000{k}", priority="urgent" if hold else "normal"))
    rules = learn_rules(texts, refs)
    assert set(rules.products) == {"Nimbus Drive", "Nimbus Mail"} and rules.order_prefix == "ORD-"
    assert {"drive app", "drive"} <= set(rules.products["Nimbus Drive"])  # aliases learnt from train text
    assert "on hold" in rules.priority_cues["urgent"] and "slow" not in rules.priority_cues["urgent"]
    assert rules.product("the drive app crashed") == "Nimbus Drive"
    assert rules.product("NIMBUS MAIL and NimbusDrive, nimbus mail again") == "Nimbus Mail"  # named most often
    assert rules.product("NimbusDrive is down") == "Nimbus Drive"  # the name without its space
    assert rules.product("my site is slow") is None
    answer = json.loads(rules.answer("URGENT: Drive app\nHi,\nMy files are gone since Monday. Order 123 456.", "bug"))
    assert answer == {
        "category": "bug",
        "priority": "urgent",
        "product": "Nimbus Drive",
        "order_id": "ORD-123456",
        "summary": "My files are gone since Monday.",
    }


def test_summary_is_the_first_sentence_that_says_something() -> None:
    text = "Double charge\nHi team,\nHelp. I was charged twice this month. Please advise.\nRegards, Sam (Acme)"
    assert summary_of(text) == "I was charged twice this month."
    assert summary_of("Only a subject here") == "Only a subject here."
    assert summary_of("Login\nHello,\nRegards, Sam Smith Acme Corp") == "Login"
    assert ticket_text([{"role": "user", "content": "Ticket:\nabc"}]) == "abc"


def test_classical_system_grades_like_the_lm() -> None:
    train = [
        example(i, f"Refund\nHi,\nMoney back for order #10000{i} please.", order_id=f"ORD-10000{i}") for i in range(3)
    ]
    test = [
        example(
            10, "URGENT: charged\nHi,\nI was charged twice for order 555 111.", priority="urgent", order_id="ORD-555111"
        )
    ]
    scores, answers = classical_system(lambda texts: ["billing"] * len(texts), train, test)
    assert scores["json_valid_rate"] == 1.0 and scores["mean_field_score"] == 1.0 and scores["seconds"] >= 0
    assert json.loads(answers[0])["summary"] == "I was charged twice for order 555 111."


# --------------------------------------------------------------------------- report and plots
def test_report_and_plot_files(tmp_path: Path) -> None:
    refs = [ans(priority="high"), ans(category="refund")]
    answers = [ans(priority="high"), "nope"]
    scored = score_answers(answers, refs) | {"seconds": 3.5, "tokens_per_s": 42.0}
    metrics = {
        "rows": 2,
        "graded": "triage",
        "adapter_sha256": "abc",
        "test_ids_sha256": "def",
        "finetuned": scored,
        "zero_shot": score_answers(["x", "y"], refs),
        "few_shot": {"skipped": "not in llm_eval.systems"},
        "classical": {"skipped": "no classifier champion (none registered)"},
    }
    confusions = {f: field_confusion(answers, refs, f) for f in ("category", "priority")}
    text = render_report(metrics, confusions, worst_examples(answers, refs, ["r1", "r2"]), ["a note"])
    assert "| finetuned | 0.500 |" in text and "skipped: no classifier champion" in text
    assert "## Fine-tuned model: category" in text and "| refund | 0 | 0 | 1 |" in text
    assert "**r2**: not a valid triage answer" in text and "- a note" in text
    write_field_plot(metrics, tmp_path / "p" / "fields.png")
    actual, predicted = field_pairs(answers, refs, "category")
    write_confusion_csv(actual, predicted, tmp_path / "p" / "category_confusion.csv")
    assert (tmp_path / "p" / "fields.png").stat().st_size > 1000
    csv = (tmp_path / "p" / "category_confusion.csv").read_text().splitlines()
    assert csv == ["actual,predicted", "billing,billing", f"refund,{INVALID}"]
    write_confusion_csv([], [], tmp_path / "empty.csv")
    assert (tmp_path / "empty.csv").read_text().strip() == "actual,predicted"


# --------------------------------------------------------------------------- one system on a tiny LM
def test_evaluate_system_generates_in_order_and_scores(tiny_lm, tokenizer, tmp_path: Path) -> None:
    from pipelines.config import LlmEvalConfig
    from pipelines.llm.generation import load_generator

    tiny_lm.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    gen = load_generator(str(tmp_path), precision="fp32")
    test = [example(i, "word " * (i * 7 + 1)) for i in range(3)]
    cfg = LlmEvalConfig(max_new_tokens=8, batch_size=2)
    scores, answers = evaluate_system(gen, test, cfg)
    assert len(answers) == 3 and scores["n"] == 3 and scores["json_valid_rate"] == 0.0  # random weights
    assert 0 < scores["new_tokens"] <= 24 and scores["tokens_per_s"] > 0
    few, _ = evaluate_system(gen, test, cfg, shots=test[:1])
    assert few["n"] == 3


# --------------------------------------------------------------------------- the stage
@pytest.fixture
def stage_dir(tmp_path: Path, tiny_lm, tokenizer, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tmp workspace: a tiny base LM, a LoRA adapter on it, chat examples and params.yaml."""
    from peft import LoraConfig, get_peft_model

    base = tmp_path / "base"
    tiny_lm.save_pretrained(base)
    tokenizer.save_pretrained(base)
    peft_model = get_peft_model(tiny_lm, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "models" / "llm")
    tokenizer.save_pretrained(tmp_path / "models" / "llm")
    sft = tmp_path / "data" / "sft"
    sft.mkdir(parents=True)
    train = [example(i, f"Refund\nHi,\nMoney back for order #10000{i}.", order_id=f"ORD-10000{i}") for i in range(4)]
    test = [example(10 + i, f"URGENT: slow\nHi,\nThe Drive app is slow {i}.", priority="urgent") for i in range(3)]
    for name, rows in (("train", train), ("test", test)):
        (sft / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "params.yaml").write_text(
        f"llm:\n  base_model: {base}\n  cache_dir: {tmp_path / 'cache'}\n"
        "llm_eval:\n  systems: [finetuned, zero_shot, few_shot, classical]\n  few_shot_examples: 1\n"
        "  max_new_tokens: 8\n  batch_size: 2\n  torch_threads: 1\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.integration
def test_stage_writes_every_output_and_the_hashes(stage_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import llm_eval
    from pipelines.llm.evaluation import file_sha256

    class Fake:
        classes = ["billing", "refund"]

        def predict_proba(self, texts):
            import numpy as np

            return np.tile([0.9, 0.1], (len(texts), 1))

    monkeypatch.setattr(llm_eval, "champion_classifier", lambda params: Fake())
    llm_eval.main(
        Path("params.yaml"),
        Path("data/sft"),
        Path("models/llm"),
        Path("metrics/llm_eval.json"),
        Path("reports/llm_eval.md"),
        Path("plots/llm_eval"),
    )
    m = json.loads((stage_dir / "metrics" / "llm_eval.json").read_text())
    assert m["rows"] == 3 and m["graded"] == "triage"
    assert m["adapter_sha256"] == file_sha256(stage_dir / "models" / "llm" / "adapter_model.safetensors")
    assert m["test_ids_sha256"] == ids_sha256(["t10", "t11", "t12"])
    for system in ("finetuned", "zero_shot", "few_shot"):
        assert 0.0 <= m[system]["json_valid_rate"] <= 1.0 and m[system]["tokens_per_s"] > 0, system
    assert m["few_shot"]["shot_ids"] and m["classical"]["priority_accuracy"] == 1.0
    assert m["classical"]["category_accuracy"] == 1.0  # the fake champion says billing, as the references
    assert "| classical |" in (stage_dir / "reports" / "llm_eval.md").read_text()
    assert (stage_dir / "plots" / "llm_eval" / "fields.png").is_file()
    csv = (stage_dir / "plots" / "llm_eval" / "category_confusion.csv").read_text().splitlines()
    assert csv[0] == "actual,predicted" and len(csv) == 4


def test_stage_without_an_adapter_or_a_champion(stage_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import llm_eval

    with pytest.raises(DataError, match="run the sft stage first"):
        llm_eval.main(Path("params.yaml"), Path("data/sft"), Path("nowhere"))

    def none(params):
        raise llm_eval.NoChampion("no classifier champion (registry empty)")

    monkeypatch.setattr(llm_eval, "champion_classifier", none)
    from pipelines.llm.chat_data import read_examples

    train, test = (read_examples(stage_dir / "data" / "sft" / f"{s}.jsonl") for s in ("train", "test"))
    assert llm_eval._classical(None, train, test) == ({"skipped": "no classifier champion (registry empty)"}, None)
    chat = [{"id": "c", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    skipped, _ = llm_eval._classical(None, train, chat)
    assert "not triage JSON" in skipped["skipped"]
