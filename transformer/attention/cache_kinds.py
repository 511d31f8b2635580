"""Cache kinds by name: what ``generate(cache=...)``, ``python -m transformer.sample --cache`` and the compare
report select. Every kind takes the same streams (``layer.cache_streams()``) and returns dense
``[b, n, L, w]`` tensors to the attention kernels, so any attention type works with any kind.

- ``contiguous``: one preallocated buffer per stream (:mod:`.kv_cache`), the fastest;
- ``paged``: blocks from a shared pool, allocated on demand (:mod:`.paged_cache`);
- ``int8`` / ``int4``: quantized old tokens, newest tokens exact (:mod:`.quantized_cache`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .kv_cache import CacheBase, KVCache, RollingKVCache
from .paged_cache import PagedKVCache
from .quantized_cache import QuantizedKVCache

CACHE_KINDS = ("contiguous", "paged", "int8", "int4")


def new_kv_cache(kind: str, batch_size: int, max_seq_len: int, streams: Sequence[tuple[int, int]], *,
                 dtype: torch.dtype = torch.float32, device=None, row_starts=None, window: int | None = None,
                 **options) -> CacheBase:
    """A cache of ``kind`` for ``streams`` ``[(n_i, w_i), ...]``. ``row_starts`` (first real position per row,
    after left padding) lets the paged cache skip padding; other kinds store every position. ``window``: the
    layer's sliding window; the contiguous kind then keeps only the last ``window - 1`` tokens (a rolling
    buffer), the other kinds still store every token. ``options``: ``block_size`` (paged), ``group_size`` /
    ``residual`` (int8 / int4)."""
    if kind not in CACHE_KINDS:
        raise ValueError(f"unknown KV cache kind {kind!r}; choose one of {', '.join(CACHE_KINDS)}")
    allowed = {"paged": {"block_size"}, "int8": {"group_size", "residual"}, "int4": {"group_size", "residual"}}.get(kind, set())
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"KV cache kind {kind!r} takes no option {', '.join(sorted(unknown))}"
                         + (f" (its options: {', '.join(sorted(allowed))})" if allowed else ""))
    common = dict(dtype=dtype, device=device)
    if kind == "contiguous":
        if window is not None and window <= max_seq_len:
            return RollingKVCache(batch_size, max_seq_len, streams, window=window, **common)
        return KVCache(batch_size, max_seq_len, streams, **common)
    if kind == "paged":
        return PagedKVCache(batch_size, max_seq_len, streams, row_starts=row_starts, **options, **common)
    return QuantizedKVCache(batch_size, max_seq_len, streams, bits=8 if kind == "int8" else 4, **options, **common)
