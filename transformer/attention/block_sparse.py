"""Softmax attention over a union of key subsets, each computed in its own layout and merged exactly.

Sparse patterns (strided, fixed, neighbourhood) let every query see a few groups of keys: a local band and, for
Child et al.'s patterns, a column of strided keys or the summary keys of earlier blocks. Each group is scored in
the layout where it is dense (tiles for the band, columns for the stride), reduced to a :class:`Partial` (the
unnormalised output, its row maximum and its row sum of exponentials), and the partials are merged with their
log-sum-exp, as flash attention and ring attention merge blocks. Nothing of size ``[s, s]`` is formed, so time
and memory follow the pattern's density.

Shape legend: b batch, n_kv key/value heads, g query heads per key/value head, s sequence (queries = keys),
t tile length, n tiles, W keys per tile's band (``span``), e value width.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def band_tile(width: int) -> int:
    """Queries per tile for a band ``width`` keys wide: each tile scores ``width + tile - 1`` keys, so small tiles
    waste few scores but make many small kernel calls and gather each key ``(width + tile - 1) / tile`` times.
    Half the band, rounded up to a power of two, within 32...256, was the fastest tile or within 12% of it at every
    band measured (``python bench/band_tile.py``: CPU, fp32, forward + backward at 8192 tokens, bands 15...1023;
    ``bench/RESULTS.md``, issue 17): 1.5-3.3x faster than a fixed 32 at bands of 127-1023."""
    return min(256, max(32, 1 << max(width - 1, 1).bit_length() - 1))


class Partial(NamedTuple):
    """Softmax attention over one key subset: ``out = sum_j exp(x_j - max) v_j``, ``max``, ``sum = sum_j exp(x_j - max)``."""

    out: Tensor  # [..., q, e]
    max: Tensor  # [..., q]
    sum: Tensor  # [..., q]


def partial(scores: Tensor, allowed: Tensor, values: Callable[[Tensor], Tensor]) -> Partial:
    """Reduce fp32 ``scores`` (``allowed`` False = masked) to a :class:`Partial`; ``values(p)`` is ``p @ v`` in
    the caller's layout. A row with no allowed key gets max 0 and sum 0, so it adds nothing when merged."""
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(-1)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros((), device=scores.device))
    p = torch.exp(scores - row_max[..., None])  # masked entries: exp(-inf) = 0
    return Partial(values(p), row_max, p.sum(-1))


def merge(parts: list[Partial]) -> Tensor:
    """Exact softmax over the union of the parts' keys: rescale each to the common maximum and normalise.
    Rows with no key at all (padding) come out as zeros."""
    top = torch.stack([p.max for p in parts]).amax(0)
    out = sum(p.out * torch.exp(p.max - top)[..., None] for p in parts)
    total = sum(p.sum * torch.exp(p.max - top) for p in parts)
    return out / total.clamp(min=torch.finfo(total.dtype).tiny)[..., None]


def gather_band(q: Tensor, k: Tensor, v: Tensor, *, tile: int, starts: Tensor, span: int,
                allow: Callable[[Tensor, Tensor], Tensor], key_real: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Tiles of ``tile`` queries and the ``span`` keys from each tile's start: the dense pieces of a band.

    ``q`` ``[b, n_kv, g, s, d]``, ``k`` ``[b, n_kv, s, d]``, ``v`` ``[b, n_kv, s, e]``; ``starts`` ``[b|1, n]``: the
    first key of each tile's band (per row when rows differ). ``allow(q_pos, k_pos)`` (broadcast ``[1, n, t, 1]``
    x ``[b|1, n, 1, W]``) and ``key_real`` ``[b, s]`` (False = padding) say which of them each query sees.
    Returns query tiles ``[b, n_kv, g, n, t, d]``, keys ``[b, n_kv, n, W, d]``, values ``[b, n_kv, n, W, e]`` and
    ``allowed`` ``[b|1, n, t, W]``: ``s * span`` scores' worth, never ``s * s``."""
    b, n_kv, g, s, d = q.shape
    n = -(-s // tile)
    qt = F.pad(q, (0, 0, 0, n * tile - s)).view(b, n_kv, g, n, tile, d)
    q_pos = (torch.arange(n, device=q.device)[:, None] * tile + torch.arange(tile, device=q.device))[None, :, :, None]  # [1, n, t, 1]
    k_pos = (starts[:, :, None] + torch.arange(span, device=q.device))[:, :, None, :]  # [b|1, n, 1, W]
    index = k_pos.clamp(0, s - 1).squeeze(2)  # [b|1, n, W]
    allowed = (k_pos >= 0) & (k_pos < s) & allow(q_pos, k_pos)  # [b|1, n, t, W]
    if key_real is not None:
        allowed = allowed & key_real[torch.arange(b, device=q.device)[:, None, None], index.expand(b, -1, -1)][:, :, None, :]
    return qt, _gather_keys(k, index), _gather_keys(v, index), allowed


def banded_sdpa(q: Tensor, k: Tensor, v: Tensor, *, tile: int, starts: Tensor, span: int, scale: float,
                allow: Callable[[Tensor, Tensor], Tensor], key_real: Tensor | None) -> Tensor:
    """Exact softmax attention when each query's keys lie in its tile's band (:func:`gather_band`): one fused
    ``F.scaled_dot_product_attention`` call over all tiles. ``q`` ``[b, h, s, d]`` -> ``[b, h, s, e]``; queries
    that see no key (an all-padding row) get zeros."""
    b, h, s, d = q.shape
    n_kv = k.shape[1]
    g = h // n_kv
    qt, kw, vw, allowed = gather_band(q.view(b, n_kv, g, s, d), k, v, tile=tile, starts=starts, span=span, allow=allow,
                                      key_real=key_real)
    empty = ~allowed.any(-1, keepdim=True)  # opened for the kernel (no all -inf row), zeroed after
    out = F.scaled_dot_product_attention(  # [b, n, h, t, d] queries over [b, n, n_kv, W, d] keys
        qt.permute(0, 3, 1, 2, 4, 5).reshape(b, -1, h, tile, d), kw.transpose(1, 2), vw.transpose(1, 2),
        attn_mask=(allowed | empty)[:, :, None], scale=scale, enable_gqa=g > 1)  # [b, n, h, t, e]
    out = out.masked_fill(empty[:, :, None], 0.0)
    return out.permute(0, 2, 1, 3, 4).reshape(b, h, -1, out.shape[-1])[:, :, :s]


def band(q: Tensor, k: Tensor, v: Tensor, *, tile: int, starts: Tensor, span: int, scale: float,
         allow: Callable[[Tensor, Tensor], Tensor], key_real: Tensor | None) -> Partial:
    """:func:`gather_band` reduced to a :class:`Partial` over ``[b, n_kv, g, s]`` queries (to merge with others)."""
    b, n_kv, g, s, _ = q.shape
    qt, kw, vw, allowed = gather_band(q, k, v, tile=tile, starts=starts, span=span, allow=allow, key_real=key_real)
    scores = torch.einsum("bhgntd,bhnwd->bhgntw", qt.float(), kw.float()) * scale
    part = partial(scores, allowed[:, None, None], lambda p: torch.einsum("bhgntw,bhnwe->bhgnte", p, vw.float()))
    return Partial(part.out.reshape(b, n_kv, g, -1, part.out.shape[-1])[:, :, :, :s], part.max.reshape(b, n_kv, g, -1)[..., :s],
                   part.sum.reshape(b, n_kv, g, -1)[..., :s])


def _gather_keys(x: Tensor, index: Tensor) -> Tensor:
    """``x`` ``[b, n_kv, s, w]`` at positions ``index`` ``[1, n, W]`` (shared) or ``[b, n, W]`` (per row) ->
    ``[b, n_kv, n, W, w]``."""
    if index.shape[0] == 1:
        return x[:, :, index[0]]
    rows = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x.transpose(1, 2)[rows, index].permute(0, 3, 1, 2, 4)  # [b, n, W, n_kv, w] -> [b, n_kv, n, W, w]
