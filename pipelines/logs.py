"""Keep a user's terminal for the lines that matter: known library noise filtered, everything else kept.

``make run`` and ``make serve`` used to print pages of library output around the few lines a person needs:
transformers' weight-loading bars and its "LOAD REPORT" for the (expected) freshly initialised classifier
head, a transformers ``FutureWarning`` per model build, MLflow's notices about its own database tables,
CloudPickle and input examples, artifact-download bars for a local store, and the DeepSpeed
launcher's INFO banner. :func:`quiet_libraries` removes exactly those; a library warning that is not on
the list still shows, and so do our own progress bars and messages.
``TICKETOPS_VERBOSE=1`` turns the filtering off (to see everything while debugging).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator

# (logger name, message pattern): records dropped from user-facing runs, each known and harmless here.
KNOWN_NOISE: tuple[tuple[str, str], ...] = (
    ("mlflow.store.db.utils", r"(Creating initial MLflow database tables|Updating database tables)"),
    ("mlflow.pyfunc", r"Passing a Python object as `python_model` causes it to be serialized using CloudPickle"),
    ("mlflow.pyfunc", r"Validating input example against model signature"),
    ("mlflow.models.model", r"Model logged without a signature and input example"),
    ("transformers.utils.loading_report", r"LOAD REPORT"),  # the classifier head is new by design
    # an in-process import of DeepSpeed on a machine without a GPU (the LM's GGUF de-quantization in sft_data);
    # training stages say the device in their own line ("2 rank(s) on cpu")
    ("DeepSpeed", r"^Setting accelerator to CPU\."),
)
# Environment for this process and the ones it starts (DeepSpeed ranks, Ray replicas), set only if unset.
QUIET_ENV = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # bars for copying a few files on a local disk
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # also turns off transformers' "Loading weights" bar
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",  # its fork warning; the project sets torch threads itself
    "PYTHONWARNINGS": "ignore::FutureWarning",  # for child processes: libraries' own deprecation notices
}
# Lines of the DeepSpeed launcher's stdout dropped by :func:`drop_launcher_noise` (its INFO banner and
# the one-off op build notice); a WARNING or ERROR of the launcher or a rank is kept.
LAUNCHER_NOISE = re.compile(
    r"^\[\d{4}-\d\d-\d\d [\d:,]+\] \[INFO\] \[(runner|launch)\.py:\d+:\w+\]"
    r"|^\[\d{4}-\d\d-\d\d [\d:,]+\] \[WARNING\] \[(runner\.py:\d+:fetch_hostfile|lr_schedules\.py:\d+:get_lr)\]"
    r"|^DeepSpeed deepspeed\.ops\.\S+ built successfully"
)


class _DropKnown(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def verbose() -> bool:
    return os.environ.get("TICKETOPS_VERBOSE", "") not in ("", "0", "false")


def quiet_libraries() -> None:
    """Filter the known library noise in this process (idempotent; call before the libraries are imported)."""
    if verbose():
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for module in ("transformers", "peft", "deepspeed", "torch", "mlflow"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=rf"{module}(\.|$)")
    # the LM is logged without an input example on purpose (validating one generates an answer: 100 s here)
    warnings.filterwarnings("ignore", r".*An input example was not provided", UserWarning, r"mlflow(\.|$)")
    for name, pattern in KNOWN_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropKnown(pattern))


def drop_launcher_noise(lines: Iterable[str]) -> Iterator[str]:
    """The lines of a DeepSpeed launcher's output a user needs (all of them with ``TICKETOPS_VERBOSE=1``)."""
    keep_all = verbose()
    for line in lines:
        if keep_all or not LAUNCHER_NOISE.search(line):
            yield line
