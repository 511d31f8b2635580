"""SwitchHead (Csordas et al. 2023): attention whose value and output projections are mixtures of experts.

Queries and keys are ordinary per-head projections. Each head ``h`` has ``E`` value experts and ``E`` output
experts, each chosen per token by a sigmoid router (sigma-MoE: gates are not normalised across experts)::

    v_h(x_j) = sum_{e in topk(s_h(x_j))} s_h(x_j)_e  x_j W_V[h, e]        s_h = sigmoid(x W_S[h])  (source side)
    y_i      = sum_h sum_{e in topk(d_h(x_i))} d_h(x_i)_e  o_h,i W_O[h, e]  d_h = sigmoid(x W_D[h])  (destination)

with ``o_h = softmax(q_h k_h^T / sqrt(d)) v_h``. So a layer with few heads has the capacity of many, at the
attention-map cost of few. The experts are evaluated as one matmul each way and the gates zero the unchosen ones
(on CPU and at these widths one dense matmul beats gathering per-token expert weights; the paper's CUDA kernel
computes only the chosen experts). The KV cache holds the mixed values, so decoding costs one head's worth.

Load balancing: the Switch Transformer loss ``E * sum_e f_e P_e`` (f: share of the top-k slots, P: mean softmax
of the router logits) averaged over heads and both routers, exposed as ``last_aux_loss`` for the model's
auxiliary loss (weighted by ``model.moe_aux_loss_weight``); 1.0 when balanced.

Shape legend: b batch, s queries, L keys, D embed_dim, h heads, d head width, E experts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import AttentionLayer, Rope
from .config import AttentionConfig, merge_alias
from .kv_cache import CacheBase
from .positional import apply_rotary

DEFAULT_EXPERTS, DEFAULT_TOP_K = 4, 2


class SwitchHeadAttention(AttentionLayer):
    """``SwitchHeadAttention(embed_dim, num_heads, **options)``; options ``switchhead_experts``, ``switchhead_top_k``."""

    attention_type = "switchhead"
    supports_cross_attention = False

    def __init__(self, embed_dim: int, num_heads: int, num_groups: int | None = None, apply_causal_mask: bool = False, **options) -> None:
        merge_alias(options, "num_groups", "num_kv_heads", num_groups, None)
        merge_alias(options, "apply_causal_mask", "causal", apply_causal_mask, False)
        experts, top_k = options.pop("switchhead_experts", None), options.pop("switchhead_top_k", None)
        config = AttentionConfig.from_options(options)
        config.check_family("switchhead", type(self).__name__)
        if config.num_kv_heads not in (None, num_heads):
            raise ValueError(f"SwitchHead keeps one key/value head per query head; num_kv_heads={config.num_kv_heads} does not apply")
        if config.qk_norm:
            raise ValueError("SwitchHead has no qk_norm option")
        super().__init__(embed_dim, num_heads, config)
        self.num_experts = experts or DEFAULT_EXPERTS
        self.top_k = top_k or DEFAULT_TOP_K
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"attention switchhead_top_k={self.top_k} must be between 1 and switchhead_experts={self.num_experts}")
        h, d, E = num_heads, self.head_dim, self.num_experts
        self.qk_proj = nn.Linear(embed_dim, 2 * h * d, bias=config.bias)  # [q | k]
        self.v_experts = nn.Linear(embed_dim, h * E * d, bias=False)  # [h, E, d] value experts
        self.out_experts = nn.Linear(h * E * d, embed_dim, bias=config.bias)  # [h, E, d] -> D output experts
        self.out_proj = self.out_experts  # the residual projection (scaled init, see AttentionLayer.reset_parameters)
        self.source_router = nn.Linear(embed_dim, h * E, bias=False)
        self.dest_router = nn.Linear(embed_dim, h * E, bias=False)
        self.last_aux_loss: Tensor | None = None
        self._make_rotary(d, config.rope_fraction)
        self.reset_parameters()

    def _gates(self, router: nn.Linear, x: Tensor) -> tuple[Tensor, Tensor]:
        """-> sparse sigmoid gates ``[b, s, h, E]`` (zero outside each head's top-k) and the balancing loss."""
        b, s, _ = x.shape
        logits = router(x).view(b, s, self.num_heads, self.num_experts).float()
        gates = torch.sigmoid(logits)
        chosen = gates.topk(self.top_k, dim=-1).indices
        picked = torch.zeros_like(gates).scatter_(-1, chosen, 1.0)
        share = picked.mean(dim=(0, 1)) / self.top_k  # [h, E]: f_e, sums to 1 per head
        prob = logits.softmax(-1).mean(dim=(0, 1))  # [h, E]: P_e
        aux = self.num_experts * (share * prob).sum(-1).mean()
        return (gates * picked).to(x.dtype), aux

    def project(self, x: Tensor, memory: Tensor | None, rope: Rope | None, cache: CacheBase | None) -> tuple[Tensor, Tensor, Tensor]:
        if memory is not None:
            raise ValueError("SwitchHead attention has no cross-attention")
        b, s, _ = x.shape
        h, d, E = self.num_heads, self.head_dim, self.num_experts
        q, k = self.qk_proj(x).view(b, s, 2 * h, d).split([h, h], dim=2)  # [b, s, h, d]
        if rope is not None:
            rope = tuple(t[:, None] if t.dim() == 2 else t.transpose(1, 2) for t in rope)
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        gates, aux_v = self._gates(self.source_router, x)
        v = (self.v_experts(x).view(b, s, h, E, d) * gates[..., None]).sum(3)  # [b, s, h, d]
        self._dest_gates, aux_o = self._gates(self.dest_router, x)  # used by merge_heads for the same tokens
        self.last_aux_loss = (aux_v + aux_o) / 2
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, h, s, d]
        if cache is not None:
            k, v = cache.update(k, v)
        return q, k, v

    def merge_heads(self, output: Tensor, cache: CacheBase | None) -> Tensor:
        """``[b, h, s, d]`` -> ``[b, s, D]``: each head's output through its chosen output experts, summed."""
        b, h, s, d = output.shape
        gates, self._dest_gates = self._dest_gates, None
        mixed = output.transpose(1, 2)[:, :, :, None, :] * gates[..., None]  # [b, s, h, E, d]
        return self.out_experts(mixed.reshape(b, s, h * self.num_experts * d))

    def cache_streams(self) -> list[tuple[int, int]]:
        return [(self.num_heads, self.head_dim)] * 2

    def kv_cache_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        return 2 * self.num_heads * self.head_dim * torch.empty((), dtype=dtype).element_size()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", experts={self.num_experts}, top_k={self.top_k}"

