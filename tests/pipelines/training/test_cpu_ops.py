"""DeepSpeed's CPU op: a lock file left by a killed build never makes a launch wait forever; the ranks get a
private copy of a current build; a build for another virtualenv's paths is not taken as current."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.errors import PipelineError
from pipelines.io import tools_env
from pipelines.training import cpu_ops


def fake_sources(tmp: Path) -> Path:
    src = tmp / "deepspeed" / "ops" / "csrc" / "cpu" / "comm"
    src.mkdir(parents=True)
    (src / "shm.cpp").write_text("// source\n")
    return src


def fake_build(build_dir: Path, sources: Path, *, newer: bool = True) -> None:
    """A build folder made by the real ``ninja`` (the one :func:`tools_env` finds), its rule a copy."""
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "build.ninja").write_text(
        f"rule compile\n  command = cp $in $out\nbuild {cpu_ops.OP}.so: compile {sources}/shm.cpp\n"
    )
    subprocess.run(["ninja"], cwd=build_dir, env=tools_env(os.environ), check=True, capture_output=True)
    if not newer:  # the source changed after the build (its time moves past the library's)
        stamp = (build_dir / f"{cpu_ops.OP}.so").stat().st_mtime + 10
        os.utime(sources / "shm.cpp", (stamp, stamp))


def test_a_build_is_current_only_for_these_sources_and_newer_than_them(tmp_path):
    sources = fake_sources(tmp_path)
    build = tmp_path / "cache" / cpu_ops.OP
    assert not cpu_ops.build_is_current(build, sources)  # nothing built
    fake_build(build, sources)
    assert cpu_ops.build_is_current(build, sources)
    fake_build(build, sources, newer=False)  # a source changed after the build (DeepSpeed upgraded in place)
    assert not cpu_ops.build_is_current(build, sources)
    other = fake_sources(tmp_path / "other-venv")
    fake_build(build, other)  # another checkout's virtualenv built it for its own paths
    assert not cpu_ops.build_is_current(build, sources)


def test_a_build_whose_log_another_ninja_wrote_is_not_current_and_every_step_uses_this_venvs_ninja(
    tmp_path, monkeypatch
):
    """The slow launches this fixes: the op built by the system's ninja (1.11, log v5) while the ranks ran the
    virtualenv's (1.13), which discards an older log and compiles everything again, in every launch."""
    sources = fake_sources(tmp_path)
    build = tmp_path / "cache" / cpu_ops.OP
    fake_build(build, sources)
    assert cpu_ops.build_is_current(build, sources)
    log = build / ".ninja_log"
    log.write_text("# ninja log v1\n" + log.read_text().split("\n", 1)[1])  # an old ninja's format
    assert not cpu_ops.build_is_current(build, sources)

    scripts = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a caller without the virtualenv on PATH
    assert tools_env(os.environ)["PATH"] == f"{scripts}:/usr/bin:/bin"
    assert tools_env({"PATH": f"/bin:{scripts}"})["PATH"] == f"{scripts}:/bin"  # first, once
    fake_build(build, sources)  # current again: the launch below does not build
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(build.parent))
    monkeypatch.setattr(cpu_ops, "op_sources", lambda: sources)
    with cpu_ops.rank_extensions({"PATH": "/usr/bin"}) as env:
        assert env["PATH"] == f"{scripts}:/usr/bin"  # the ranks' (torch runs "ninja" from PATH)
    seen = []
    monkeypatch.setattr(cpu_ops.subprocess, "run", lambda cmd, env, **k: seen.append(env["PATH"]) or fake_ok(cmd))
    cpu_ops._compile(build.parent, dict(os.environ))
    assert seen == [f"{scripts}:/usr/bin:/bin"]  # the build's


def fake_ok(cmd) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(cmd, 0, "", "")


def test_a_stale_lock_is_removed_and_the_ranks_get_a_private_copy_without_it(tmp_path, monkeypatch, capsys):
    sources = fake_sources(tmp_path)
    cache = tmp_path / "cache"
    fake_build(cache / cpu_ops.OP, sources)
    (cache / cpu_ops.OP / cpu_ops.TORCH_LOCK).write_text("")  # a build killed with kill -9
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache))
    monkeypatch.setattr(cpu_ops, "op_sources", lambda: sources)
    monkeypatch.setattr(cpu_ops, "_compile", lambda *a, **k: pytest.fail("a current build is not rebuilt"))

    with cpu_ops.rank_extensions({"X": "1"}) as env:
        private = Path(env["TORCH_EXTENSIONS_DIR"]) / cpu_ops.OP
        assert env["X"] == "1" and private.parent != cache
        assert (private / f"{cpu_ops.OP}.so").is_file() and not (private / cpu_ops.TORCH_LOCK).exists()
        # the copy keeps the times, so the ranks' own check finds it current
        assert cpu_ops.build_is_current(private, sources)
    assert not private.parent.exists(), "the private copy is deleted with the launch"
    assert not (cache / cpu_ops.OP / cpu_ops.TORCH_LOCK).exists()
    assert "lock file left by a killed build" in capsys.readouterr().out


def test_an_out_of_date_build_is_rebuilt_once_and_a_failed_build_says_why(tmp_path, monkeypatch):
    sources = fake_sources(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setattr(cpu_ops, "op_sources", lambda: sources)
    calls = []

    def build(cache, env):
        calls.append(str(cache))
        fake_build(cache / cpu_ops.OP, sources)
        return fake_ok([])

    monkeypatch.setattr(cpu_ops, "_compile", build)
    assert cpu_ops.build_op(cache, {}) == cache / cpu_ops.OP
    assert cpu_ops.build_op(cache, {}) == cache / cpu_ops.OP
    assert calls == [str(cache)]  # the second launch finds it current

    fake_build(cache / cpu_ops.OP, sources, newer=False)
    monkeypatch.setattr(cpu_ops, "_compile", lambda *a: subprocess.CompletedProcess([], 1, "", "c++: not found\n"))
    with pytest.raises(PipelineError, match="c\\+\\+: not found"):
        cpu_ops.build_op(cache, {})
    assert not (cache / cpu_ops.OP / cpu_ops.TORCH_LOCK).exists()


@pytest.mark.integration
def test_the_real_op_builds_into_this_venvs_cache_and_a_rank_copy_loads_without_compiling(tmp_path):
    """The real DeepSpeed op: built (or found current) in the cache despite a planted stale lock; a process
    loading it from a private copy (as a rank does) finds it current and does not compile it again."""
    if cpu_ops.op_sources() is None:
        pytest.skip("DeepSpeed is not installed")
    cache = cpu_ops.extension_cache()
    (cache / cpu_ops.OP).mkdir(parents=True, exist_ok=True)
    (cache / cpu_ops.OP / cpu_ops.TORCH_LOCK).write_text("")  # planted: the hang CI met
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    with cpu_ops.rank_extensions(env) as rank_env:
        library = Path(rank_env["TORCH_EXTENSIONS_DIR"]) / cpu_ops.OP / f"{cpu_ops.OP}.so"
        before = library.stat().st_mtime_ns
        proc = subprocess.run(
            [sys.executable, "-c", cpu_ops._BUILD], env=rank_env, capture_output=True, text=True, timeout=300
        )
        after = library.stat().st_mtime_ns
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert cpu_ops.build_is_current(cache / cpu_ops.OP, cpu_ops.op_sources())
    assert after == before, "the rank's load compiled the op again instead of using the copied build"


def test_a_rank_not_started_by_the_launcher_gets_its_own_copy_once(tmp_path, monkeypatch):
    """A tuning trial (one rank inside a Ray worker) joins through engine.init_distributed, which calls this."""
    sources = fake_sources(tmp_path)
    cache = tmp_path / "cache"
    fake_build(cache / cpu_ops.OP, sources)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache))
    monkeypatch.setenv(cpu_ops.MARK, "")  # restored (removed) after the test, as TORCH_EXTENSIONS_DIR
    monkeypatch.setattr(cpu_ops, "op_sources", lambda: sources)
    exits = []
    monkeypatch.setattr("atexit.register", lambda *a, **k: exits.append(a))
    cpu_ops.ensure_private_extensions()
    private = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    assert private != cache and (private / cpu_ops.OP / f"{cpu_ops.OP}.so").is_file()
    cpu_ops.ensure_private_extensions()  # a second trial in the same worker: the same copy
    assert Path(os.environ["TORCH_EXTENSIONS_DIR"]) == private and len(exits) == 1
    exits[0][0](*exits[0][1:], ignore_errors=True)  # what happens at exit
    assert not private.exists()
    # marked, but the folder is gone (an inherited variable): a new copy, of the virtualenv's cache (not a build
    # into the inherited path, which took 30 s here)
    assert cpu_ops.extension_cache() == Path(sys.prefix) / ".cache" / "torch_extensions"
    monkeypatch.setattr(cpu_ops, "extension_cache", lambda: cache)
    monkeypatch.setattr(cpu_ops, "_compile", lambda *a: pytest.fail("a current build is not rebuilt"))
    cpu_ops.ensure_private_extensions()
    assert Path(os.environ["TORCH_EXTENSIONS_DIR"]).is_dir() and len(exits) == 2
