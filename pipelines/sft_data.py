"""``python -m pipelines.sft_data``: the generative model's chat examples, checked, with contamination handled.

A thin CLI; the logic and its description are in :mod:`pipelines.llm.examples`. With ``llm.enabled: false`` it
writes 'skipped' records instead (:mod:`pipelines.llm.skipping`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import LlmConfig, load_params
from pipelines.errors import run_cli
from pipelines.io import read_split
from pipelines.llm.base_model import resolve_base_model
from pipelines.llm.chat_data import read_chat_jsonl
from pipelines.llm.examples import EVAL, SPLITS, build_sft_data, write_outputs
from pipelines.llm.skipping import skip_if_disabled


def load_tokenizer(llm: LlmConfig):
    """The base model's tokenizer (its chat template renders the examples)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_base_model(llm.base_model, llm.cache_dir))


def main(
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    data_dir: Annotated[Path, typer.Option(help="the classifier's model-ready splits")] = Path("data/processed"),
    out: Annotated[Path, typer.Option(help="directory for train/val/test JSONL")] = Path("data/sft"),
    report: Annotated[Path, typer.Option(help="report (JSON)")] = Path("reports/sft_data.json"),
    metrics: Annotated[Path, typer.Option(help="counts (JSON, a DVC metric)")] = Path("metrics/sft_data.json"),
) -> None:
    """Build chat examples from the classifier's splits (or sft_data.path), check them, write JSONL per split."""
    p = load_params(params)
    if skip_if_disabled(p.llm, "sft_data", out, report, metrics):
        return
    cfg = p.sft_data
    if cfg.path:
        source = {"conversations": read_chat_jsonl(cfg.path)}
    else:
        source = {"parts": {k: read_split(data_dir, k) for k in SPLITS}}
    examples, rep = build_sft_data(cfg, p.llm, load_tokenizer(p.llm), **source)
    write_outputs(examples, rep, out, report, metrics)
    found, tokens = rep["contamination"], rep["tokens"].values()
    sizes = ", ".join(f"{k} {len(examples[k]):,}" for k in SPLITS)
    copies = {kind: sum(found[k][kind] for k in EVAL) for kind in ("exact", "near")}
    print(
        f"sft_data: {rep['mode']}: {sizes} examples (p95 {max((t['p95'] for t in tokens), default=0)} tokens, "
        f"{sum(t['shortened'] for t in tokens)} shortened); val/test copies of train prompts: "
        f"{copies['exact']} exact, {copies['near']} near ({found['action']}) -> {out}"
    )


if __name__ == "__main__":
    run_cli(main)
