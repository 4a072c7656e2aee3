"""The classifier family: the common ``TextClassifier`` interface, classical baselines, the frozen
encoder, the LoRA transformer, its DeepSpeed training worker, the MLflow pyfunc wrapper, and its registration
(candidates) and gate."""
