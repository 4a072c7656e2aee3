"""MLflow tracking and the model registry, for every family alike: one registered model per family, aliases,
the gate's generic rules, the registry lock, promote and rollback. Nothing here imports a family; each family's
candidates and gate live with it (:mod:`pipelines.classifier.registration`, :mod:`pipelines.classifier.gate`,
:mod:`pipelines.llm.registration`), and :mod:`pipelines.promotion` dispatches between them."""
