"""1-D neighbourhood attention (Hassani et al. 2023, "Neighborhood Attention Transformer"; NATTEN).

Each query attends to exactly ``w = neighborhood_size`` keys: the window centred on it, **shifted inward at the
sequence edges** instead of cut off (a sliding window of the same size sees only ``w/2 + 1`` keys at the first
position; a neighbourhood sees ``w``)::

    start(i) = clamp(i - w // 2, 0, n - w),  keys start(i) .. start(i) + w - 1     (n: the row's real length)

so every position gets the same amount of context. The causal variant (NATTEN's ``is_causal``) sees the query and
the ``w - 1`` keys before it, clamped at the start, which is a causal sliding window of ``w``; it runs through the
standard window mask, and its KV cache is the rolling window cache.

A full bidirectional sequence runs banded (``block_sparse.banded_sdpa``: each tile of t queries, t from
``band_tile(w)``, scores the ``w + t - 1`` keys its windows span, in one fused softmax-attention call), so cost
is ``O(n w)``. Right padding counts: ``n`` is each row's real length, so the window shifts inward at the real
end too.

Shape legend: b batch, h heads, n_kv key/value heads, g = h / n_kv, s sequence, d head width.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .block_sparse import band_tile, banded_sdpa
from .config import AttentionConfig
from .gqa import GroupQueryAttention
from .masks import AttentionMask
from .sdpa import AttentionResult


def neighborhood_start(i: Tensor, size: int, length: Tensor) -> Tensor:
    """First key of query ``i``'s window of ``size`` keys in a sequence of ``length`` (broadcasting)."""
    return (i - size // 2).clamp(min=0).minimum((length - size).clamp(min=0))


class NeighborhoodAttention(GroupQueryAttention):
    """``NeighborhoodAttention(embed_dim, num_heads, num_groups=None, **options)``; option ``neighborhood_size``
    (the kernel size ``w``, required)."""

    attention_type = "neighborhood"
    supports_cross_attention = False

    def __init__(self, embed_dim: int, num_heads: int, num_groups: int | None = None, apply_causal_mask: bool = False, **options) -> None:
        size = options.pop("neighborhood_size", None)
        probe = AttentionConfig.from_options(dict(options))
        probe.check_family("neighborhood", type(self).__name__)
        if size is None:
            raise ValueError("attention type 'neighborhood' needs neighborhood_size (keys per query, e.g. 7)")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"attention neighborhood_size={size!r} must be a positive integer")
        if probe.sliding_window is not None:
            raise ValueError("neighborhood attention sizes its window with neighborhood_size; remove sliding_window")
        if probe.positional in ("alibi", "relative"):
            raise ValueError(f"neighborhood attention takes positional 'none' or 'rope' (got {probe.positional!r})")
        causal = bool(options.get("causal")) or apply_causal_mask
        if causal:  # the causal neighbourhood is exactly a causal sliding window of the same size
            options["sliding_window"] = size
        super().__init__(embed_dim, num_heads, num_groups, apply_causal_mask, **options)
        self.size = size

    def allowed(self, q_pos: Tensor, k_pos: Tensor, length: Tensor) -> Tensor:
        """Bidirectional: key ``k_pos`` is inside query ``q_pos``'s window (rows of real ``length``)."""
        start = neighborhood_start(q_pos, self.size, length)
        return (k_pos >= start) & (k_pos < start + self.size)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask | None, bias: Tensor | None, *,
               need_weights: bool = False) -> AttentionResult:
        if self.causal:
            result = super().attend(q, k, v, mask, bias, need_weights=need_weights)
            return result._replace(dispatch=f"neighborhood:causal:{result.dispatch}")
        b, h, s, d = q.shape
        L = k.shape[2]
        padding = None if mask is None else mask.key_padding  # [b, L]
        length = (padding.sum(-1) if padding is not None else torch.full((1,), L, device=q.device))  # [b|1]
        if s == L and not need_weights and not (self.training and self.config.dropout) and (mask is None or mask.documents is None):
            # Window starts never decrease along the sequence, so a tile of t queries needs the w + t - 1 keys from
            # its first query's start: (w + t - 1) scores per query instead of s.
            tile = band_tile(self.size)
            firsts = torch.arange(-(-s // tile), device=q.device)[None] * tile  # [1, n]
            starts = neighborhood_start(firsts, self.size, length[:, None])  # [b|1, n]
            with self.kernel_choice(q, mask):
                out = banded_sdpa(q, k, v, tile=tile, starts=starts, span=self.size + tile - 1, scale=self.scale, key_real=padding,
                                  allow=lambda i, j: self.allowed(i, j, length.view(-1, 1, 1, 1)))
            return AttentionResult(out, None, "neighborhood:banded")
        q_pos = torch.arange(s, device=q.device)[:, None]
        pattern = self.allowed(q_pos[None], torch.arange(L, device=q.device)[None, None, :], length.view(-1, 1, 1))
        base = mask if mask is not None else AttentionMask.build(s, L, device=q.device)
        result = super().attend(q, k, v, base.with_pattern(pattern[:, None]), bias, need_weights=need_weights)
        return result._replace(dispatch=f"neighborhood:{result.dispatch}")

    def attention_flops_per_token(self, seq_len: int) -> float:
        return 2.0 * self.num_heads * 2 * self.head_dim * min(seq_len, self.size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", neighborhood_size={self.size}"
