"""A KV cache whose layers grow in place: a decode step writes one position instead of copying the whole cache.

transformers' ``DynamicLayer`` appends each step's keys and values with ``torch.cat``, which copies every cached
position of every row, every layer, every step: in the engine's 16-row bf16 batch that was about an eighth of
a step's time (``torch.cat``, profiled offline). :class:`GrowingLayer` keeps ``keys`` / ``values`` as views of the
first positions of a buffer with room to spare (``SLACK``): an update writes the new positions into the buffer;
only when the buffer is full, or when the engine has replaced the tensors (rows joined or dropped, a prefix
loaded), is a new buffer allocated and the current positions copied once. Attention reads the same values, so
the outputs are unchanged (the engine tests compare them with ``generate()``).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

SLACK = 64  # free positions a decode step's new buffer gets beyond the current length (and a quarter more of it)


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose appends are in-place writes into a buffer with spare positions."""

    def __init__(self) -> None:
        super().__init__()
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def _owns(self, tensor: torch.Tensor, buffer: torch.Tensor) -> bool:
        """``tensor`` is the leading view of ``buffer`` (nobody replaced it since the last update)."""
        return (
            tensor.data_ptr() == buffer.data_ptr()
            and tensor.shape[:2] == buffer.shape[:2]
            and tensor.stride() == buffer.stride()
        )

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = 0 if self.keys.numel() == 0 else self.keys.shape[-2]
        new = old + key_states.shape[-2]
        bufs = self._buffers
        if (
            bufs is None
            or old == 0
            or not self._owns(self.keys, bufs[0])
            or not self._owns(self.values, bufs[1])
            or (new > bufs[0].shape[-2])
        ):
            room = new + (SLACK + new // 4 if key_states.shape[-2] == 1 else 0)  # a prompt's cache is copied anyway
            bufs = tuple(
                torch.empty((*s.shape[:2], room, s.shape[-1]), dtype=s.dtype, device=s.device)
                for s in (key_states, value_states)
            )
            if old:
                bufs[0][:, :, :old].copy_(self.keys)
                bufs[1][:, :, :old].copy_(self.values)
            self._buffers = bufs
        bufs[0][:, :, old:new].copy_(key_states)
        bufs[1][:, :, old:new].copy_(value_states)
        self.keys, self.values = bufs[0][:, :, :new], bufs[1][:, :, :new]
        return self.keys, self.values

    def reset(self) -> None:
        self._buffers = None
        super().reset()


def growing_cache(config) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose full-attention layers are :class:`GrowingLayer` s."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
