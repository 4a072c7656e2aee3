"""DeepSpeed's CPU communication op, built once per environment and never waited on forever.

On the CPU accelerator every rank's ``deepspeed.init_distributed`` JIT-builds (or re-checks) the op
``deepspeed_shm_comm`` through torch's extension builder, which guards its build folder with a bare lock
file. A build that is killed (a timeout, Ctrl-C, ``kill -9``) leaves that file behind, and every later run
on the machine then waits on it forever, silently. Two checkouts with their own virtualenvs also share
torch's default folder and rebuild it for each other's paths.

So a CPU launch here:

1. builds the op once, in one process, into a cache folder of this virtualenv
   (``<venv>/.cache/torch_extensions``, or ``$TORCH_EXTENSIONS_DIR`` when set), under an OS lock that dies with
   its holder; a leftover torch lock file found while holding it can only be stale and is removed;
2. gives the ranks their own copy of the built folder (about 1 MB) in a temporary folder, so a rank killed
   while it re-checks the build can only leave a lock file in a folder that is deleted with its run;
3. runs the build and the ranks with this virtualenv's scripts first on ``PATH``
   (:func:`pipelines.io.tools_env`), so both use the ``ninja`` DeepSpeed installs here. Ninja versions write
   different build-log formats: the ranks' ninja newer than the builder's (the virtualenv's 1.13 vs the
   system's 1.11) discarded the log and compiled the op again in every launch, 25-45 s of both cores here.
   A build counts as current only when ``ninja -n`` (the ranks' ninja) has no work to do.

A rank that starts DeepSpeed without the launcher (a tuning trial inside a Ray worker) gets the same from
:func:`ensure_private_extensions`, which :func:`pipelines.training.engine.init_distributed` calls.

Nothing here runs on a GPU accelerator (the op is CPU-only) or on remote nodes
(they keep their own).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pipelines.errors import PipelineError
from pipelines.io import tools_env

OP = "deepspeed_shm_comm"
TORCH_LOCK = "lock"  # torch.utils.file_baton's lock file name in a build folder
MARK = "PIPELINES_PRIVATE_TORCH_EXTENSIONS"  # set with TORCH_EXTENSIONS_DIR when it is a private copy

# what deepspeed.comm.torch.build_shm_op does, in a process of its own
_BUILD = """
import deepspeed
from deepspeed.accelerator import get_accelerator
builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
    builder.load(verbose=False)
"""


def extension_cache() -> Path:
    """Where this virtualenv keeps its built torch extensions: ``$TORCH_EXTENSIONS_DIR`` when set, unless it is a
    private copy (marked by :data:`MARK`, inherited by a process of a launch: its folder may be gone)."""
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    if configured and not os.environ.get(MARK):
        return Path(configured)
    return Path(sys.prefix) / ".cache" / "torch_extensions"


def op_sources() -> Path | None:
    """The folder of the op's C++ sources in the installed DeepSpeed (None when DeepSpeed is not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("deepspeed")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "ops" / "csrc" / "cpu" / "comm"


def build_is_current(build_dir: Path, sources: Path) -> bool:
    """True when ``build_dir`` holds a library built from ``sources`` (its build file names them) that is newer
    than every source file and that the ranks' ``ninja`` finds up to date (its build log in a format it
    reads): then loading it is only a check, never a compile."""
    library, ninja = build_dir / f"{OP}.so", build_dir / "build.ninja"
    if not (library.is_file() and ninja.is_file() and sources.is_dir()):
        return False
    if str(sources) not in ninja.read_text(errors="replace"):
        return False  # built for another virtualenv's paths
    built = library.stat().st_mtime
    if not all(f.stat().st_mtime <= built for f in sources.iterdir() if f.is_file()):
        return False
    try:  # a dry run: what a rank's load would do (an older ninja's log is discarded: everything is dirty)
        dry = subprocess.run(
            ["ninja", "-n"], cwd=build_dir, env=tools_env(os.environ), capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return dry.returncode == 0 and "no work to do" in dry.stdout


@contextmanager
def _os_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_op(cache: Path, env: dict[str, str]) -> Path:
    """The op's build folder in ``cache``, built first when it is missing or out of date. Holding the OS lock,
    a torch lock file in that folder was left by a killed build and is removed (with a line saying so)."""
    build_dir = cache / OP
    with _os_lock(cache / ".pipelines-build.lock"):
        stale = build_dir / TORCH_LOCK
        if stale.exists():
            print(f"removing a lock file left by a killed build of DeepSpeed's CPU op: {stale}", flush=True)
            stale.unlink()
        sources = op_sources()
        if sources is None or build_is_current(build_dir, sources):
            return build_dir
        print("building DeepSpeed's CPU communication op for this virtualenv (once; about a minute)", flush=True)
        proc = _compile(cache, env)
        if proc.returncode != 0:
            stale.unlink(missing_ok=True)
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise PipelineError(f"building DeepSpeed's CPU op failed (is a C++ compiler installed?):\n{tail}")
    return build_dir


def _compile(cache: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess:
    """Build the op into ``cache`` the way a rank's ``deepspeed.init_distributed`` does, in a process of its own."""
    env = {**tools_env(env), "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(cache)}
    return subprocess.run([sys.executable, "-c", _BUILD], env=env, capture_output=True, text=True)


@contextmanager
def rank_extensions(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """``env`` with ``TORCH_EXTENSIONS_DIR`` set to a private copy of the built op, for one launch's ranks;
    the copy is deleted when the launch ends."""
    private = _private_copy(build_op(extension_cache(), env))
    try:
        yield {**tools_env(env), "TORCH_EXTENSIONS_DIR": str(private), MARK: "1"}
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _private_copy(build_dir: Path) -> Path:
    private = Path(tempfile.mkdtemp(prefix="ds-ext-"))
    if build_dir.is_dir():  # copy2 keeps the times, so the ranks' check finds the build current
        shutil.copytree(build_dir, private / OP, ignore=shutil.ignore_patterns(TORCH_LOCK))
    return private


def ensure_private_extensions() -> None:
    """For a rank that was not started by the launcher (a tuning trial in a Ray worker, a test, a benchmark):
    point this process's ``TORCH_EXTENSIONS_DIR`` at a private copy of the built op, deleted when the process
    exits. A launched rank already has one (its launcher's, marked by :data:`MARK`)."""
    if os.environ.get(MARK) and Path(os.environ.get("TORCH_EXTENSIONS_DIR", "")).is_dir():
        return
    import atexit

    build_dir = build_op(extension_cache(), dict(os.environ))
    private = _private_copy(build_dir)
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    os.environ.update({"PATH": tools_env(os.environ)["PATH"], "TORCH_EXTENSIONS_DIR": str(private), MARK: "1"})
