"""Known library noise is dropped from user-facing runs; anything else a library says still shows."""

from __future__ import annotations

import logging
import warnings

import pytest

from pipelines import logs


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TICKETOPS_VERBOSE", raising=False)
    for key in logs.QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    with warnings.catch_warnings():
        logs.quiet_libraries()
        yield
    for name, _ in logs.KNOWN_NOISE:
        logging.getLogger(name).filters.clear()


def test_known_library_records_are_dropped_and_others_kept(quiet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
    logging.getLogger("mlflow.pyfunc").warning(
        "Passing a Python object as `python_model` causes it to be serialized using CloudPickle, it requires ..."
    )
    logging.getLogger("mlflow.pyfunc").warning("The model's signature does not match its input")
    logging.getLogger("transformers.utils.loading_report").warning("BertForSequenceClassification LOAD REPORT from: x")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["The model's signature does not match its input"]


@pytest.mark.integration
def test_deepspeeds_cpu_notice_is_dropped_and_its_other_warnings_kept() -> None:
    """DeepSpeed's own logger (its handler, no propagation) says "Setting accelerator to CPU" when a stage
    imports it on a machine without a GPU: dropped; another of its warnings still shows."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    code = (
        "from pipelines.logs import quiet_libraries; quiet_libraries()\n"
        "from deepspeed.accelerator import get_accelerator; print(get_accelerator().device_name())\n"
        "from deepspeed.utils import logger; logger.warning('another DeepSpeed warning')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "TICKETOPS_VERBOSE")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Setting accelerator to CPU" not in out.stdout + out.stderr
    assert out.stdout.splitlines()[0] == "cpu" and "another DeepSpeed warning" in out.stdout


def test_library_future_warnings_are_filtered_but_not_ours(quiet) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        logs.quiet_libraries()
        warnings.warn_explicit("old API", FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("ours", FutureWarning, "x.py", 1, module="pipelines.data.ingestion")
        # MLflow's notice for a model logged without an input example (the LM, on purpose), as MLflow colours it
        notice = "\x1b[1;33mAn input example was not provided when logging the model. To ensure ...\x1b[0m"
        warnings.warn_explicit(notice, UserWarning, "__init__.py", 3344, module="mlflow.pyfunc")
        warnings.warn_explicit("Some other MLflow notice", UserWarning, "__init__.py", 1, module="mlflow.pyfunc")
    assert [str(w.message) for w in seen] == ["ours", "Some other MLflow notice"]


def test_quiet_sets_the_environment_for_child_processes_unless_the_user_did(quiet, monkeypatch) -> None:
    import os

    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    logs.quiet_libraries()
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"


def test_launcher_banner_is_dropped_but_warnings_errors_and_our_lines_are_kept(monkeypatch) -> None:
    monkeypatch.delenv("TICKETOPS_VERBOSE", raising=False)
    out = [
        "[2026-11-29 13:19:21,960] [WARNING] [runner.py:214:fetch_hostfile] Unable to find hostfile, will proceed",
        "[2026-11-29 13:19:28,421] [INFO] [launch.py:152:main] WORLD INFO DICT: {'localhost': [0, 1]}",
        "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully",
        "[2026-11-29 13:20:09,416] [WARNING] [lr_schedules.py:759:get_lr] Attempting to get learning rate from ...",
        "finetune: 200 train / 100 val rows, 2 rank(s) on cpu, ZeRO-2, bf16, 7 steps/epoch",
        "[2026-11-29 13:20:10,000] [WARNING] [engine.py:100:step] gradient overflow",
        "[2026-11-29 13:20:11,000] [ERROR] [launch.py:325:sigkill_handler] exits with return code = 1",
    ]
    assert list(logs.drop_launcher_noise(out)) == out[4:]
    monkeypatch.setenv("TICKETOPS_VERBOSE", "1")
    assert list(logs.drop_launcher_noise(out)) == out
