"""``python -m pipelines.llm_eval``: the fine-tuned triage model against zero-shot, few-shot and classical, same rows.

A thin CLI: scoring and one system's run are :mod:`pipelines.llm.evaluation`, the rules baseline
:mod:`pipelines.llm.classical`, the report and plots :mod:`pipelines.llm.evaluation_report`.

Systems (``llm_eval.systems``; ``finetuned`` always runs): the base model with the SFT adapter; the base
model alone on the same prompt (``zero_shot``); the base model with ``few_shot_examples`` train examples as
turns before the ticket (``few_shot``); the classifier champion's category plus rules (``classical``). A
system that cannot run is recorded as ``{"skipped": "<reason>"}``. The metrics also carry the sha256 of
the adapter file and of the ordered test ids, so the registration gate can prove it gates this adapter
on these rows. With ``llm.enabled: false`` every output is a 'skipped' record (:mod:`pipelines.llm.skipping`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import Params, load_params
from pipelines.errors import DataError, PipelineError, run_cli
from pipelines.io import atomic_outputs, write_json
from pipelines.llm.chat_data import read_examples
from pipelines.llm.evaluation import (
    INVALID,
    evaluate_system,
    field_confusion,
    field_pairs,
    file_sha256,
    ids_sha256,
    is_triage,
    pick_shots,
    prompts_and_references,
    worst_examples,
)
from pipelines.llm.evaluation_report import SYSTEMS, render_report, write_confusion_csv, write_field_plot
from pipelines.llm.skipping import skip_if_disabled

ADAPTER_FILE = "adapter_model.safetensors"


class NoChampion(PipelineError):
    """The registry has no classifier champion to give the classical system its categories."""


def champion_classifier(params: Params):
    """The registered classifier ``@champion`` as a :class:`~pipelines.classifier.model_api.TextClassifier`;
    :class:`NoChampion` when there is none (the one place this stage touches the registry)."""
    from pipelines.classifier.pyfunc import load_registered
    from pipelines.registry.tracking import Registry, RegistryError

    try:
        return load_registered(Registry(params.mlflow), "@champion")
    except RegistryError as err:
        raise NoChampion(f"no classifier champion ({err})") from None


def _classical(params: Params, train: list, test: list) -> tuple[dict, list[str] | None]:
    from pipelines.classifier.model_api import predict_labels
    from pipelines.llm.classical import classical_system

    if not is_triage(prompts_and_references(test)[1]):
        return {"skipped": "the references are not triage JSON: no rules to apply"}, None
    try:
        model = champion_classifier(params)
    except NoChampion as err:
        return {"skipped": str(err)}, None
    return classical_system(lambda texts: predict_labels(model, texts), train, test)


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    data_dir: Annotated[Path, typer.Option(help="chat examples (train.jsonl, test.jsonl)")] = Path("data/sft"),
    adapter: Annotated[Path, typer.Option(help="the fine-tuned LoRA adapter")] = Path("models/llm"),
    metrics: Annotated[Path, typer.Option(help="every system's scores (JSON)")] = Path("metrics/llm_eval.json"),
    report: Annotated[Path, typer.Option(help="the markdown report")] = Path("reports/llm_eval.md"),
    plots: Annotated[Path, typer.Option(help="fields.png, category_confusion.csv")] = Path("plots/llm_eval"),
) -> None:
    """Generate and score every system in llm_eval.systems on the test examples; write metrics, report, plots."""
    cfg = load_params(params)
    if skip_if_disabled(cfg.llm, "llm_eval", metrics, report, plots / "fields.png", plots / "category_confusion.csv"):
        return
    import torch

    from pipelines.llm.base_model import resolve_base_model
    from pipelines.llm.generation import load_generator

    ev = cfg.llm_eval
    t0 = time.perf_counter()
    torch.set_num_threads(ev.torch_threads)
    if not (adapter / ADAPTER_FILE).is_file():
        raise DataError(f"{adapter / ADAPTER_FILE} does not exist: run the sft stage first (dvc repro sft)")
    test = read_examples(data_dir / "test.jsonl")
    wanted = {"finetuned", *ev.systems}
    train = read_examples(data_dir / "train.jsonl") if wanted & {"few_shot", "classical"} else []
    base = resolve_base_model(cfg.llm.base_model, cfg.llm.cache_dir)

    results: dict[str, dict] = {s: {"skipped": "not in llm_eval.systems"} for s in SYSTEMS}
    answers: dict[str, list[str]] = {}
    results["finetuned"], answers["finetuned"] = evaluate_system(
        load_generator(base, adapter), test, ev, desc="finetuned"
    )
    if wanted & {"zero_shot", "few_shot"}:
        gen = load_generator(base)
        if "zero_shot" in wanted:
            results["zero_shot"], answers["zero_shot"] = evaluate_system(gen, test, ev, desc="zero_shot")
        if "few_shot" in wanted:
            shots = pick_shots(train, ev.few_shot_examples)
            results["few_shot"], answers["few_shot"] = evaluate_system(gen, test, ev, shots=shots, desc="few_shot")
            results["few_shot"]["shot_ids"] = [s["id"] for s in shots]
        del gen
    if "classical" in wanted:
        results["classical"], classical_answers = _classical(cfg, train, test)
        if classical_answers is not None:
            answers["classical"] = classical_answers

    references = prompts_and_references(test)[1]
    ids = [e["id"] for e in test]
    graded = "triage" if is_triage(references) else "text"
    out = {
        "rows": len(test),
        "graded": graded,
        "adapter_sha256": file_sha256(adapter / ADAPTER_FILE),
        "test_ids_sha256": ids_sha256(ids),
        **results,
    }
    fine = answers["finetuned"]
    confusions = (
        {f: field_confusion(fine, references, f) for f in ("category", "priority")} if graded == "triage" else {}
    )
    actual, predicted = field_pairs(fine, references, "category") if graded == "triage" else ([], [])
    notes = (
        [f"few-shot turns: train examples {', '.join(results['few_shot']['shot_ids'])}"]
        if "few_shot" in answers
        else []
    )
    with atomic_outputs(metrics, report, plots) as staged:
        write_json(out, staged[metrics])
        staged[report].parent.mkdir(parents=True, exist_ok=True)
        text = render_report(out, confusions, worst_examples(fine, references, ids, k=5), notes)
        staged[report].write_text(text, encoding="utf-8")
        staged[plots].mkdir(parents=True)
        write_field_plot(out, staged[plots] / "fields.png")
        write_confusion_csv(actual, predicted, staged[plots] / "category_confusion.csv")

    key = "mean_field_score" if graded == "triage" else "rouge_l"
    for system in SYSTEMS:
        r = results[system]
        if "skipped" in r:
            print(f"  {system:>10}: skipped ({r['skipped']})")
            continue
        valid = f"valid JSON {r['json_valid_rate']:.3f}  " if graded == "triage" else ""
        speed = f"  {r['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in r else ""
        print(f"  {system:>10}: {valid}{key} {r[key]:.3f}  ({r['seconds']:.0f}s{speed})")
    invalid = sum(p == INVALID for p in predicted)
    print(f"llm_eval: {len(test)} rows ({invalid} invalid fine-tuned answers) in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    run_cli(main)
