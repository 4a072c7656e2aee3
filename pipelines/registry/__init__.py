"""MLflow tracking and the model registry: candidates, aliases, the promotion gate, promote and rollback."""
