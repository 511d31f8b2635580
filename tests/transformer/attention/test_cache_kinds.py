"""Paged and quantized KV caches: paged equals contiguous, quantized stays within its error bound, and the
bytes each reports equal the formulas."""

import math

import pytest
import torch

from transformer.attention.cache_kinds import new_kv_cache
from transformer.attention.paged_cache import PagedKVCache
from transformer.attention.quantized_cache import QuantizedKVCache
from transformer.config import ModelConfig
from transformer.generation import generate, prefill
from transformer.transformer_model import build_model

from .helpers import TYPES, assert_close, make


def _left_padded(lengths, total, vocab=97):
    ids = torch.randint(1, vocab, (len(lengths), total))
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, total - n :] = 1
    return ids.masked_fill(mask == 0, 0), mask


def _lm(attention_type, **attention):
    att = {"type": attention_type, "positional": "rope", **attention}
    if attention_type == "gqa":
        att.setdefault("num_kv_heads", 2)
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="lm", vocab_size=97, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=96,
                                   pad_token_id=0, attention=att)).eval()


@pytest.mark.parametrize("attention_type", TYPES)
def test_paged_equals_contiguous_for_mixed_lengths(attention_type):
    model = _lm(attention_type, sliding_window=24)
    ids, mask = _left_padded([40, 3, 17, 29], 40)
    with torch.no_grad():
        logits = {}
        for kind in ("contiguous", "paged"):
            starts = (mask == 0).sum(1)
            caches = model.new_caches(4, 60, kind=kind, row_starts=starts, **({"block_size": 8} if kind == "paged" else {}))
            steps = [prefill(model, ids, caches, mask, chunk=16)]
            full = mask
            for t in range(12):
                full = torch.cat([full, torch.ones(4, 1, dtype=torch.long)], dim=1)
                steps.append(model(ids[:, t : t + 1], attention_mask=full, caches=caches, num_logits=1).logits[:, -1])
            logits[kind] = torch.stack(steps)
            if kind == "paged":
                paged = caches[0].self_attn
        assert_close(logits["paged"], logits["contiguous"], atol=1e-6, rtol=1e-6)
    # rows hold 52, 15, 29, 41 real tokens -> ceil over their own blocks of 8, nothing for padding
    assert paged.used_bytes() == (52 + 15 + 29 + 41) * paged.bytes_per_token()
    first = [(40 - n) // 8 for n in (40, 3, 17, 29)]
    blocks = sum(51 // 8 - f + 1 for f in first)
    assert paged.allocated_bytes() == blocks * 8 * paged.bytes_per_token()
    contiguous_bytes = 4 * 60 * paged.bytes_per_token()
    assert paged.allocated_bytes() < 0.8 * contiguous_bytes and paged.reserved_bytes() >= paged.allocated_bytes()
    assert torch.equal(generate(model, ids, 10, temperature=0, attention_mask=mask, cache="paged", cache_options={"block_size": 4}),
                       generate(model, ids, 10, temperature=0, attention_mask=mask))


def test_paged_reorder_frees_blocks_and_keeps_rows():
    cache = PagedKVCache(3, 20, [(1, 2)], block_size=4, row_starts=[0, 5, 0])
    x = torch.arange(3 * 10 * 2, dtype=torch.float32).view(3, 1, 10, 2)
    cache.update(x)
    assert int((cache.block_table >= 0).sum()) == 3 + 2 + 3  # row 1 stores positions 5..9 only: blocks 1, 2
    (out,) = cache.cached()
    assert torch.equal(out[0], x[0]) and (out[1, :, :5] == 0).all() and torch.equal(out[1, :, 5:], x[1, :, 5:])
    cache.reorder(torch.tensor([2, 1]))
    assert len(cache.free) == cache.capacity - 5 and torch.equal(cache.cached()[0][0], x[2])


def _outlier_keys(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    x[..., 3] *= 20  # an outlier channel, as real keys have
    return x


@pytest.mark.parametrize("bits", [8, 4])
def test_quantization_error_is_within_the_stated_bound(bits):
    cache = QuantizedKVCache(2, 64, [(2, 64)], bits=bits, group_size=32, residual=0)
    x = _outlier_keys((2, 2, 50, 64))
    (got,) = cache.update(x)
    groups = x.unflatten(-1, (2, 32))
    spread = groups.abs().amax(-1) * 2 if bits == 8 else groups.amax(-1) - groups.amin(-1)
    step = spread / (254 if bits == 8 else 15)  # the quantization step of each group
    bound = step / 2 + groups.abs().amax(-1) * 2**-10  # half a step, plus fp16 rounding of scale and minimum
    err = (got - x).abs().unflatten(-1, (2, 32)).amax(-1)
    assert (err <= bound).all()
    assert (err > 0).any()  # it really is quantized


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_bytes_follow_the_formula_and_residual_stays_exact(bits):
    n, w, g = 2, 64, 32
    cache = QuantizedKVCache(1, 40, [(n, w), (n, w)], bits=bits, group_size=g, residual=8)
    per_stream = n * (w * bits // 8 + (w // g) * 2 * (1 if bits == 8 else 2))
    assert cache.bytes_per_token() == 2 * per_stream
    assert per_stream == n * w * (1.0625 if bits == 8 else 0.625)
    x = _outlier_keys((1, n, 30, w))
    for t in range(0, 30, 7):  # chunks of 7: tokens leave the exact window a few at a time
        k, v = cache.update(x[:, :, t : t + 7], -x[:, :, t : t + 7])
    assert cache.length == 30 and cache.quantized == 22
    assert torch.equal(k[:, :, 22:], x[:, :, 22:]) and torch.equal(v[:, :, 22:], -x[:, :, 22:])  # newest 8 exact
    assert not torch.equal(k[:, :, :22], x[:, :, :22])
    cache.reorder(torch.tensor([0]))
    cache.reset()
    assert cache.length == 0 and cache.cached()[0].shape == (1, n, 0, w)


@pytest.mark.parametrize("attention_type", TYPES)
@pytest.mark.parametrize("kind, tolerance", [("int8", 0.02), ("int4", 0.25)])
def test_quantized_decode_stays_close_to_exact(attention_type, kind, tolerance):
    layer = make(attention_type, causal=True, positional="rope")
    x = torch.randn(2, 40, 32)
    want = layer(x)
    cache = layer.new_cache(2, 40, kind=kind, residual=4, group_size=8)
    got = torch.cat([layer(x[:, :24], cache=cache)] + [layer(x[:, t : t + 1], cache=cache) for t in range(24, 40)], dim=1)
    rel = (got - want).norm() / want.norm()
    assert 0 < rel < tolerance


def test_bad_cache_kind_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown KV cache kind 'int3'.*contiguous, paged, int8, int4"):
        new_kv_cache("int3", 1, 4, [(1, 8)])
    with pytest.raises(ValueError, match="'int8' takes no option block_size"):
        new_kv_cache("int8", 1, 4, [(1, 8)], block_size=4)
    with pytest.raises(ValueError, match="bits"):
        QuantizedKVCache(1, 4, [(1, 8)], bits=3)
    with pytest.raises(ValueError, match="even"):
        new_kv_cache("int4", 1, 4, [(1, 7)])
    with pytest.raises(ValueError, match="use_cache"):
        generate(_lm("gqa"), torch.ones(1, 3, dtype=torch.long), 2, cache="int8", use_cache=False)
    assert math.isclose(QuantizedKVCache(1, 4, [(1, 8)], group_size=32).groups[0], 8)  # w not a multiple: one group
