"""Two training runs on one machine: the second must not die on the first one's rendezvous port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pipelines.config import FinetuneConfig
from pipelines.training.launch import launcher_command

pytestmark = pytest.mark.unit


def _port(cmd: list[str]) -> int:
    return int(cmd[cmd.index("--master_port") + 1])


def _command(cfg: FinetuneConfig) -> list[str]:
    return launcher_command(cfg, "pipelines.classifier.finetune_worker", Path("p.yaml"), Path("d"), Path("c"), False)


def test_a_busy_master_port_is_replaced_by_a_free_one_on_one_node(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        port = _port(_command(FinetuneConfig(master_port=taken)))
        assert port != taken
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # free: nothing else holds it
    assert f"master_port {taken} is in use" in capsys.readouterr().out


def test_a_free_master_port_is_kept_and_a_multi_node_port_is_never_changed(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert _port(_command(FinetuneConfig(master_port=free))) == free
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=2\nnode2 slots=2\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        cfg = FinetuneConfig(master_port=taken, hostfile=str(hostfile), num_nodes=2)
        assert _port(_command(cfg)) == taken  # every node must agree on it
