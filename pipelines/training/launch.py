"""Starting a DeepSpeed run, for every model family: checks before any rank starts, then the launcher.

    deepspeed --num_gpus <world_size> [--num_nodes N --hostfile H] --master_port P \\
        --module <worker module> --params params.yaml --data-dir ... --ckpt-dir ... [--resume]

with ``DS_ACCELERATOR=cpu`` when no GPU is visible. A failing rank makes the launcher stop the
others; :func:`launch` raises :class:`PipelineError` with the exit code (the rank's own message was
streamed above it). The classifier (``finetune``) and the generative model (``sft``) both start here.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.config import DeepSpeedConfig
from pipelines.errors import ConfigError, PipelineError
from pipelines.io import free_port as any_free_port
from pipelines.io import stream_command, tool
from pipelines.logs import drop_launcher_noise
from pipelines.training import engine as dse
from pipelines.training.cpu_ops import rank_extensions


def check_world_size(cfg: DeepSpeedConfig, accelerator: str, section: str = "finetune") -> None:
    """:class:`ConfigError` when ``<section>.world_size`` exceeds this machine's GPUs (or CPU cores)."""
    if cfg.hostfile:  # multi-node: each node's capacity is the cluster's business
        if not Path(cfg.hostfile).is_file():
            raise ConfigError(f"{section}.hostfile: {cfg.hostfile} does not exist")
        return
    have = dse.devices_available(accelerator)
    if cfg.world_size > have:
        unit = "GPU(s)" if accelerator == "cuda" else "CPU core(s)"
        raise ConfigError(
            f"{section}.world_size is {cfg.world_size} but this machine has {have} {unit}; "
            f"lower it, or set {section}.hostfile to run on several nodes"
        )


def checkpoint_tag_dir(ckpt_dir: Path) -> Path:
    """The directory the ``latest`` file names: a direct child of ``ckpt_dir`` (a name like ``epoch-2``; no
    path, no ``..``, no symlink out), or :class:`PipelineError`. DeepSpeed joins that name to the folder itself."""
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        raise PipelineError(f"--resume: no checkpoint in {ckpt_dir} (no 'latest' file); run without --resume first")
    tag = latest.read_text(encoding="utf-8", errors="replace").strip()
    tag_dir = ckpt_dir / tag
    plain = tag not in ("", ".", "..") and "/" not in tag and "\\" not in tag and "\0" not in tag
    if not plain or tag_dir.resolve().parent != ckpt_dir.resolve():
        raise PipelineError(
            f"--resume: {latest} names {tag[:200]!r}, not a checkpoint folder directly inside {ckpt_dir}; "
            "refusing to read outside it (write the tag, e.g. epoch-1, or run without --resume)"
        )
    return tag_dir


def check_checkpoint(ckpt_dir: Path) -> None:
    """Refuse a missing, unreadable or unsafe checkpoint before the ranks start (a failing rank is slower to report).

    Every file is read with ``torch.load(weights_only=True)`` and only the few plain-data classes DeepSpeed
    pickles (:func:`pipelines.training.engine.checkpoint_safe_globals`): a file that needs anything else to
    unpickle (a pickle that could run code) is refused here, before DeepSpeed's own loader, which unpickles
    with ``weights_only=False``, ever opens it."""
    tag_dir = checkpoint_tag_dir(ckpt_dir)
    files = sorted(tag_dir.glob("*.pt")) if tag_dir.is_dir() else []
    if not files:
        raise PipelineError(f"--resume: checkpoint {tag_dir} is missing or empty")
    for f in files:
        try:
            dse.read_checkpoint_file(f)
        except Exception as err:  # noqa: BLE001 - any failure to read means the file is unusable
            what = str(err).splitlines()[0][:300] if str(err) else ""
            raise PipelineError(
                f"--resume: checkpoint file {f} is corrupt or unsafe to load ({type(err).__name__}: {what})"
            ) from None


def prepare_checkpoints(ckpt_dir: Path, resume: bool) -> None:
    """``--resume``: the checkpoint must be readable (:func:`check_checkpoint`); else start from an empty folder."""
    import shutil

    if resume:
        check_checkpoint(ckpt_dir)
    elif ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)


def free_port(preferred: int) -> int:
    """``preferred`` when nothing listens on it here, else a free port the OS picks (and a line saying so)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            pass
    port = any_free_port()
    print(f"master_port {preferred} is in use on this machine (another training run?): using {port}", flush=True)
    return port


def launcher_command(
    cfg: DeepSpeedConfig, module: str, params: Path, data_dir: Path, ckpt_dir: Path, resume: bool
) -> list[str]:
    """The ``deepspeed`` launcher command running ``module`` on every rank.

    On one node a busy ``master_port`` (another training run on this machine) is replaced by a free one; with a
    hostfile every node must agree on the port, so it is used as configured."""
    port = cfg.master_port if cfg.hostfile else free_port(cfg.master_port)
    cmd = [tool("deepspeed"), "--num_gpus", str(cfg.world_size), "--master_port", str(port)]
    if cfg.hostfile:
        cmd += ["--hostfile", cfg.hostfile, "--num_nodes", str(cfg.num_nodes)]
    cmd += ["--module", module, "--params", str(params), "--data-dir", str(data_dir), "--ckpt-dir", str(ckpt_dir)]
    return cmd + (["--resume"] if resume else [])


def launch(cmd: list[str], accelerator: str, banner: str) -> None:
    """Print ``banner`` and the command, stream the ranks' output; :class:`PipelineError` when the run fails."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the ranks' warning filter comes from pipelines.logs (run_cli)
    print(f"{banner}\n$ {'DS_ACCELERATOR=cpu ' if accelerator == 'cpu' else ''}{' '.join(cmd)}", flush=True)
    if accelerator == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        with rank_extensions(env) as rank_env:
            returncode = stream_command(cmd, env=rank_env, keep=drop_launcher_noise)
    else:
        returncode = stream_command(cmd, env=env, keep=drop_launcher_noise)
    if returncode != 0:
        raise PipelineError(f"the DeepSpeed run failed (exit {returncode}); see the rank messages above")
