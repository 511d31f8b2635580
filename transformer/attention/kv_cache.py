"""A preallocated cache of per-token attention state for incremental decoding.

One class serves every attention type: it holds a tuple of buffers ``[b, n, max_seq_len, w]`` (the
sequence is always dim -2) and appends along it. Grouped-query attention caches keys and values of
its ``n_kv`` heads only (never the repeated ones); MLA caches one stream ``[b, 1, S, kv_lora_rank +
rope_head_dim]``: its latent and its shared RoPE key side by side. ``length`` is the number of tokens cached so
far, i.e. the position of the next token, which is what RoPE, ALiBi and sliding windows need.

This is the contiguous kind. The paged (:mod:`.paged_cache`) and quantized (:mod:`.quantized_cache`) kinds
share :class:`CacheBase` and the same ``update`` / ``cached`` contract; :mod:`.cache_kinds` picks one by name.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class CacheBase:
    """What every cache kind shares (contiguous here; quantized and paged in their own modules): a
    capacity, the number of tokens cached so far (``length``: the position of the next token) and the
    checks on what is appended. ``update(*new)`` appends ``[b, n_i, s, w_i]`` per stream and returns
    ``[b, n_i, length, w_i]`` tensors the attention kernels can read; ``cached()`` returns them without
    appending."""

    def __init__(self, batch_size: int, max_seq_len: int) -> None:
        if batch_size < 1 or max_seq_len < 1:
            raise ValueError(f"KV cache needs batch_size >= 1 and max_seq_len >= 1, got {batch_size}, {max_seq_len}")
        self.max_seq_len = max_seq_len
        self.length = 0

    def _check_update(self, new: Sequence[Tensor], streams: Sequence[tuple[int, int]]) -> int:
        """Validate one ``update``; return the number of new tokens."""
        if len(new) != len(streams):
            raise ValueError(f"KV cache holds {len(streams)} streams, update got {len(new)}")
        s = new[0].shape[-2]
        if self.length + s > self.max_seq_len:
            raise ValueError(f"KV cache is full: {self.length} cached + {s} new tokens exceeds max_seq_len={self.max_seq_len}")
        for (n, w), tensor in zip(streams, new):
            if tensor.dim() != 4 or tensor.shape[0] != self.batch_size or tensor.shape[1] != n or tensor.shape[3] != w:
                raise ValueError(f"KV cache stream [{self.batch_size}, {n}, S, {w}] cannot take a tensor of shape {tuple(tensor.shape)}")
        return s

    def used_bytes(self) -> int:
        """Bytes the cached tokens need at this cache's bytes per token (all rows)."""
        return self.length * self.batch_size * self.bytes_per_token()

    def keys_after(self, s: int) -> int:
        """How many keys ``update`` returns when given ``s`` new tokens (all of them here; a rolling window
        cache returns fewer). The model sizes each layer's mask with it."""
        return self.length + s


class KVCache(CacheBase):
    """Buffers ``[b, n_i, max_seq_len, w_i]`` filled left to right; ``update`` returns the filled part."""

    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        streams: Sequence[tuple[int, int]],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(batch_size, max_seq_len)
        self.buffers = tuple(torch.zeros(batch_size, n, max_seq_len, w, dtype=dtype, device=device) for n, w in streams)

    @property
    def batch_size(self) -> int:
        return self.buffers[0].shape[0]

    def update(self, *new: Tensor) -> tuple[Tensor, ...]:
        """Append ``new[i]`` ``[b, n_i, s, w_i]``; return views ``[b, n_i, length, w_i]`` of everything cached."""
        s = self._check_update(new, [(b.shape[1], b.shape[3]) for b in self.buffers])
        end = self.length + s
        for buffer, tensor in zip(self.buffers, new):
            buffer[:, :, self.length : end] = tensor
        self.length = end
        return tuple(buffer[:, :, :end] for buffer in self.buffers)

    def cached(self) -> tuple[Tensor, ...]:
        """Views of everything cached so far, without appending."""
        return tuple(buffer[:, :, : self.length] for buffer in self.buffers)

    def reset(self) -> None:
        self.length = 0

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (e.g. beams or finished sequences removed)."""
        self.buffers = tuple(buffer.index_select(0, index) for buffer in self.buffers)

    def bytes_per_token(self) -> int:
        """Bytes one more token costs this cache (all streams, one layer)."""
        return sum(b.shape[1] * b.shape[3] * b.element_size() for b in self.buffers)

    def allocated_bytes(self) -> int:
        """Bytes this cache holds (every row preallocated to ``max_seq_len``)."""
        return sum(b.numel() * b.element_size() for b in self.buffers)


class RollingKVCache(KVCache):
    """The contiguous cache of a sliding-window layer: it keeps only the last ``window - 1`` tokens, because no
    later query can see an older key, so its bytes stop growing at the window (Mistral's rolling buffer).

    ``length`` still counts every token (it is the next position, which RoPE needs); ``update`` returns the kept
    tokens followed by the new ones, in position order, which is every key the new queries' windows can reach.
    The model builds this layer's mask for ``keys_after(s)`` keys with the last columns of the padding mask.
    """

    def __init__(self, batch_size: int, max_seq_len: int, streams: Sequence[tuple[int, int]], *, window: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        if window < 1:
            raise ValueError(f"rolling KV cache window={window} must be >= 1")
        CacheBase.__init__(self, batch_size, max_seq_len)
        self.window, self.kept = window, 0
        capacity = min(window - 1, max_seq_len)
        self.buffers = tuple(torch.zeros(batch_size, n, capacity, w, dtype=dtype, device=device) for n, w in streams)

    def keys_after(self, s: int) -> int:
        return self.kept + s

    def update(self, *new: Tensor) -> tuple[Tensor, ...]:
        """Append ``new[i]`` ``[b, n_i, s, w_i]``; return ``[b, n_i, kept + s, w_i]``: the kept window, then ``new``."""
        s = self._check_update(new, [(b.shape[1], b.shape[3]) for b in self.buffers])
        out = tuple(torch.cat([buffer[:, :, : self.kept], tensor], dim=2) for buffer, tensor in zip(self.buffers, new))
        self.length += s
        self.kept = min(self.buffers[0].shape[2], out[0].shape[2])
        if self.kept:
            for buffer, tensor in zip(self.buffers, out):  # out is a fresh tensor: no overlap with the buffer
                buffer[:, :, : self.kept] = tensor[:, :, -self.kept :]
        return out

    def cached(self) -> tuple[Tensor, ...]:
        return tuple(buffer[:, :, : self.kept] for buffer in self.buffers)

    def reset(self) -> None:
        self.length = self.kept = 0
