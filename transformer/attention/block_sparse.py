"""Softmax attention over a union of key subsets, each computed in its own layout and merged exactly.

Sparse patterns (strided, fixed, neighbourhood) let every query see a few groups of keys: a local band and, for
Child et al.'s patterns, a column of strided keys or the summary keys of earlier blocks. Each group is scored in
the layout where it is dense (tiles for the band, columns for the stride), reduced to a :class:`Partial` (the
unnormalised output, its row maximum and its row sum of exponentials), and the partials are merged with their
log-sum-exp, as flash attention and ring attention merge blocks. Nothing of size ``[s, s]`` is formed, so time
and memory follow the pattern's density.

Shape legend: b batch, n_kv key/value heads, g query heads per key/value head, s sequence (queries = keys),
t tile length, n tiles, W keys per tile window, e value width.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


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


def tile_band(q: Tensor, k: Tensor, v: Tensor, *, tile: int, before: int, after: int, scale: float,
              allow: Callable[[Tensor, Tensor], Tensor], key_real: Tensor | None) -> Partial:
    """Each query tile attends to key tiles ``i - before .. i + after``, then elementwise ``allow(q_pos, k_pos)``
    (broadcast ``[n, t, 1]`` x ``[n, 1, W]``, may add a leading batch dim) and ``key_real`` ``[b, s]``.

    ``q`` ``[b, n_kv, g, s, d]``, ``k`` ``[b, n_kv, s, d]``, ``v`` ``[b, n_kv, s, e]`` -> a Partial over
    ``[b, n_kv, g, s]`` queries. Work: ``s * (before + after + 1) * t`` scores."""
    b, n_kv, g, s, d = q.shape
    n = -(-s // tile)
    pad = n * tile - s
    span = (before + after + 1) * tile
    # Keys padded so tile i's window starts at (i - before) * tile; unfold gives views, not copies.
    kw = F.pad(k, (0, 0, before * tile, after * tile + pad)).unfold(2, span, tile)  # [b, n_kv, n, d, W]
    vw = F.pad(v, (0, 0, before * tile, after * tile + pad)).unfold(2, span, tile)  # [b, n_kv, n, e, W]
    qt = F.pad(q, (0, 0, 0, pad)).view(b, n_kv, g, n, tile, d)
    starts = torch.arange(n, device=q.device) * tile
    q_pos = (starts[:, None] + torch.arange(tile, device=q.device))[:, :, None]  # [n, t, 1]
    k_pos = (starts[:, None] - before * tile + torch.arange(span, device=q.device))[:, None, :]  # [n, 1, W]
    allowed = (k_pos >= 0) & (k_pos < s) & allow(q_pos, k_pos)  # [n, t, W] or [b, n, t, W]
    if key_real is not None:
        real = F.pad(key_real.to(torch.uint8), (before * tile, after * tile + pad)).unfold(1, span, tile).bool()  # [b, n, W]
        allowed = allowed & real[:, :, None, :]
    if allowed.dim() == 3:
        allowed = allowed[None]
    allowed = allowed[:, None, None]  # [b|1, 1, 1, n, t, W]
    scores = torch.einsum("bhgntd,bhndw->bhgntw", qt.float(), kw.float()) * scale
    part = partial(scores, allowed, lambda p: torch.einsum("bhgntw,bhnew->bhgnte", p, vw.float()))
    return Partial(part.out.reshape(b, n_kv, g, n * tile, -1)[:, :, :, :s], part.max.reshape(b, n_kv, g, -1)[..., :s],
                   part.sum.reshape(b, n_kv, g, -1)[..., :s])
