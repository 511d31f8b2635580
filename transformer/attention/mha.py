"""Multi-head attention (Vaswani et al. 2017): grouped-query attention with one key/value head per query head."""

from __future__ import annotations

from .config import merge_alias, pin_kv_heads
from .gqa import GroupQueryAttention


class MultiHeadAttention(GroupQueryAttention):
    """``MultiHeadAttention(embed_dim, num_heads, apply_causal_mask=False, **options)``: ``num_kv_heads = num_heads``."""

    attention_type = "mha"

    def __init__(self, embed_dim: int, num_heads: int, apply_causal_mask: bool = False, **options) -> None:
        pin_kv_heads(options, num_heads, "MultiHeadAttention")
        merge_alias(options, "apply_causal_mask", "causal", apply_causal_mask, False)
        super().__init__(embed_dim, num_heads, **options)

