"""The attention library: one factory, :func:`get_attention`, over a registry of layer types.

>>> layer = get_attention("gqa", 512, 8, num_groups=2, apply_causal_mask=True, positional="rope")
>>> layer(torch.randn(4, 128, 512)).shape          # [batch, seq, embed_dim] -> same
torch.Size([4, 128, 512])

Built-in types: ``mha``, ``mqa``, ``gqa`` (one implementation, :mod:`.gqa`) and ``mla``. Add your own
with :func:`register_attention`; every option is documented on
:class:`~transformer.attention.config.AttentionConfig`.

Names are imported on first use (as in ``transformer.data``), so the registry and the option schema
(``transformer.attention.config``) load without torch.
"""

from importlib import import_module

_EXPORTS = {
    "AttentionLayer": ".base", "AttentionConfig": ".config", "GroupQueryAttention": ".gqa", "KVCache": ".kv_cache",
    "CACHE_KINDS": ".cache_kinds", "new_kv_cache": ".cache_kinds", "PagedKVCache": ".paged_cache",
    "QuantizedKVCache": ".quantized_cache", "AttentionMask": ".masks", "MultiHeadAttention": ".mha", "MultiHeadLatentAttention": ".mla", "MultiQueryAttention": ".mqa",
    "ALiBi": ".positional", "RelativePositionBias": ".positional", "RotaryEmbedding": ".positional",
    "alibi_slopes": ".positional", "apply_rotary": ".positional", "sinusoidal_table": ".positional",
    "ATTENTION_BACKENDS": ".sdpa", "scaled_dot_product_attention": ".sdpa",
    "available_attention_types": ".registry", "get_attention": ".registry", "register_attention": ".registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
