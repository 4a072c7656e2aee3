"""The one registry lock across processes: while another process holds it, every alias move (register's
``challenger``, a manual promotion, a rollback, the gate's promotion, for either family) waits and then fails with
a message naming the holder, moving nothing; the CLI exits non-zero on an unloadable version.

Starts subprocesses (a lock holder, the promote CLI), hence ``integration``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipelines.config import Params
from pipelines.registry import tracking
from pipelines.registry.aliases import CHALLENGER, CHAMPION, PREVIOUS
from pipelines.registry.gate import promote_version, rollback, run_gate
from pipelines.registry.lock import RegistryLockTimeout, file_lock, lock_path
from tests.helpers import ROOT

pytestmark = pytest.mark.integration

HOLDER = """
import sys
from pathlib import Path
from pipelines.registry.lock import file_lock
with file_lock(Path(sys.argv[1]), 30, "test holder"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@contextmanager
def held_by_another_process(path: Path) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(30)


def fake_version(reg, **tags: str) -> str:
    """A version from a run holding one text file: enough for aliases and tags (nothing here loads it)."""
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_text("not a model", "model/README.txt")
    if not reg.exists():
        reg.client.create_registered_model(reg.name)
    return str(reg.client.create_model_version(reg.name, f"runs:/{run.info.run_id}/model", tags=tags).version)


@pytest.fixture(params=["classifier", "llm"])
def reg(request, registry_cfg: Params) -> tracking.Registry:
    """Either family's registered model, v1 champion, v2 champion, v3 challenger; the lock waits 0.3 s."""
    cfg = registry_cfg.mlflow.model_copy(update={"registry_lock_timeout_s": 0.3})
    tracking.setup(cfg)
    name = (
        registry_cfg.mlflow.registered_model
        if request.param == "classifier"
        else registry_cfg.register_llm.registered_model
    )
    reg = tracking.Registry(cfg, name)
    v1, v2, v3 = (fake_version(reg) for _ in range(3))
    promote_version(reg, v1, "test")
    promote_version(reg, v2, "test")
    reg.set_alias(CHALLENGER, v3)
    return reg


def aliases(reg) -> dict:
    return {a: reg.alias(a) for a in (CHAMPION, CHALLENGER, PREVIOUS)} | {"history": reg.model_tag("champion_history")}


def test_the_lock_sits_next_to_a_sqlite_store_or_where_params_say() -> None:
    assert lock_path("sqlite:///mlflow.db") == Path("mlflow.db.registry.lock")
    assert lock_path("sqlite:////srv/ml/mlflow.db?timeout=5") == Path("/srv/ml/mlflow.db.registry.lock")
    assert lock_path("http://mlflow.internal:5000") == Path(".mlflow-registry.lock")
    assert lock_path("sqlite:///mlflow.db", "/run/ticketops/registry.lock") == Path("/run/ticketops/registry.lock")


@pytest.mark.parametrize(
    "move",
    [
        lambda reg: reg.set_alias(CHALLENGER, "1"),  # the register stages (candidates, llm registration)
        lambda reg: promote_version(reg, "1", "manual"),
        lambda reg: rollback(reg, "bad"),
        lambda reg: run_gate(
            reg, lambda v, role: {"m": 1.0}, lambda a, b: {"promote": True, "reasons": ["better"]}, rows=1
        ),
    ],
    ids=["register", "promote", "rollback", "gate"],
)
def test_every_alias_move_waits_for_the_lock_another_process_holds(reg, move) -> None:
    before = aliases(reg)
    with held_by_another_process(reg.lock_file) as holder:
        with pytest.raises(RegistryLockTimeout, match=rf"held by another process \(pid {holder.pid} test holder\)"):
            move(reg)
        assert aliases(reg) == before  # nothing moved
    move(reg)  # released: the same move goes through
    assert aliases(reg) != before


def test_the_lock_is_exclusive_between_threads_and_reentrant_within_one(tmp_path: Path) -> None:
    path, seen = tmp_path / "x.lock", []
    with file_lock(path, 1.0):
        with file_lock(path, 0.1):  # the same thread again: no deadlock
            pass

        def other() -> None:
            try:
                with file_lock(path, 0.2):
                    seen.append("acquired")
            except RegistryLockTimeout:
                seen.append("timed out")

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
    assert seen == ["timed out"]
    with file_lock(path, 0.2):  # released by the with block, even after the nested one
        pass


def test_the_promote_cli_exits_non_zero_naming_an_unloadable_version(registry_cfg: Params, tmp_path: Path) -> None:
    tracking.setup(registry_cfg.mlflow)
    reg = tracking.Registry(registry_cfg.mlflow)
    v1 = fake_version(reg)
    promote_version(reg, v1, "test")
    v2 = fake_version(reg)
    (tmp_path / "params.yaml").write_text(
        f"mlflow:\n  tracking_uri: {reg.uri}\n  artifact_root: {registry_cfg.mlflow.artifact_root}\n"
        f"  experiment: t\n  registered_model: {reg.name}\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "pipelines.promote", "--version", v2],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 3, r.stderr
    assert f"error: registered model '{reg.name}' v{v2} (to be promoted) cannot be loaded" in r.stderr
    assert reg.alias(CHAMPION) == v1
