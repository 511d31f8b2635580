"""Small shared helpers for the attention tests."""

import torch

from transformer.attention import get_attention

TYPES = ("mha", "mqa", "gqa", "mla")
POSITIONALS = ("none", "rope", "alibi", "relative")


def make(attention_type, embed_dim=32, num_heads=4, **options):
    """A layer of any type; GQA gets 2 key/value heads unless told otherwise."""
    if attention_type == "gqa":
        options.setdefault("num_kv_heads", 2)
    layer = get_attention(attention_type, embed_dim, num_heads, **options)
    return layer.eval()


def assert_close(actual, expected, atol=1e-5, rtol=1e-4):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)
