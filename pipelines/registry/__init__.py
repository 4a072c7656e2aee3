"""MLflow tracking and the model registry: one registered model per family (the classifier, the generative
model), candidates, aliases, the promotion gate, promote and rollback."""
