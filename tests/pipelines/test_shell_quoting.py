"""Values from params reach a shell only quoted: ``make mlflow``, ``make prefect-server`` and ``flows/ui.sh`` read
params into shell variables with ``eval``; a path with spaces or ``;`` must stay one value and run nothing.

Each test runs the exact ``eval`` line of the file (nothing else of the target: no server starts) in a
directory whose params.yaml holds hostile values, and reads the variables back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

HOSTILE = "state dir; touch PWNED; echo $HOME `id` #"


def _makefile_eval(target: str) -> str:
    """The ``eval`` command of ``target``'s recipe, as make hands it to bash (``$$`` → ``$``, ``$(BIN)``)."""
    lines = (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = next(line for line in lines[start + 1 :] if "eval" in line)
    command = recipe.strip().lstrip("@").split('"; \\')[0] + '"'
    return command.replace("$(BIN)/python", sys.executable).replace("$$", "$")


def _ui_eval() -> str:
    lines = (ROOT / "flows" / "ui.sh").read_text(encoding="utf-8").splitlines()
    return next(line for line in lines if line.startswith("eval "))


def _run(tmp_path: Path, command: str, names: list[str], params: dict) -> list[str]:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    show = "".join(f'printf "%s\\n" "${name}"; ' for name in names)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        ["bash", "-c", f"set -eu; {command}; {show}"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "PWNED").exists()
    return done.stdout.splitlines()


@pytest.mark.parametrize("target", ["prefect-server", "ui.sh"])
def test_prefect_home_is_one_quoted_value(tmp_path, target):
    command = _ui_eval() if target == "ui.sh" else _makefile_eval(target)
    got = _run(tmp_path, command, ["home", "port"], {"flows": {"prefect_home": HOSTILE, "prefect_port": 4321}})
    assert got == [HOSTILE, "4321"]


def test_mlflow_store_and_artifact_root_are_quoted_values(tmp_path):
    uri = "sqlite:///my store;touch PWNED.db"
    got = _run(
        tmp_path, _makefile_eval("mlflow"), ["uri", "root"], {"mlflow": {"tracking_uri": uri, "artifact_root": HOSTILE}}
    )
    assert got == [uri, HOSTILE]
