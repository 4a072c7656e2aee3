"""Fixtures shared by the classifier tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_rank(tmp_path):
    """A one-process gloo group: the linear probe's forwards are collective, as on the DeepSpeed ranks."""
    import torch.distributed as dist

    from pipelines.training.ranks import Rank

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield Rank(0, 1, torch.device("cpu"), "cpu")
    finally:
        dist.destroy_process_group()
