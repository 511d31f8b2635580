"""The attention library: one factory, :func:`get_attention`, over a registry of layer types.

>>> layer = get_attention("gqa", 512, 8, num_groups=2, apply_causal_mask=True, positional="rope")
>>> layer(torch.randn(4, 128, 512)).shape          # [batch, seq, embed_dim] -> same
torch.Size([4, 128, 512])

Built-in types: ``mha``, ``mqa``, ``gqa`` (one implementation, :mod:`.gqa`) and ``mla``. Add your own
with :func:`register_attention`; every option is documented on
:class:`~transformer.attention.config.AttentionConfig`.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .base import AttentionLayer
from .config import AttentionConfig
from .gqa import GroupQueryAttention
from .kv_cache import KVCache
from .masks import AttentionMask
from .mha import MultiHeadAttention
from .mla import MultiHeadLatentAttention
from .mqa import MultiQueryAttention
from .positional import ALiBi, RelativePositionBias, RotaryEmbedding, alibi_slopes, apply_rotary, sinusoidal_table
from .sdpa import ATTENTION_BACKENDS, scaled_dot_product_attention

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_attention(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``get_attention(name, embed_dim, num_heads, **options)`` build this class.

    The class (or factory) is called as ``cls(embed_dim, num_heads, **options)``, where options holds
    ``num_kv_heads`` (if given), ``causal`` and the user's keywords.
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"attention type {name!r} is already registered to {_REGISTRY[name]!r}")
        _REGISTRY[name] = builder
        return builder

    return decorate


def available_attention_types() -> list[str]:
    return sorted(_REGISTRY)


def get_attention(
    attention_type: str,
    embed_dim: int,
    num_heads: int,
    num_groups: int | None = None,
    apply_causal_mask: bool = False,
    **options,
) -> nn.Module:
    """Build an attention layer ``[b, s, embed_dim] -> [b, s, embed_dim]`` by registered type name.

    ``num_groups`` is the number of key/value heads (alias ``num_kv_heads``); ``apply_causal_mask``
    is an alias of ``causal``. Unknown types raise ``ValueError`` listing the known ones.
    """
    key = str(attention_type).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown attention type {attention_type!r}; known types: {', '.join(available_attention_types())}")
    if num_groups is not None:
        if options.get("num_kv_heads") not in (None, num_groups):
            raise ValueError(f"num_groups={num_groups} conflicts with num_kv_heads={options['num_kv_heads']}; pass only one")
        options["num_kv_heads"] = num_groups
    if apply_causal_mask:
        if options.get("causal") is False:
            raise ValueError("apply_causal_mask=True conflicts with causal=False; pass only one")
        options["causal"] = True
    return _REGISTRY[key](embed_dim, num_heads, **options)


register_attention("mha")(MultiHeadAttention)
register_attention("mqa")(MultiQueryAttention)
register_attention("gqa")(GroupQueryAttention)
register_attention("mla")(MultiHeadLatentAttention)

__all__ = [
    "ALiBi", "ATTENTION_BACKENDS", "AttentionConfig", "AttentionLayer", "AttentionMask", "GroupQueryAttention", "KVCache",
    "MultiHeadAttention", "MultiHeadLatentAttention", "MultiQueryAttention", "RelativePositionBias", "RotaryEmbedding",
    "alibi_slopes", "apply_rotary", "available_attention_types", "get_attention", "register_attention",
    "scaled_dot_product_attention", "sinusoidal_table",
]
