"""The registry behind :func:`get_attention`: type name -> layer class (or factory).

Importing this module does not import torch: the built-in types are named by ``module:Class`` and
imported when first built, so reading a config (``train.py --help``, ``--print-config``, a config error)
can check ``model.attention.type`` without loading torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from torch import nn

# Built-in types, imported on first use.
_REGISTRY: dict[str, "Callable[..., nn.Module] | str"] = {
    "mha": ".mha:MultiHeadAttention", "mqa": ".mqa:MultiQueryAttention",
    "gqa": ".gqa:GroupQueryAttention", "mla": ".mla:MultiHeadLatentAttention",
    "differential": ".differential:DifferentialAttention", "linear": ".linear:LinearAttention",
    "sparse": ".sparse:SparseAttention", "neighborhood": ".neighborhood:NeighborhoodAttention",
    "switchhead": ".switchhead:SwitchHeadAttention",
}


def _builder(name: str) -> "Callable[..., nn.Module]":
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = _REGISTRY[name] = getattr(import_module(module, __package__), attr)
    return entry


def attention_class(name: str) -> "Callable[..., nn.Module]":
    """The class (or factory) registered as ``name``, imported if built in: for reading its capabilities (e.g.
    ``supports_cross_attention``) without building a layer."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention type {name!r}; known types: {', '.join(available_attention_types())}")
    return _builder(name)


def register_attention(name: str) -> "Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]":
    """Decorator: make ``get_attention(name, embed_dim, num_heads, **options)`` build this class.

    The class (or factory) is called as ``cls(embed_dim, num_heads, **options)``, where options holds
    ``num_kv_heads`` (if given), ``causal`` and the user's keywords.
    """

    def decorate(builder: "Callable[..., nn.Module]") -> "Callable[..., nn.Module]":
        if name in _REGISTRY and _builder(name) is not builder:
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
) -> "nn.Module":
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
    return _builder(key)(embed_dim, num_heads, **options)
