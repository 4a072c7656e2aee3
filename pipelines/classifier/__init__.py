"""The classifier family: the common ``TextClassifier`` interface, classical baselines, the frozen
encoder, the LoRA transformer, its DeepSpeed training worker and the MLflow pyfunc wrapper."""
