"""Differential attention (Ye et al. 2024, "Differential Transformer"): the difference of two softmax maps.

Each head has two query/key halves of width ``d`` and one value of width ``2d``::

    A1 = softmax(q1 k1^T / sqrt(d)),  A2 = softmax(q2 k2^T / sqrt(d))
    head = RMSNorm((A1 - lambda * A2) v) * (1 - lambda_init)
    lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init,  lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1))

with ``l`` the 1-based depth (``layer_index + 1``) and ``lq*``/``lk*`` learned vectors of width ``d``. The
subtraction cancels attention noise common to both maps. Because ``(A1 - lambda A2) v = A1 v - lambda A2 v``,
each map runs through the ordinary backend (fused kernels, masks, KV cache and all) and the outputs are
combined; the weights are only formed with ``need_weights``.

The projections are grouped-query attention's with a head width of ``2d``: queries ``[q1 | q2]``, keys
``[k1 | k2]`` per key/value head, values ``2d`` (so ``head_dim`` here is the half width, default
``embed_dim / (2 * num_heads)``, which keeps the parameter count of MHA). With grouped K/V heads, query head
``i`` uses both key halves of key/value head ``i // (h / n_kv)``. RoPE rotates each half on its own.

Shape legend: b batch, s queries, L keys, h heads, n_kv key/value heads, d half width.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from ..fused_ops import RMSNorm
from .base import Rope
from .config import AttentionConfig, merge_alias
from .gqa import GroupQueryAttention
from .kv_cache import CacheBase
from .masks import AttentionMask
from .positional import apply_rotary
from .sdpa import AttentionResult


def lambda_init_for(layer_index: int) -> float:
    """The paper's depth schedule, ``0.8 - 0.6 * exp(-0.3 * (l - 1))`` with ``l = layer_index + 1``."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


class DifferentialAttention(GroupQueryAttention):
    """``DifferentialAttention(embed_dim, num_heads, num_groups=None, **options)``; option ``diff_lambda_init``
    (default: the depth schedule from ``layer_index``)."""

    attention_type = "differential"

    def __init__(self, embed_dim: int, num_heads: int, num_groups: int | None = None, apply_causal_mask: bool = False, **options) -> None:
        merge_alias(options, "num_groups", "num_kv_heads", num_groups, None)
        merge_alias(options, "apply_causal_mask", "causal", apply_causal_mask, False)
        lambda_init = options.pop("diff_lambda_init", None)
        config = AttentionConfig.from_options(options)
        config.check_family("differential", type(self).__name__)
        if config.qk_norm:
            raise ValueError("differential attention normalises each head's output (its sub-layer RMSNorm); qk_norm does not apply")
        half = config.head_dim
        if half is None:
            if embed_dim % (2 * num_heads):
                raise ValueError(f"differential attention: embed_dim={embed_dim} is not divisible by 2 * num_heads={2 * num_heads}; "
                                 f"pass head_dim (the width of each query/key half)")
            half = embed_dim // (2 * num_heads)
        options["head_dim"] = 2 * half  # the grouped-query projections at head width 2d
        super().__init__(embed_dim, num_heads, **options)
        self.config = dataclasses.replace(config, head_dim=half, diff_lambda_init=lambda_init)
        self.half_dim = half
        self.lambda_init = lambda_init_for(config.layer_index) if lambda_init is None else float(lambda_init)
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (nn.Parameter(torch.zeros(half)) for _ in range(4))
        self.sub_norm = RMSNorm(2 * half, eps=config.norm_eps)
        self.rotary = None
        self._make_rotary(half, config.rope_fraction)  # each half rotated on its own
        self.reset_parameters()

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.half_dim)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "lambda_q1"):  # the paper's reference code: normal(0, 0.1)
            for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
                nn.init.normal_(p, 0.0, 0.1)

    def lambda_full(self) -> Tensor:
        """The scalar lambda of this layer (shared by its heads)."""
        return (torch.exp((self.lambda_q1 * self.lambda_k1).sum().float()) - torch.exp((self.lambda_q2 * self.lambda_k2).sum().float())
                + self.lambda_init)

    def project(self, x: Tensor, memory: Tensor | None, rope: Rope | None, cache: CacheBase | None) -> tuple[Tensor, Tensor, Tensor]:
        if memory is not None or rope is None:
            return super().project(x, memory, None, cache)
        b, s, _ = x.shape
        h, n_kv, d = self.num_heads, self.num_kv_heads, self.half_dim
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        rope = tuple(t[:, None] if t.dim() == 2 else t.transpose(1, 2) for t in rope)  # [s, 1, r] | [b, s, 1, r]
        q = apply_rotary(q.view(b, s, 2 * h, d), *rope).view(b, s, h, 2 * d).transpose(1, 2)  # [b, h, s, 2d]
        k = apply_rotary(k.view(b, s, 2 * n_kv, d), *rope).view(b, s, n_kv, 2 * d).transpose(1, 2)  # [b, n_kv, s, 2d]
        v = v.view(b, s, n_kv, 2 * d).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask | None, bias: Tensor | None, *,
               need_weights: bool = False) -> AttentionResult:
        d = self.half_dim
        (q1, q2), (k1, k2) = q.split(d, dim=-1), k.split(d, dim=-1)  # [b, h|n_kv, ., d] each
        one = self._run_kernel(q1, k1, v, mask, bias, need_weights=need_weights)
        two = self._run_kernel(q2, k2, v, mask, bias, need_weights=need_weights)
        lam = self.lambda_full().to(q.dtype)
        out = self.sub_norm(one.output - lam * two.output) * (1.0 - self.lambda_init)  # [b, h, s, 2d]
        weights = one.weights - lam * two.weights if need_weights else None
        return AttentionResult(out, weights, f"differential:{one.dispatch}")

    def attention_flops_per_token(self, seq_len: int) -> float:
        """Two score maps of width d and two weighted sums of width 2d per head."""
        keys = seq_len if not self.sliding_window else min(seq_len, self.sliding_window)
        return 2.0 * self.num_heads * (2 * self.half_dim + 4 * self.half_dim) * keys

    def extra_repr(self) -> str:
        return super().extra_repr().replace(f"head_dim={self.head_dim}", f"head_dim={self.half_dim}") + f", lambda_init={self.lambda_init:.4f}"

