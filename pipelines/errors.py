"""Errors a user can act on, and the one place that turns them into an exit code.

Stage code raises :class:`PipelineError` (or a subclass) with a message that
names the problem; :func:`run_cli` prints ``error: <message>`` to stderr and
exits non-zero instead of showing a traceback.

A caller that runs a stage through a tool which hides its exit code (``dvc repro``
exits 1 whatever the stage's code was) sets ``TICKETOPS_ERROR_FILE``: :func:`fail` then also writes
the error as a small JSON record there (:func:`read_error_record`), so the caller can
tell a config error or a failed gate from a crash.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

ERROR_FILE_ENV = "TICKETOPS_ERROR_FILE"


class PipelineError(Exception):
    """A problem with the user's data, files or settings (not a bug)."""

    exit_code = 1


class ConfigError(PipelineError):
    """params.yaml (or a CLI option) is wrong."""

    exit_code = 2


class DataError(PipelineError):
    """The input data cannot be used as it is."""


class GateFailed(PipelineError):
    """A quality gate (validation, leakage, promotion) refused the data or model."""

    exit_code = 3


def fail(err: PipelineError) -> NoReturn:
    """Print the one-line error and exit with its code.

    ``os._exit`` after flushing: the stage has already unwound (outputs are atomic, MLflow runs
    closed by their context managers), and a normal interpreter teardown with native thread pools
    still alive (pyarrow/torch) intermittently aborted with "terminate called without an active
    exception", turning exit 1 into a SIGABRT.
    """
    print(f"error: {err}", file=sys.stderr)
    if os.environ.get(ERROR_FILE_ENV):
        write_error_record(err, Path(os.environ[ERROR_FILE_ENV]))
    sys.stdout.flush()
    sys.stderr.flush()
    _stop_worker_processes()
    os._exit(err.exit_code)


def _stop_worker_processes() -> None:
    """Stop joblib's reusable worker processes (``leakage.n_jobs``, CV): ``os._exit`` skips the atexit hook that
    would, and live workers hold the stage's stdout/stderr open, so a caller reading them (DVC, a test) would
    wait for the workers' idle timeout (300 s) before it saw the exit."""
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(loky, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def write_error_record(err: PipelineError, path: Path) -> None:
    """``{"error", "kinds", "exit_code", "message"}`` as JSON at ``path``; ``kinds`` lists the error's classes
    up to :class:`PipelineError`, so a reader can test for a base class (a subclass of ``GateFailed`` is a gate).

    Best effort: a record that cannot be written must not hide the error itself (stderr has it).
    """
    kinds = [c.__name__ for c in type(err).__mro__ if issubclass(c, PipelineError)]
    record = {"error": type(err).__name__, "kinds": kinds, "exit_code": err.exit_code, "message": str(err)}
    try:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as os_err:
        print(f"warning: could not write the error record {path}: {os_err}", file=sys.stderr)


def read_error_record(path: Path) -> dict | None:
    """The record :func:`fail` wrote at ``path``, or None when the stage wrote none (it crashed, or succeeded)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def run_cli(main: Callable[..., object]) -> None:
    """Run a typed function as a CLI (``--help`` from its signature); map :class:`PipelineError` to an exit code."""
    import typer

    from pipelines.logs import quiet_libraries

    quiet_libraries()
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=main.__doc__)(main)
    try:
        app()
    except PipelineError as err:
        fail(err)
