"""The registry lock: one exclusive file lock that every registry write takes (register, the gate, promote, rollback).

MLflow has no conditional alias update, so a move that depends on what an alias points to (the gate's
"promote v2 only if champion is still v1 and challenger still v2", a rollback, a manual promotion) is a
compare-and-swap done as check-then-set while holding this lock (:mod:`pipelines.registry.gate`), and every plain
write (``Registry.set_alias``, tags, a new version) takes it too, so no move can land between another one's check
and its set (and two writers of one tag, which MLflow's SQLite store fails, never meet).

What it covers: processes and threads on *one machine* that share the lock file. With the SQLite store
(``sqlite:///mlflow.db``) the file sits next to the database (``mlflow.db.registry.lock``), so every process using
that store takes the same lock. With a remote store (an ``http(s)://`` tracking server, a database URL) the file is
``mlflow.registry_lock_file`` (default ``.mlflow-registry.lock`` in the working directory): it still serialises
this machine's promoters, but not another machine's; run promotions from one place (the ``promote`` Prefect
deployment, one CI job) when the registry is shared. (The training flow's Prefect limit ``flows.dvc_concurrency_limit``
only keeps two ``dvc repro`` apart inside Prefect; ``python -m pipelines.promote`` and a plain ``dvc repro`` never
take it, so it cannot be the registry's lock.)

Reentrant within a thread (a gate's commit calls ``set_alias``); POSIX ``flock``, so the lock is released when
its holder dies, even by ``kill -9``. Only the standard library here: a waiting process imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pipelines.errors import PipelineError

SQLITE_PREFIX = "sqlite:///"
REMOTE_LOCK_FILE = ".mlflow-registry.lock"
_POLL_S = 0.05
_held = threading.local()  # {lock path: depth} of the locks this thread holds


class RegistryLockTimeout(PipelineError):
    """Another process held the registry lock for longer than ``mlflow.registry_lock_timeout_s``."""


def lock_path(tracking_uri: str, lock_file: str | None = None) -> Path:
    """Where the lock of the store at ``tracking_uri`` lives: ``lock_file`` if given, else next to a SQLite
    database (``<db>.registry.lock``), else :data:`REMOTE_LOCK_FILE` in the working directory."""
    if lock_file:
        return Path(lock_file)
    if tracking_uri.startswith(SQLITE_PREFIX):
        db = tracking_uri[len(SQLITE_PREFIX) :].split("?", 1)[0]
        if db and db != ":memory:":
            return Path(db).with_name(Path(db).name + ".registry.lock")
    return Path(REMOTE_LOCK_FILE)


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float, holder: str = "") -> Iterator[None]:
    """Hold the exclusive lock on ``path`` (created if missing) for the block; wait at most ``timeout_s``.

    ``holder`` is written into the file while it is held, so whoever times out can say who had it."""
    import fcntl  # POSIX; imported here so the module documents itself on any platform

    key = str(Path(os.path.abspath(path)))
    depth: dict[str, int] = _held.__dict__.setdefault("depth", {})
    if depth.get(key):  # this thread holds it already
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RegistryLockTimeout(
                        f"the registry lock {path} is held by another process ({_holder_of(path)}) for more than "
                        f"{timeout_s:g} s (mlflow.registry_lock_timeout_s); nothing was moved, try again"
                    ) from None
                time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} {holder}".strip().encode("utf-8"))
        depth[key] = 1
        try:
            yield
        finally:
            depth[key] = 0
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder_of(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[:200] or "unknown holder"
    except OSError:
        return "unknown holder"
