"""The data stages' library: the built-in generator, ingestion and PII scrubbing, the Great Expectations
suite, splitting and the leakage audit. Stage CLIs (``python -m pipelines.<stage>``) sit one level up."""
