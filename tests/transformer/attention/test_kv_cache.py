"""Incremental decoding with the KV cache reproduces the full forward; cache sizes match the formulas."""

import pytest
import torch

from transformer.attention import KVCache, get_attention

from .helpers import TYPES, assert_close, make


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("positional", ["rope", "alibi", "relative", "none"])
@pytest.mark.parametrize("attention_type", TYPES)
def test_token_by_token_decode_equals_full_forward(attention_type, positional, window):
    layer = make(attention_type, causal=True, positional=positional, sliding_window=window)
    x = torch.randn(2, 10, 32)
    full = layer(x)
    cache = layer.new_cache(2, 16)
    prefill = layer(x[:, :4], cache=cache)  # a prompt, then one token at a time
    steps = [layer(x[:, t : t + 1], cache=cache) for t in range(4, 10)]
    assert cache.length == 10
    assert_close(torch.cat([prefill, *steps], dim=1), full)


@pytest.mark.parametrize("attention_type", TYPES)
def test_a_cache_in_another_dtype_than_the_compute_decodes(attention_type):
    """FSDP2 under bf16-mixed computes in bf16 while the cache follows the fp32 (sharded) weights: keys and values
    read back are cast to the queries' dtype, and decoding gives the same tokens' outputs as the full pass."""
    layer = make(attention_type, causal=True, positional="rope").to(torch.bfloat16)
    x = torch.randn(2, 6, 32, dtype=torch.bfloat16)
    cache = layer.new_cache(2, 8)  # fp32 buffers
    assert cache.buffers[0].dtype == torch.float32
    prefill = layer(x[:, :3], cache=cache)
    steps = [layer(x[:, t : t + 1], cache=cache) for t in range(3, 6)]
    out = torch.cat([prefill, *steps], dim=1)
    assert out.dtype == torch.bfloat16
    assert (out.float() - layer(x).float()).abs().max() < 5e-2


@pytest.mark.parametrize("attention_type", TYPES)
def test_chunked_decode_with_left_padding(attention_type):
    layer = make(attention_type, causal=True, positional="rope")
    x = torch.randn(2, 9, 32)
    padding = torch.ones(2, 9, dtype=torch.long)
    padding[1, :3] = 0
    full = layer(x, attention_mask=padding)
    cache = layer.new_cache(2, 9)
    first = layer(x[:, :5], cache=cache, attention_mask=padding[:, :5])
    second = layer(x[:, 5:], cache=cache, attention_mask=padding)
    got = torch.cat([first, second], dim=1)
    assert_close(got[0], full[0])
    assert_close(got[1, 3:], full[1, 3:])  # real tokens agree; padded queries are zero in both
    assert (full[1, :3] == 0).all() and (got[1, :3] == 0).all()  # no bias: a query with no key outputs 0


@pytest.mark.parametrize("attention_type", ["gqa", "mla"])
def test_cross_attention_cache_is_filled_once(attention_type):
    layer = make(attention_type)
    memory, x = torch.randn(2, 7, 32), torch.randn(2, 4, 32)
    cache = layer.new_cache(2, 7)
    full = layer(x, memory)
    steps = [layer(x[:, t : t + 1], memory, cache=cache) for t in range(4)]
    assert cache.length == 7
    assert_close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_kv", [8, 2, 1])
def test_gqa_cache_bytes_formula(n_kv, dtype):
    layer = get_attention("gqa", 256, 8, num_groups=n_kv)
    expected = 2 * n_kv * 32 * (4 if dtype == torch.float32 else 2)
    assert layer.kv_cache_bytes_per_token(dtype) == expected
    cache = layer.new_cache(1, 4, dtype=dtype)
    assert cache.bytes_per_token() == expected
    assert cache.buffers[0].shape == (1, n_kv, 4, 32)  # only the key/value heads, never repeated


def test_mla_cache_bytes_formula_and_far_below_mha():
    mla = get_attention("mla", 512, 8, positional="rope", kv_lora_rank=128, rope_head_dim=32)
    assert mla.kv_cache_bytes_per_token(torch.float16) == (128 + 32) * 2
    assert mla.new_cache(1, 4, dtype=torch.float16).bytes_per_token() == (128 + 32) * 2
    mha = get_attention("mha", 512, 8)
    assert mla.kv_cache_bytes_per_token() * 4 < mha.kv_cache_bytes_per_token()


def test_cache_overflow_is_a_clear_error():
    layer = make("gqa", causal=True)
    cache = layer.new_cache(1, 4)
    layer(torch.randn(1, 3, 32), cache=cache)
    with pytest.raises(ValueError, match="max_seq_len=4"):
        layer(torch.randn(1, 2, 32), cache=cache)


def test_cache_reorder_and_reset():
    cache = KVCache(3, 5, [(2, 4), (2, 4)])
    k = torch.arange(3.0)[:, None, None, None].expand(3, 2, 2, 4)
    cache.update(k, k)
    cache.reorder(torch.tensor([2, 0]))
    assert cache.cached()[0][:, 0, 0, 0].tolist() == [2.0, 0.0]
    cache.reset()
    assert cache.length == 0
