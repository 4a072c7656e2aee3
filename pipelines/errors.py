"""Errors a user can act on, and the one place that turns them into an exit code.

Stage code raises :class:`PipelineError` (or a subclass) with a message that
names the problem; :func:`run_cli` prints ``error: <message>`` to stderr and
exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


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
    import os

    print(f"error: {err}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(err.exit_code)


def run_cli(main: Callable[..., object]) -> None:
    """Run a typed function as a CLI (``--help`` from its signature); map :class:`PipelineError` to an exit code."""
    import typer

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=main.__doc__)(main)
    try:
        app()
    except PipelineError as err:
        fail(err)
