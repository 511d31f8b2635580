"""Causality, sliding windows and padding, checked through gradients and invariances for every type."""

import pytest
import torch

from transformer.attention import AttentionMask

from .helpers import POSITIONALS, TYPES, assert_close, make


def _input_gradients(layer, x, t):
    """d out[:, t] / d x: which input positions output position t depends on. [b, s]."""
    x = x.clone().requires_grad_(True)
    layer(x)[:, t].sum().backward()
    return x.grad.abs().sum(-1)


@pytest.mark.parametrize("positional", POSITIONALS)
@pytest.mark.parametrize("attention_type", TYPES)
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_causal_output_never_depends_on_the_future(attention_type, positional, backend):
    layer = make(attention_type, causal=True, positional=positional, backend=backend)
    x = torch.randn(2, 12, 32)
    for t in (0, 5, 11):
        grad = _input_gradients(layer, x, t)
        assert (grad[:, t + 1 :] == 0).all()  # exactly zero, not merely small
        assert (grad[:, : t + 1] > 0).all()


@pytest.mark.parametrize("attention_type", TYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_sliding_window_limits_dependence(attention_type, causal):
    W = 4
    layer = make(attention_type, causal=causal, sliding_window=W, positional="rope")
    x = torch.randn(1, 14, 32)
    t = 9
    grad = _input_gradients(layer, x, t)[0]
    visible = torch.arange(14)
    inside = (t - visible < W) & (visible <= t) if causal else (t - visible).abs() < W
    assert (grad[~inside] == 0).all() and (grad[inside] > 0).all()


@pytest.mark.parametrize("positional", POSITIONALS)
@pytest.mark.parametrize("attention_type", TYPES)
def test_padded_keys_change_nothing_for_real_tokens(attention_type, positional):
    layer = make(attention_type, causal=False, positional=positional)
    real = torch.randn(1, 7, 32)
    padded = torch.cat([real, torch.randn(1, 5, 32) * 100], dim=1)  # right padding with garbage
    padding = torch.tensor([[1] * 7 + [0] * 5])
    assert_close(layer(padded, attention_mask=padding)[:, :7], layer(real))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("attention_type", TYPES)
def test_fully_masked_rows_finite_in_half_precision(attention_type, dtype):
    layer = make(attention_type, causal=True).to(dtype)
    padding = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]])  # left padding; one sample all padding
    out = layer(torch.randn(2, 6, 32, dtype=dtype), attention_mask=padding)
    assert torch.isfinite(out).all()


def test_mask_is_built_once_and_shared():
    mask = AttentionMask.build(6, causal=True, window=3, padding_mask=torch.tensor([[0, 1, 1, 1, 1, 1]]))
    assert mask.dense is mask.dense  # memoised: layers reuse the same tensor
    expected = torch.tensor(
        [[0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]],
        dtype=torch.bool,
    )
    assert torch.equal(mask.dense[0, 0], expected)
    assert mask.rows_with_keys[0, 0, :, 0].tolist() == [False, True, True, True, True, True]
    layers = [make("gqa", causal=True, sliding_window=3, positional="alibi") for _ in range(2)]
    x = torch.randn(1, 6, 32)
    for layer in layers:
        layer(x, attention_mask=mask)
    assert sum(key[0] == "alibi" for key in mask.memo) == 1  # one ALiBi bias for both layers


def test_fast_paths_are_kept():
    """No explicit mask unless something is masked; is_causal for plain causal attention."""
    layer = make("gqa", causal=True)
    layer(torch.randn(2, 8, 32))
    assert layer.last_dispatch == "sdpa:is_causal"
    layer(torch.randn(2, 8, 32), attention_mask=torch.ones(2, 8))  # all-ones padding is no padding
    assert layer.last_dispatch == "sdpa:is_causal"
    make("gqa")(torch.randn(2, 8, 32))
    cache_layer = make("gqa", causal=True)
    cache = cache_layer.new_cache(1, 16)
    cache_layer(torch.randn(1, 5, 32), cache=cache)
    cache_layer(torch.randn(1, 1, 32), cache=cache)  # one query after all cached keys: nothing to mask
    assert cache_layer.last_dispatch == "sdpa:grouped_rows"  # no mask; query heads folded into rows of their kv head
    cache_layer(torch.randn(1, 3, 32), cache=cache)  # a chunk against the cache: bottom-right causal mask
    assert cache_layer.last_dispatch == "sdpa:bool_mask"
