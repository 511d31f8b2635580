"""MLA's absorbed decode (attention over the cached latent) equals the expanding path; the one-query grouped
fold in the sdpa backend equals the eager reference."""

import pytest
import torch
from torch import nn

from transformer.attention import get_attention
from transformer.attention.masks import AttentionMask
from transformer.attention.sdpa import eager_attention, sdpa_attention

from .helpers import POSITIONALS, assert_close, make


def _pair(positional, **options):
    """Two MLA layers with the same weights: one always absorbs with a cache, one never does."""
    torch.manual_seed(0)
    absorbed = make("mla", causal=True, positional=positional, mla_absorb="always", **options)
    expanded = make("mla", causal=True, positional=positional, mla_absorb="never", **options)
    expanded.load_state_dict(absorbed.state_dict())
    return absorbed, expanded


def _decode(layer, x, padding, prompt):
    """Prefill ``prompt`` tokens, then one token per step: outputs ``[b, s, D]``."""
    cache = layer.new_cache(x.shape[0], x.shape[1])
    outs = [layer(x[:, :prompt], cache=cache, attention_mask=None if padding is None else padding[:, :prompt])]
    for t in range(prompt, x.shape[1]):
        outs.append(layer(x[:, t : t + 1], cache=cache, attention_mask=None if padding is None else padding[:, : t + 1]))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("q_lora_rank", [None, 16])
@pytest.mark.parametrize("positional", POSITIONALS)
def test_absorbed_decode_equals_expanded(positional, q_lora_rank):
    absorbed, expanded = _pair(positional, q_lora_rank=q_lora_rank, sliding_window=5)
    x = torch.randn(2, 11, 32)
    padding = torch.ones(2, 11, dtype=torch.long)
    padding[1, :3] = 0  # left padding in the second prompt
    got, want = _decode(absorbed, x, padding, 4), _decode(expanded, x, padding, 4)
    assert absorbed.last_dispatch.startswith("sdpa:") and absorbed.absorbs(1, absorbed.new_cache(1, 1))
    assert_close(got, want)
    assert_close(got[0], expanded(x, attention_mask=padding)[0])  # and both equal the full forward


def test_absorbed_cross_attention_equals_expanded():
    torch.manual_seed(0)
    absorbed, expanded = (make("mla", mla_absorb=mode) for mode in ("always", "never"))
    expanded.load_state_dict(absorbed.state_dict())
    memory, x = torch.randn(2, 7, 32), torch.randn(2, 4, 32)
    outs = {}
    for name, layer in (("absorbed", absorbed), ("expanded", expanded)):
        cache = layer.new_cache(2, 7)
        outs[name] = torch.cat([layer(x[:, t : t + 1], memory, cache=cache) for t in range(4)], dim=1)
    assert_close(outs["absorbed"], outs["expanded"])
    assert_close(outs["absorbed"], expanded(x, memory))


def test_default_absorbs_short_queries_with_a_cache_only():
    layer = make("mla", causal=True, kv_lora_rank=64, head_dim=8)  # r=64, d=d_v=8: absorb below 64*16/112 ≈ 9.1
    cache = layer.new_cache(1, 32)
    assert layer.absorb_below == pytest.approx(64 * 16 / 112)
    assert layer.absorbs(1, cache) and layer.absorbs(9, cache) and not layer.absorbs(10, cache)
    assert not layer.absorbs(1, None)  # training and plain forwards always expand
    assert not make("mla", mla_absorb="never").absorbs(1, cache)
    small = make("mla", kv_lora_rank=8, head_dim=8)  # 2r <= d + d_v: attending over the latent never pays
    assert small.absorb_below == float("inf") and small.absorbs(1000, small.new_cache(1, 4))


def test_wrapped_up_projection_is_expanded():
    """An adapter around ``kv_up`` (not one dense matrix) takes the expanding path, with the same result."""
    torch.manual_seed(0)
    layer = make("mla", causal=True)
    x = torch.randn(1, 6, 32)
    want = _decode(layer, x, None, 3)

    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            return self.inner(t)

    layer.kv_up = Wrapped(layer.kv_up)
    assert not layer.absorbs(1, layer.new_cache(1, 4))
    assert_close(_decode(layer, x, None, 3), want)


def test_mla_absorb_is_validated():
    with pytest.raises(ValueError, match="mla_absorb"):
        get_attention("mla", 32, 4, mla_absorb="sometimes")
    with pytest.raises((ValueError, TypeError), match="mla_absorb"):
        get_attention("gqa", 32, 4, num_kv_heads=2, mla_absorb="always")


@pytest.mark.parametrize("n_kv", [1, 2])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_one_query_grouped_fold_equals_eager(n_kv, with_bias, padded):
    """A decode step with grouped heads folds query heads into rows of their key/value head."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, n_kv, 9, 8), torch.randn(2, n_kv, 9, 8)
    padding = torch.ones(2, 9, dtype=torch.long)
    if padded:
        padding[1, :3] = 0
    mask = AttentionMask.build(1, kv_len=9, causal=True, window=6, padding_mask=padding)
    bias = torch.randn(1, 4, 1, 9) if with_bias else None
    result = sdpa_attention(q, k, v, mask, bias, scale=0.3)
    assert result.dispatch.startswith("sdpa:grouped_rows")
    assert_close(result.output, eager_attention(q, k, v, mask, bias, scale=0.3).output)
    everything_padded = AttentionMask.build(1, kv_len=9, padding_mask=torch.zeros(2, 9, dtype=torch.long))
    assert (sdpa_attention(q, k, v, everything_padded, bias, scale=0.3).output == 0).all()  # no key: zero, not NaN
