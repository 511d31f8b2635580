"""One grouped-query implementation: parity with torch.nn.MultiheadAttention, MHA/GQA/MQA equivalences,
parameter formulas, the factory and its errors."""

import pytest
import torch
from torch import nn

from transformer.attention import (
    GroupQueryAttention,
    MultiHeadAttention,
    MultiQueryAttention,
    available_attention_types,
    get_attention,
    register_attention,
)
from transformer.attention_utils import get_attention as get_attention_seed_path

from .helpers import TYPES, assert_close, make


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_mha_matches_torch_multihead_attention(causal, backend):
    D, H, S = 32, 4, 11
    ref = nn.MultiheadAttention(D, H, bias=True, batch_first=True).eval()
    ours = MultiHeadAttention(D, H, apply_causal_mask=causal, bias=True, backend=backend).eval()
    ours.qkv_proj.weight.data.copy_(ref.in_proj_weight)  # same [q; k; v] layout
    ours.qkv_proj.bias.data.copy_(ref.in_proj_bias)
    ours.out_proj.load_state_dict(ref.out_proj.state_dict())
    x = torch.randn(3, S, D)
    padding = torch.ones(3, S, dtype=torch.bool)
    padding[1, -4:] = False  # right padding
    causal_mask = torch.triu(torch.ones(S, S, dtype=torch.bool), 1) if causal else None
    expected, _ = ref(x, x, x, key_padding_mask=~padding, attn_mask=causal_mask, need_weights=False)
    assert_close(ours(x, attention_mask=padding), expected)
    expected_cross, _ = ref(x, x[:, :5], x[:, :5], need_weights=False)
    assert_close(ours(x, x[:, :5]), expected_cross)  # cross-attention: same weights, memory as source


def _mha_with_shared_kv(grouped: GroupQueryAttention) -> MultiHeadAttention:
    """An MHA whose K/V projection rows are the grouped layer's, copied to every head of each group."""
    D, H, n_kv, d = grouped.embed_dim, grouped.num_heads, grouped.num_kv_heads, grouped.head_dim
    mha = MultiHeadAttention(D, H, causal=grouped.causal, positional=grouped.config.positional).eval()
    q_w, k_w, v_w = grouped.qkv_proj.weight.split([H * d, n_kv * d, n_kv * d])
    repeat = lambda w: w.view(n_kv, d, D).repeat_interleave(H // n_kv, dim=0).reshape(H * d, D)
    mha.qkv_proj.weight.data.copy_(torch.cat([q_w, repeat(k_w), repeat(v_w)]))
    mha.out_proj.load_state_dict(grouped.out_proj.state_dict())
    return mha


@pytest.mark.parametrize("positional", ["none", "rope", "alibi"])
@pytest.mark.parametrize("layer_cls,n_kv", [(GroupQueryAttention, 2), (GroupQueryAttention, 4), (MultiQueryAttention, 1)])
def test_grouped_equals_mha_with_copied_kv_heads(layer_cls, n_kv, positional):
    kwargs = {"num_groups": n_kv} if layer_cls is GroupQueryAttention else {}
    grouped = layer_cls(64, 8, apply_causal_mask=True, positional=positional, **kwargs).eval()
    assert grouped.num_kv_heads == n_kv
    mha = _mha_with_shared_kv(grouped)
    x = torch.randn(2, 13, 64)
    assert_close(grouped(x), mha(x))


@pytest.mark.parametrize("D,H,G", [(64, 8, 8), (64, 8, 2), (64, 8, 1), (96, 12, 4)])
def test_parameter_counts_match_formulas(D, H, G):
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(get_attention("gqa", D, H, num_groups=G)) == 2 * D * D + 2 * D * (G * D // H)
    assert count(get_attention("mha", D, H)) == 4 * D * D
    assert count(get_attention("mqa", D, H)) == 2 * D * D + 2 * D * D // H


def test_factory_paths_types_and_attributes():
    assert get_attention_seed_path is get_attention
    assert {"mha", "mqa", "gqa", "mla"} <= set(available_attention_types())
    for attention_type in TYPES:
        layer = make(attention_type, causal=True)
        assert layer(torch.randn(2, 5, 32)).shape == (2, 5, 32)
        assert (layer.num_heads, layer.head_dim) == (4, 8)
        assert layer.kv_cache_bytes_per_token(torch.float16) > 0
    assert make("gqa").num_kv_heads == 2 and make("mqa").num_kv_heads == 1 and make("mha").num_kv_heads == 4
    assert get_attention("gqa", 32, 4, num_groups=2, apply_causal_mask=True).causal
    layer = get_attention("gqa", 32, 4, num_kv_heads=2, head_dim=16)  # head_dim independent of embed_dim
    assert layer(torch.randn(1, 3, 32)).shape == (1, 3, 32) and layer.qkv_proj.out_features == 4 * 16 + 2 * 2 * 16


def test_register_custom_attention_type():
    @register_attention("test-local-mha")
    def local_mha(embed_dim, num_heads, **options):
        return MultiHeadAttention(embed_dim, num_heads, sliding_window=2, **options)

    layer = get_attention("test-local-mha", 16, 2, apply_causal_mask=True)
    assert layer.sliding_window == 2 and layer.causal
    with pytest.raises(ValueError, match="already registered"):
        register_attention("mha")(local_mha)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: get_attention("flash", 32, 4), r"unknown attention type 'flash'; known types: .*gqa.*mha"),
        (lambda: get_attention("gqa", 32, 8, num_groups=3), r"num_heads=8 is not divisible by num_kv_heads=3"),
        (lambda: get_attention("mha", 30, 4), r"embed_dim=30 is not divisible by num_heads=4"),
        (lambda: get_attention("mha", 32, 4, positional="sinusoid"), r"positional='sinusoid' is not one of"),
        (lambda: get_attention("mha", 32, 4, backend="triton"), r"backend='triton' is not one of"),
        (lambda: get_attention("mha", 20, 4, positional="rope"), r"even head_dim, got head_dim=5"),
        (lambda: get_attention("mha", 32, 4, num_groups=2), r"num_kv_heads=4 by definition; got num_kv_heads=2"),
        (lambda: get_attention("mqa", 32, 4, num_kv_heads=2), r"num_kv_heads=1 by definition"),
        (lambda: get_attention("mha", 32, 4, slidng_window=3), r"unknown attention option slidng_window; did you mean sliding_window\?"),
        (lambda: get_attention("gqa", 32, 4, num_groups=2, num_kv_heads=4), r"num_groups=2 conflicts with num_kv_heads=4"),
        (lambda: get_attention("gqa", 32, 4, kv_lora_rank=8), r"kv_lora_rank is for attention type 'mla'"),
        (lambda: get_attention("mla", 32, 4, num_kv_heads=2), r"num_kv_heads=2 does not apply"),
        (lambda: get_attention("mha", 32, 4, dropout=1.5), r"dropout=1.5"),
        (lambda: get_attention("mha", 32, 4, rope_scaling="yarn", positional="rope"), r"rope_scaling='yarn'"),
    ],
)
def test_bad_arguments_name_the_values(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_bad_input_and_mask_shapes():
    layer = make("gqa", causal=True)
    with pytest.raises(ValueError, match=r"\[batch, seq, 32\]"):
        layer(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"padding mask has shape \(2, 4\); expected \[batch, 5\]"):
        layer(torch.randn(2, 5, 32), attention_mask=torch.ones(2, 4))


def test_initialisation_scales_output_projection_with_depth():
    layer = get_attention("mha", 256, 8, num_layers=12, bias=True)
    assert abs(layer.qkv_proj.weight.std().item() - 0.02) < 1e-3
    assert abs(layer.out_proj.weight.std().item() - 0.02 / 24**0.5) < 5e-4
    assert (layer.qkv_proj.bias == 0).all()


def test_dropout_only_in_training():
    layer = make("mha", dropout=0.5)
    x = torch.randn(2, 6, 32)
    assert torch.equal(layer(x), layer(x))  # eval: deterministic
    layer.train()
    assert not torch.equal(layer(x), layer(x))
