"""Grouped-query attention: THE implementation behind MHA, MQA and GQA (Ainslie et al. 2023).

::

    MHA (n_kv = h)            GQA (1 < n_kv < h)          MQA (n_kv = 1)
    q: |1|2|3|4|5|6|7|8|      q: |1|2|3|4|5|6|7|8|        q: |1|2|3|4|5|6|7|8|
        | | | | | | | |           \\ /   \\ /  \\ /  \\ /           \\ \\ \\ | / / / /
    k: |1|2|3|4|5|6|7|8|      k:  | 1 | 2 | 3 | 4 |        k:        | 1 |
    v: |1|2|3|4|5|6|7|8|      v:  | 1 | 2 | 3 | 4 |        v:        | 1 |

Query head ``i`` uses key/value head ``i // (h / n_kv)``. Queries, keys and values come from one
fused projection (one matmul for self-attention); for cross-attention the same weight is sliced,
queries from ``x`` and keys/values from ``memory``. Only the ``n_kv`` key/value heads are ever
stored or cached; backends broadcast them over their group.

Shape legend: b batch, s query length, m memory length, L keys after the cache, D embed_dim,
h num_heads, n_kv num_kv_heads, d head_dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fused_ops import RMSNorm, is_plain_linear
from .base import AttentionLayer, Rope
from .config import AttentionConfig, merge_alias
from .kv_cache import CacheBase
from .positional import apply_rotary, rotary_qkv


class GroupQueryAttention(AttentionLayer):
    """``GroupQueryAttention(embed_dim, num_heads, num_groups, apply_causal_mask=False, **options)``.

    ``num_groups`` (the original design's name) is the number of key/value heads, also accepted as
    ``num_kv_heads``; ``apply_causal_mask`` is an alias of ``causal``. Every other keyword is an
    :class:`~transformer.attention.config.AttentionConfig` field.
    """

    attention_type = "gqa"

    def __init__(self, embed_dim: int, num_heads: int, num_groups: int | None = None, apply_causal_mask: bool = False, **options) -> None:
        merge_alias(options, "num_groups", "num_kv_heads", num_groups, None)
        merge_alias(options, "apply_causal_mask", "causal", apply_causal_mask, False)
        config = AttentionConfig.from_options(options)
        config.check_family("gqa", type(self).__name__)
        super().__init__(embed_dim, num_heads, config)
        h, n_kv, d = self.num_heads, self.num_kv_heads, self.head_dim
        self.q_size, self.kv_size = h * d, n_kv * d
        qkv_bias = config.bias if config.qkv_bias is None else config.qkv_bias
        self.qkv_proj = nn.Linear(embed_dim, self.q_size + 2 * self.kv_size, bias=qkv_bias)  # [q | k | v]
        self.out_proj = nn.Linear(h * d, embed_dim, bias=config.bias)
        self.q_norm = RMSNorm(d, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(d, eps=config.norm_eps) if config.qk_norm else None
        self._make_rotary(d, config.rope_fraction)
        self.reset_parameters()

    def project(self, x: Tensor, memory: Tensor | None, rope: Rope | None, cache: CacheBase | None) -> tuple[Tensor, Tensor, Tensor]:
        if memory is not None:
            return self._project_cross(x, memory, cache)
        b, s, _ = x.shape
        h, n_kv, d = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv_proj(x).view(b, s, h + 2 * n_kv, d)  # heads [q... | k... | v...]
        if rope is not None:  # [s, 1, r] | [b, s, 1, r]: broadcast over heads in [b, s, heads, d] layout
            rope = tuple(t[:, None] if t.dim() == 2 else t.transpose(1, 2) for t in rope)
        if rope is not None and self.q_norm is None:
            q, k, v = rotary_qkv(qkv, *rope, h, n_kv)  # split and rotation in one autograd node
        else:
            # split, not slicing: a slice's backward writes zeros into a full-size gradient, split's is one cat
            q, k, v = qkv.split([h, n_kv, n_kv], dim=2)  # [b, s, heads, d]
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [b, h, s, d], [b, n_kv, s, d]
        v = v.transpose(1, 2)  # [b, n_kv, s, d]
        if cache is not None:
            k, v = cache.update(k, v)  # [b, n_kv, L, d]
        return q, k, v

    def _project_cross(self, x: Tensor, memory: Tensor, cache: CacheBase | None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries from ``x``, keys/values from ``memory`` through slices of the same fused weight."""
        b, s, _ = x.shape
        n_kv, d = self.num_kv_heads, self.head_dim
        if not is_plain_linear(self.qkv_proj):  # adapted: run the whole module, keep the rows needed
            q_rows = lambda t: self.qkv_proj(t)[..., : self.q_size]
            kv_rows = lambda t: self.qkv_proj(t)[..., self.q_size :]
        else:
            weight, bias = self.qkv_proj.weight, self.qkv_proj.bias
            q_rows = lambda t: F.linear(t, weight[: self.q_size], None if bias is None else bias[: self.q_size])
            kv_rows = lambda t: F.linear(t, weight[self.q_size :], None if bias is None else bias[self.q_size :])
        q = self._shape_query(q_rows(x), b, s)
        if cache is not None and cache.length > 0:  # memory keys/values were cached on the first step
            k, v = cache.cached()
            return q, k, v
        kv = kv_rows(memory)
        k, v = kv.view(b, -1, 2 * n_kv, d).transpose(1, 2).split([n_kv, n_kv], dim=1)  # [b, n_kv, m, d] each
        if self.k_norm is not None:
            k = self.k_norm(k)
        if cache is not None:
            k, v = cache.update(k, v)
        return q, k, v

    def _shape_query(self, q: Tensor, b: int, s: int) -> Tensor:
        q = q.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)  # [b, h, s, d]
        return q if self.q_norm is None else self.q_norm(q)

    def cache_streams(self) -> list[tuple[int, int]]:
        """Keys and values of the ``n_kv`` heads only (never the repeated ones): ``2 * n_kv * d`` numbers per token."""
        return [(self.num_kv_heads, self.head_dim)] * 2

    def kv_cache_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        return 2 * self.num_kv_heads * self.head_dim * torch.empty((), dtype=dtype).element_size()
