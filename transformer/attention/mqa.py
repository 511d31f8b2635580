"""Multi-query attention (Shazeer 2019): grouped-query attention with a single key/value head."""

from __future__ import annotations

from .config import merge_alias, pin_kv_heads
from .gqa import GroupQueryAttention


class MultiQueryAttention(GroupQueryAttention):
    """``MultiQueryAttention(embed_dim, num_heads, apply_causal_mask=False, **options)``: ``num_kv_heads = 1``."""

    attention_type = "mqa"

    def __init__(self, embed_dim: int, num_heads: int, apply_causal_mask: bool = False, **options) -> None:
        pin_kv_heads(options, 1, "MultiQueryAttention")
        merge_alias(options, "apply_causal_mask", "causal", apply_causal_mask, False)
        super().__init__(embed_dim, num_heads, **options)
