"""A KV cache in fixed-size blocks from a pool shared by the batch (PagedAttention, Kwon et al. 2023).

Why: the contiguous cache reserves ``max_seq_len`` positions for every row up front, so a batch of
left-padded prompts of very different lengths holds memory for every padding position and every token a
row may never generate. Here the cache is a pool of blocks of ``block_size`` tokens; each row has a block
table (its logical block ``j`` -> a pool block), and a block is taken from the pool only when a real token
is written into it. Padding positions (before ``row_starts[i]``) are never stored: they read back as
zeros, and the attention mask already hides them, so attention outputs are the contiguous cache's.

Layout per stream: ``pool [capacity * block_size, n, w]`` (slot = block * block_size + offset); the pool
grows by doubling when its free blocks run out, so memory follows what the batch uses.
``allocated_bytes`` counts the blocks handed out, ``reserved_bytes`` the pool's capacity, and
``used_bytes`` the real tokens; the contiguous cache's figure is ``batch * max_seq_len * bytes_per_token``.

Each call gathers the row's blocks into ``[b, n, L, w]`` for the attention kernel (a paged kernel would read
the pool directly; ``bench/generate.py`` reports the speed).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .kv_cache import CacheBase


class PagedKVCache(CacheBase):
    """``PagedKVCache(batch_size, max_seq_len, streams, block_size=16, row_starts=None)``.

    ``row_starts`` ``[b]``: the first position of each row that holds a real token (left padding before
    it is not stored); default 0 for every row."""

    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        streams: Sequence[tuple[int, int]],
        *,
        block_size: int = 16,
        row_starts: Tensor | Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(batch_size, max_seq_len)
        if block_size < 1:
            raise ValueError(f"paged KV cache: block_size={block_size} must be >= 1")
        self.block_size, self.streams, self.dtype = block_size, list(streams), dtype
        starts = torch.zeros(batch_size, dtype=torch.long) if row_starts is None else torch.as_tensor(row_starts, dtype=torch.long)
        if starts.shape != (batch_size,) or bool((starts < 0).any()):
            raise ValueError(f"paged KV cache: row_starts must be {batch_size} non-negative positions, got {starts.tolist()}")
        self.row_starts = starts.to(device)
        self._next_block = [start // block_size for start in starts.tolist()]  # per row: first logical block not yet taken
        self.capacity = 0
        self.pools = [torch.zeros(0, n, w, dtype=dtype, device=device) for n, w in streams]
        self.free: list[int] = []
        num_blocks = -(-max_seq_len // block_size)
        self.block_table = torch.full((batch_size, num_blocks), -1, dtype=torch.long, device=device)  # [b, blocks]
        self.slots = torch.full((batch_size, max_seq_len), -1, dtype=torch.long, device=device)  # [b, S]: pool slot or -1

    @property
    def batch_size(self) -> int:
        return self.block_table.shape[0]

    def _take_block(self) -> int:
        if not self.free:  # grow the pool: double it (at least one block per row)
            grow = max(self.capacity, self.batch_size)
            self.pools = [torch.cat((p, p.new_zeros(grow * self.block_size, *p.shape[1:]))) for p in self.pools]
            self.free = list(range(self.capacity + grow - 1, self.capacity - 1, -1))
            self.capacity += grow
        return self.free.pop()

    def update(self, *new: Tensor) -> tuple[Tensor, ...]:
        s = self._check_update(new, self.streams)
        begin, end = self.length, self.length + s
        positions = torch.arange(begin, end, device=self.block_table.device)  # [s]
        real = positions[None, :] >= self.row_starts[:, None]  # [b, s]: not left padding
        bs = self.block_size
        last = (end - 1) // bs
        for row, block in enumerate(self._next_block):  # rows take blocks in order, from the block of their first real token
            if block <= last:
                for logical in range(block, last + 1):
                    self.block_table[row, logical] = self._take_block()
                self._next_block[row] = last + 1
        slots = self.block_table[:, positions // bs] * bs + positions % bs  # [b, s]
        slots = torch.where(real, slots, torch.full_like(slots, -1))
        self.slots[:, begin:end] = slots
        rows, cols = torch.nonzero(real, as_tuple=True)
        for pool, tensor in zip(self.pools, new):
            pool[slots[rows, cols]] = tensor.to(self.dtype).permute(0, 2, 1, 3)[rows, cols]  # [tokens, n, w]
        self.length = end
        return self.cached()

    def cached(self) -> tuple[Tensor, ...]:
        slots = self.slots[:, : self.length]  # [b, L]
        stored = (slots >= 0)[:, None, :, None]  # [b, 1, L, 1]
        out = []
        for pool in self.pools:
            if pool.shape[0] == 0:
                n, w = pool.shape[1:]
                out.append(pool.new_zeros(self.batch_size, n, self.length, w))
                continue
            gathered = pool[slots.clamp_min(0)].permute(0, 2, 1, 3)  # [b, L, n, w] -> [b, n, L, w]
            out.append(gathered.masked_fill(~stored, 0))
        return tuple(out)

    def reset(self) -> None:
        self.length = 0
        self.free = list(range(self.capacity - 1, -1, -1))
        self.block_table.fill_(-1)
        self._next_block = [start // self.block_size for start in self.row_starts.tolist()]
        self.slots.fill_(-1)

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index``; blocks no kept row refers to go back to the pool."""
        self.block_table = self.block_table.index_select(0, index)
        self.slots = self.slots.index_select(0, index)
        self.row_starts = self.row_starts.index_select(0, index)
        self._next_block = [self._next_block[i] for i in index.tolist()]
        in_use = set(self.block_table[self.block_table >= 0].tolist())
        self.free = [b for b in range(self.capacity - 1, -1, -1) if b not in in_use]

    def bytes_per_token(self) -> int:
        """Bytes one stored token costs (all streams, one row)."""
        return sum(n * w for n, w in self.streams) * torch.empty((), dtype=self.dtype).element_size()

    def used_bytes(self) -> int:
        """Bytes of the real (not padding) tokens cached."""
        return int((self.slots[:, : self.length] >= 0).sum()) * self.bytes_per_token()

    def allocated_bytes(self) -> int:
        """Bytes of the blocks handed out to rows."""
        return int((self.block_table >= 0).sum()) * self.block_size * self.bytes_per_token()

    def reserved_bytes(self) -> int:
        """Bytes of the whole pool, free blocks included."""
        return self.capacity * self.block_size * self.bytes_per_token()
