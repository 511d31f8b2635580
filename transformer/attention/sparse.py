"""Sparse attention: top-k (each query keeps its k largest scores) and Child et al. (2019)'s fixed patterns.

- ``topk``: the scores are computed densely, all but the ``sparse_top_k`` largest per query are masked, and the
  softmax runs over those (Zhao et al. 2019's explicit sparse transformer; cost is that of dense attention, the
  point is selectivity).
- ``strided`` (causal): query i sees ``j`` with ``i - l < j <= i`` (the local band) or ``(i - j) mod l = 0``
  (the stride column), ``l = sparse_stride``: ``l + s / l`` keys per query.
- ``fixed`` (causal): query i sees keys of its own block of ``l`` (``j // l = i // l``) and the last
  ``c = sparse_summary`` keys of every block (``j mod l >= l - c``): ``l + c * s / l`` keys per query.

For a full sequence the strided / fixed patterns run block-sparse (``block_sparse.py``: the band in tiles of l,
the column or the summaries in their own layout, merged by log-sum-exp), so their cost follows their density.
With a KV cache (decoding, chunked prefill) the same pattern is a boolean mask over the cached keys.

Shape legend: b batch, h heads, n_kv key/value heads, g = h / n_kv, s queries, L keys, d head width.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .block_sparse import Partial, band, merge, partial
from .config import AttentionConfig
from .gqa import GroupQueryAttention
from .masks import AttentionMask
from .sdpa import AttentionResult

DEFAULT_TOP_K, DEFAULT_STRIDE, DEFAULT_SUMMARY = 32, 32, 1


class SparseAttention(GroupQueryAttention):
    """``SparseAttention(embed_dim, num_heads, num_groups=None, **options)``; options ``sparse_pattern``
    (``topk`` | ``strided`` | ``fixed``), ``sparse_top_k``, ``sparse_stride``, ``sparse_summary``."""

    attention_type = "sparse"
    supports_cross_attention = False

    def __init__(self, embed_dim: int, num_heads: int, num_groups: int | None = None, apply_causal_mask: bool = False, **options) -> None:
        own = {name: options.pop(name, None) for name in ("sparse_pattern", "sparse_top_k", "sparse_stride", "sparse_summary")}
        probe = AttentionConfig.from_options(dict(options, **{k: v for k, v in own.items() if v is not None}))
        probe.check_family("sparse", type(self).__name__)
        super().__init__(embed_dim, num_heads, num_groups, apply_causal_mask, **options)
        self.pattern = own["sparse_pattern"] or "topk"
        self.top_k = own["sparse_top_k"] or DEFAULT_TOP_K
        self.stride = own["sparse_stride"] or DEFAULT_STRIDE
        self.summary = own["sparse_summary"] or DEFAULT_SUMMARY
        if self.pattern != "topk":
            if not self.causal:
                raise ValueError(f"sparse_pattern={self.pattern!r} is causal (Child et al. 2019); use 'topk' or attention type "
                                 f"'neighborhood' for a bidirectional layer")
            if self.config.positional in ("alibi", "relative") or self.sliding_window is not None:
                raise ValueError(f"sparse_pattern={self.pattern!r} takes positional 'none' or 'rope' and no sliding_window "
                                 f"(got positional={self.config.positional!r}, sliding_window={self.sliding_window})")
            if self.pattern == "fixed" and not self.summary <= self.stride:
                raise ValueError(f"attention sparse_summary={self.summary} must be <= sparse_stride={self.stride} (summary keys per block)")

    # ------------------------------------------------------------------ the pattern as a predicate
    def allows(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Strided / fixed: whether query position ``q_pos`` may see key position ``k_pos`` (causal included)."""
        l = self.stride
        if self.pattern == "strided":
            seen = (q_pos - k_pos < l) | ((q_pos - k_pos) % l == 0)
        else:
            seen = (q_pos // l == k_pos // l) | (k_pos % l >= l - self.summary)
        return seen & (k_pos <= q_pos)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask | None, bias: Tensor | None, *,
               need_weights: bool = False) -> AttentionResult:
        s, L = q.shape[2], k.shape[2]
        if self.pattern == "topk":
            return self._top_k(q, k, v, mask, bias, need_weights)
        full = s == L and (mask is None or mask.q_offset == 0) and (mask is None or mask.documents is None)
        if full and not need_weights and not (self.training and self.config.dropout):
            return AttentionResult(self._block_sparse(q, k, v, None if mask is None else mask.key_padding), None,
                                   f"sparse:{self.pattern}:blocks")
        offset = L - s if mask is None else mask.q_offset
        q_pos = torch.arange(offset, offset + s, device=q.device)[:, None]
        pattern = self.allows(q_pos, torch.arange(L, device=q.device)[None, :])[None, None]  # [1, 1, s, L]
        base = mask if mask is not None else AttentionMask.build(s, L, causal=True, device=q.device)
        result = super().attend(q, k, v, base.with_pattern(pattern), bias, need_weights=need_weights)
        return result._replace(dispatch=f"sparse:{self.pattern}:{result.dispatch}")

    # ------------------------------------------------------------------ top-k
    def _top_k(self, q, k, v, mask, bias, need_weights) -> AttentionResult:
        """Dense scores; all but each query's ``top_k`` largest allowed scores masked before the softmax."""
        b, h, s, d = q.shape
        n_kv, L = k.shape[1], k.shape[2]
        g = h // n_kv
        scores = torch.einsum("bngsd,bnld->bngsl", q.float().view(b, n_kv, g, s, d), k.float()) * self.scale
        scores = scores.reshape(b, h, s, L)
        if bias is not None:
            scores = scores + bias.float()
        allowed = None if mask is None else mask.kernel_mask
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        keep = min(self.top_k, L)
        chosen = scores.topk(keep, dim=-1).indices
        kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, chosen, True)
        weights = torch.softmax(scores.masked_fill(~kept, float("-inf")), dim=-1)
        if mask is not None and mask.rows_with_keys is not None:
            weights = weights * mask.rows_with_keys
        weights = torch.nan_to_num(weights, nan=0.0)
        if self.training and self.config.dropout:
            weights = torch.nn.functional.dropout(weights, p=self.config.dropout)
        out = torch.einsum("bngsl,bnle->bngse", weights.view(b, n_kv, g, s, L), v.float()).reshape(b, h, s, -1)
        return AttentionResult(out.to(q.dtype), weights.to(q.dtype) if need_weights else None, "sparse:topk")

    # ------------------------------------------------------------------ block-sparse strided / fixed
    def _block_sparse(self, q: Tensor, k: Tensor, v: Tensor, key_real: Tensor | None) -> Tensor:
        """``[b, h, s, d]`` queries over their own keys (``s`` = ``L``) -> ``[b, h, s, e]``."""
        b, h, s, d = q.shape
        n_kv, l = k.shape[1], self.stride
        g = h // n_kv
        qg = q.view(b, n_kv, g, s, d)
        tiles = torch.arange(-(-s // l), device=q.device)[None] * l  # [1, n]: first query of each tile of l
        if self.pattern == "strided":  # band: i - l < j <= i, i.e. the 2l - 1 keys ending at the tile's last query
            local = band(qg, k, v, tile=l, starts=tiles - (l - 1), span=2 * l - 1, scale=self.scale, key_real=key_real,
                         allow=lambda i, j: (j <= i) & (i - j < l))
            other = self._columns(qg, k, v, key_real)
        else:  # band: the query's own block, causal
            local = band(qg, k, v, tile=l, starts=tiles, span=l, scale=self.scale, key_real=key_real, allow=lambda i, j: j <= i)
            other = self._summaries(qg, k, v, key_real)
        return merge([local, other]).reshape(b, h, s, -1).to(q.dtype)

    def _rows(self, x: Tensor, s: int) -> Tensor:
        """``[..., s, w]`` -> ``[..., n, l, w]`` (row t, residue r), zero-padded to whole rows."""
        pad = -s % self.stride
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return x.view(*x.shape[:-2], -1, self.stride, x.shape[-1])

    def _key_rows(self, key_real: Tensor | None, s: int, device) -> Tensor:
        """``[b|1, n, l]`` bool: key (row t, residue r) exists and is not padding."""
        n = -(-s // self.stride)
        exists = (torch.arange(n * self.stride, device=device) < s).view(1, n, self.stride)
        if key_real is not None:
            exists = exists & torch.nn.functional.pad(key_real, (0, n * self.stride - s), value=False).view(-1, n, self.stride)
        return exists

    def _columns(self, q: Tensor, k: Tensor, v: Tensor, key_real: Tensor | None) -> Partial:
        """Strided part: query (t, r) sees keys (u, r) with u < t, i.e. ``j = i - m l`` for ``m >= 1``."""
        s = q.shape[3]
        qr, kr, vr = self._rows(q.float(), s), self._rows(k.float(), s), self._rows(v.float(), s)  # [.., n, l, w]
        n = kr.shape[2]
        scores = torch.einsum("bhgtrd,bhurd->bhgtru", qr, kr) * self.scale  # [b, n_kv, g, n, l, n]
        earlier = torch.arange(n, device=q.device)
        allowed = (earlier[None, :] < earlier[:, None])[:, None, :]  # [t, 1, u]
        allowed = allowed & self._key_rows(key_real, s, q.device).transpose(1, 2)[:, None, :, :]  # [b, t, r, u]
        part = partial(scores, allowed[:, None, None], lambda p: torch.einsum("bhgtru,bhure->bhgtre", p, vr))
        return _flatten(part, s)

    def _summaries(self, q: Tensor, k: Tensor, v: Tensor, key_real: Tensor | None) -> Partial:
        """Fixed part: query in block t sees the last ``c`` keys of every block u < t."""
        s, c = q.shape[3], self.summary
        qr = self._rows(q.float(), s)  # [b, n_kv, g, n, l, d]
        ks, vs = self._rows(k.float(), s)[..., -c:, :], self._rows(v.float(), s)[..., -c:, :]  # [b, n_kv, n, c, w]
        n = ks.shape[2]
        scores = torch.einsum("bhgtrd,bhucd->bhgtruc", qr, ks) * self.scale  # [b, n_kv, g, n, l, n, c]
        blocks = torch.arange(n, device=q.device)
        allowed = (blocks[None, :] < blocks[:, None])[:, None, :, None]  # [t, 1, u, 1]
        allowed = allowed & self._key_rows(key_real, s, q.device)[:, None, None, :, -c:]  # [b, t, r, u, c]
        scores = scores.flatten(-2)
        allowed = allowed.expand(-1, n, self.stride, n, c).flatten(-2)
        part = partial(scores, allowed[:, None, None], lambda p: torch.einsum("bhgtrx,bhxe->bhgtre", p, vs.flatten(2, 3)))
        return _flatten(part, s)

    # ------------------------------------------------------------------ reports
    def keys_per_query(self, seq_len: int) -> float:
        """Keys a query scores at a context of ``seq_len`` (topk scores all of them)."""
        if self.pattern == "topk":
            return seq_len
        l = self.stride
        return min(seq_len, l + (seq_len / l if self.pattern == "strided" else self.summary * seq_len / l))

    def attention_flops_per_token(self, seq_len: int) -> float:
        return 2.0 * self.num_heads * 2 * self.head_dim * self.keys_per_query(seq_len)

    def extra_repr(self) -> str:
        detail = f"top_k={self.top_k}" if self.pattern == "topk" else f"stride={self.stride}" + (
            f", summary={self.summary}" if self.pattern == "fixed" else "")
        return super().extra_repr() + f", pattern={self.pattern}, {detail}"


def _flatten(part: Partial, s: int) -> Partial:
    """A Partial in row layout ``[b, n_kv, g, n, l, ...]`` -> query layout ``[b, n_kv, g, s, ...]``."""
    b, n_kv, g = part.out.shape[:3]
    return Partial(part.out.reshape(b, n_kv, g, -1, part.out.shape[-1])[:, :, :, :s],
                   part.max.reshape(b, n_kv, g, -1)[..., :s], part.sum.reshape(b, n_kv, g, -1)[..., :s])
