"""MLflow pyfunc wrapper around :class:`~pipelines.classifier.model_api.TextClassifier`.

One of the modules importing mlflow (with :mod:`pipelines.registry.tracking` and :mod:`pipelines.llm.pyfunc`).

Every registered classifier, loaded with ``mlflow.pyfunc.load_model("models:/<name>@champion")``,
takes a DataFrame with a ``text`` column and returns ``label``, ``abstained`` + ``proba_<class>``
columns (:func:`pipelines.classifier.model_api.output_frame`). Label names are kept in the
model's metadata (``classes``); the abstention rule tuned on validation
(:class:`~pipelines.abstention.AbstentionRule`) and the inference precision the model was evaluated in
are in its ``model_config`` (``abstention``, ``precision``), the rule also in the metadata. A version is
therefore never registered without its threshold: both are written by the one ``log_model`` call.

Subclass :class:`TextClassifierPyfunc` and implement ``load_classifier(context)``
for a new model family (the transformer: an adapter directory as an artifact and
the base model in ``model_config``); pickled scikit-learn classifiers use
:class:`PickledClassifierPyfunc`. :func:`load_registered` loads a registered version or alias back as a
:class:`~pipelines.classifier.model_api.TextClassifier` (the registry itself knows no model family), in the
precision asked for (``evaluate.precision``: the gate and serving pass the same knob).
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import joblib
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import infer_signature

from pipelines.abstention import AbstentionRule
from pipelines.classifier.model_api import (
    TextClassifier,
    output_frame,
    proba_from_frame,
    resolve_precision,
    texts_from_input,
)

PIPELINES_DIR = Path(__file__).resolve().parents[1]  # the whole ``pipelines`` package, not this subpackage
CLASSIFIER_ARTIFACT = "classifier"


class TextClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """Base pyfunc: DataFrame with ``text`` in, ``label``, ``abstained`` + ``proba_<class>`` out."""

    # predict() takes a DataFrame and the signature is logged explicitly; this skips MLflow's
    # type-hint wrapper, which would only warn that predict() has no type hints.
    _skip_type_hint_validation = True

    def load_classifier(self, context: mlflow.pyfunc.PythonModelContext) -> TextClassifier:
        raise NotImplementedError

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.classifier = self.load_classifier(context)
        self.rule = AbstentionRule.from_dict((context.model_config or {}).get("abstention"))

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:  # noqa: ANN001
        texts = texts_from_input(model_input)
        classes = self.classifier.classes
        proba = self.classifier.predict_proba(texts)
        return output_frame(classes, proba, self.rule.abstained(proba, classes))


class PickledClassifierPyfunc(TextClassifierPyfunc):
    """A classifier saved with joblib as the ``classifier`` artifact (scikit-learn pipelines, encoder + head).

    A classifier with ``set_precision`` (the frozen encoder) is switched to ``model_config["precision"]``."""

    def load_classifier(self, context: mlflow.pyfunc.PythonModelContext) -> TextClassifier:
        clf = joblib.load(context.artifacts[CLASSIFIER_ARTIFACT])
        precision = (context.model_config or {}).get("precision")
        if precision and hasattr(clf, "set_precision"):
            clf.set_precision(resolve_precision(precision))
        return clf


def pip_requirements(extra: list[str] | None = None) -> list[str]:
    """Pinned requirements of a pickled classifier (explicit: MLflow's inference is slow and adds torch)."""
    pkgs = ["scikit-learn", "numpy", "pandas", "joblib", "pyyaml", "pydantic", *(extra or [])]
    return [f"{p}=={version(p)}" for p in pkgs] + [f"mlflow=={version('mlflow')}"]


def log_classifier(
    classifier: TextClassifier,
    *,
    example_texts: list[str],
    extra_requirements: list[str] | None = None,
    python_model: TextClassifierPyfunc | None = None,
    artifacts: dict[str, str] | None = None,
    model_config: dict | None = None,
    abstention: AbstentionRule | None = None,
    precision: str | None = None,
    name: str = "model",
) -> mlflow.models.model.ModelInfo:
    """Log ``classifier`` as a pyfunc in the active run, with signature, input example and explicit requirements.

    Without ``python_model`` the classifier is pickled (joblib) as the ``classifier`` artifact.
    The ``pipelines`` package is logged as code so the model loads outside this repository.
    ``abstention`` (tuned on validation; None: never abstains) and ``precision`` (the one a torch model was
    evaluated in; None for a model without one) go into ``model_config`` (and the rule into the metadata)
    with the model itself.
    """
    rule = abstention or AbstentionRule()
    resolved = resolve_precision(precision) if precision is not None else None
    model_config = {**(model_config or {}), "abstention": rule.to_dict(), "precision": resolved}
    example = pd.DataFrame({"text": example_texts[:3]})
    proba = classifier.predict_proba(example_texts[:3])
    signature = infer_signature(
        example, output_frame(classifier.classes, proba, rule.abstained(proba, classifier.classes))
    )
    with tempfile.TemporaryDirectory() as tmp:
        if python_model is None:
            path = Path(tmp) / "classifier.joblib"
            joblib.dump(classifier, path)
            python_model, artifacts = PickledClassifierPyfunc(), {CLASSIFIER_ARTIFACT: str(path)}
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=python_model,
            artifacts=artifacts,
            model_config=model_config,
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(extra_requirements),
            code_paths=[str(PIPELINES_DIR)],
            metadata={"classes": list(classifier.classes), "abstention": rule.to_dict()},
        )


class PyfuncTextClassifier:
    """A loaded pyfunc model seen through the :class:`TextClassifier` interface (for evaluation and the gate)."""

    def __init__(self, model: mlflow.pyfunc.PyFuncModel, uri: str = "") -> None:
        self.model, self.uri = model, uri
        meta = model.metadata.metadata or {}
        if "classes" not in meta:
            raise ValueError(
                f"{uri}: model metadata has no 'classes'; was it logged with "
                "pipelines.classifier.pyfunc.log_classifier?"
            )
        self.classes = [str(c) for c in meta["classes"]]
        self.abstention = AbstentionRule.from_dict(meta.get("abstention"))  # registered without one: never abstains
        try:
            inner = model.unwrap_python_model().classifier
        except Exception:  # noqa: BLE001 - not one of our python models: no tokenizer to ask
            inner = None
        self._measure = getattr(inner, "token_lengths", None)  # resolved once: it is asked on every request
        self.precision = getattr(inner, "precision", None)  # what a torch model computes in (None: not a torch model)

    def token_lengths(self, texts: list[str]) -> list[int] | None:
        """Each text's length in the model's own tokens, if the model has tokens (a transformer), else None."""
        return self._measure(texts) if self._measure is not None else None

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, len(self.classes)))
        return proba_from_frame(self.model.predict(pd.DataFrame({"text": list(texts)})), self.classes)

    def abstained(self, proba: np.ndarray) -> np.ndarray:
        """Which rows of ``proba`` (from :meth:`predict_proba`) the registered rule abstains on."""
        return self.abstention.abstained(proba, self.classes)


def load_registered(reg, ref: str, precision: str | None = None) -> PyfuncTextClassifier:
    """Load ``@alias`` or a version of the registered model ``reg`` (a
    :class:`~pipelines.registry.tracking.Registry`) as a :class:`TextClassifier`.

    ``precision`` (``evaluate.precision``; None: the one it was registered with) overrides a torch model's
    inference precision at load time (a model without torch, or logged before precision was configurable,
    loads as it was).
    Raises :class:`~pipelines.registry.tracking.RegistryError` when the model, alias or version does not exist."""
    uri = reg.model_uri(ref)
    override = None
    if precision is not None:
        from mlflow.models import get_model_info

        logged = get_model_info(uri).flavors.get(mlflow.pyfunc.FLAVOR_NAME, {}).get(mlflow.pyfunc.MODEL_CONFIG) or {}
        override = {"precision": resolve_precision(precision)} if logged.get("precision") is not None else None
    return PyfuncTextClassifier(mlflow.pyfunc.load_model(uri, model_config=override), uri)
