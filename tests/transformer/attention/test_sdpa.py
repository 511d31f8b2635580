"""The seed-compatible kernel and the backends against torch's reference implementation."""

import pytest
import torch
import torch.nn.functional as F

from transformer.attention import AttentionMask, scaled_dot_product_attention
from transformer.attention.sdpa import ATTENTION_BACKENDS, eager_attention, sdpa_attention

from .helpers import POSITIONALS, assert_close, make


def test_seed_function_matches_torch_with_inverted_mask():
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    mask = torch.triu(torch.ones(7, 7), diagonal=1).bool()  # the original example: True = may NOT attend
    ours = scaled_dot_product_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask)
    assert_close(ours, ref)
    assert_close(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_seed_function_random_mask_and_weights():
    q, k, v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 3)
    mask = torch.rand(2, 1, 5, 6) > 0.6
    mask[..., 0] = False  # every row keeps a key so torch's reference is defined
    out, weights = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=~mask))
    assert_close(weights.sum(-1), torch.ones(2, 2, 5))
    assert (weights.masked_select(mask.expand_as(weights)) == 0).all()


def test_seed_function_rejects_bad_masks():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="boolean"):
        scaled_dot_product_attention(q, q, q, torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        scaled_dot_product_attention(q, q, q, torch.zeros(3, 4, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_fully_masked_rows_are_zero_not_nan(dtype, backend):
    q, k, v = (torch.randn(2, 4, 5, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    padding = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 1, 1, 1]])  # sample 0: nothing to attend to
    mask = AttentionMask.build(5, padding_mask=padding, causal=True)
    out = ATTENTION_BACKENDS[backend](q, k, v, mask, None, scale=0.35).output
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[1, :, :2] == 0).all()  # left-padded queries see no real key
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.isfinite(scaled_dot_product_attention(q, k, v, torch.ones(5, 5, dtype=torch.bool))).all()


def _random_case(h=4, n_kv=2, s=9, padded=True):
    q = torch.randn(2, h, s, 8)
    k, v = torch.randn(2, n_kv, s, 8), torch.randn(2, n_kv, s, 8)
    padding = torch.ones(2, s, dtype=torch.long)
    if padded:
        padding[1, :3] = 0
    return q, k, v, padding


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_sdpa_backend_agrees_with_eager(causal, window, padded, with_bias):
    q, k, v, padding = _random_case(padded=padded)
    mask = AttentionMask.build(9, causal=causal, window=window, padding_mask=padding)
    bias = torch.randn(1, 4, 9, 9) if with_bias else None
    ref = eager_attention(q, k, v, mask, bias, scale=0.3).output
    result = sdpa_attention(q, k, v, mask, bias, scale=0.3)
    assert_close(result.output, ref)
    if with_bias:
        assert result.dispatch == "sdpa:float_bias"
    elif causal and window is None and not padded:
        assert result.dispatch == "sdpa:is_causal"  # fused causal path, no materialised mask
    elif not (causal or window or padded):
        assert result.dispatch == "sdpa:no_mask"


def test_eager_weights_and_sdpa_refuses_weights():
    q, k, v, _ = _random_case(padded=False)
    result = eager_attention(q, k, v, None, None, scale=0.3, need_weights=True)
    assert result.weights.shape == (2, 4, 9, 9)
    with pytest.raises(ValueError, match="eager"):
        sdpa_attention(q, k, v, None, None, scale=0.3, need_weights=True)


@pytest.mark.parametrize("positional", POSITIONALS)
@pytest.mark.parametrize("attention_type", ["gqa", "mla"])
def test_layer_backends_agree(attention_type, positional):
    torch.manual_seed(1)
    ref_layer = make(attention_type, causal=True, sliding_window=4, positional=positional, backend="eager")
    layer = make(attention_type, causal=True, sliding_window=4, positional=positional, backend="sdpa")
    layer.load_state_dict(ref_layer.state_dict())
    x = torch.randn(2, 10, 32)
    padding = torch.ones(2, 10, dtype=torch.long)
    padding[0, :2] = 0
    assert_close(layer(x, attention_mask=padding), ref_layer(x, attention_mask=padding))


def _flex_case(positional, compiled):
    from transformer.attention import sdpa as sdpa_module

    torch.manual_seed(2)
    ref = make("gqa", embed_dim=64, num_heads=4, causal=True, sliding_window=40, positional=positional, backend="eager")
    flex = make("gqa", embed_dim=64, num_heads=4, causal=True, sliding_window=40, positional=positional, backend="flex")
    flex.load_state_dict(ref.state_dict())
    x = torch.randn(2, 128, 64)
    padding = torch.ones(2, 128, dtype=torch.long)
    padding[1, :17] = 0
    if not compiled:  # the uncompiled reference path of FlexAttention: same maths, no 20 s compile
        from torch.nn.attention.flex_attention import flex_attention

        saved, sdpa_module._compiled_flex = sdpa_module._compiled_flex, flex_attention
    try:
        with torch.no_grad():  # FlexAttention has no CPU backward
            out = flex(x, attention_mask=padding)
    finally:
        if not compiled:
            sdpa_module._compiled_flex = saved
    assert flex.last_dispatch == "flex:compiled"
    with torch.no_grad():
        assert_close(out, ref(x, attention_mask=padding), atol=2e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("positional", ["none", "alibi", "relative"])
def test_flex_backend_agrees_with_eager(positional):
    _flex_case(positional, compiled=False)


def test_flex_backend_compiled_agrees_with_eager():  # ~12 s: compiles the real fused kernel
    _flex_case("alibi", compiled=True)


def test_flex_on_cpu_with_grad_names_the_alternative():
    layer = make("gqa", causal=True, backend="flex")
    with pytest.raises(ValueError, match="backend='sdpa'"):
        layer(torch.randn(1, 8, 32))


@pytest.mark.parametrize("d_v", [4, 12])
def test_sdpa_pads_unequal_value_width_and_agrees(d_v):
    q, k, v = torch.randn(2, 4, 9, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, d_v)
    mask = AttentionMask.build(9, causal=True)
    result = sdpa_attention(q, k, v, mask, None, scale=0.3)
    assert result.dispatch == "sdpa:is_causal+pad" and result.output.shape == (2, 4, 9, d_v)
    assert_close(result.output, eager_attention(q, k, v, mask, None, scale=0.3).output)
