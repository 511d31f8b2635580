"""The attention catalog against dense references written here from each paper's equations.

Every reference below recomputes the layer from its own weights with explicit loops or full ``[s, s]`` matrices,
sharing no code with the implementation (no backend, no mask object, no block-sparse helper), and compares the
output and the input gradient in fp32.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from transformer.attention import get_attention
from transformer.attention.differential import lambda_init_for

from .helpers import assert_close

D, H = 32, 4


def rope_ref(x, positions, theta=10000.0):
    """Rotate-half RoPE on the last dim of ``x`` [..., s, d] at integer ``positions`` [s]."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = positions.double()[:, None] * inv
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1).float(), torch.cat([ang.sin(), ang.sin()], -1).float()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def softmax_rows(scores, allowed):
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)


def check(layer, reference, x, **kwargs):
    """Forward and input-gradient equality of ``layer`` and ``reference`` (a function of x)."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = layer(x1, **kwargs), reference(x2)
    assert_close(out, ref)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    assert_close(x1.grad, x2.grad)


def heads(t, n):  # [b, s, n*d] -> [b, n, s, d]
    b, s, _ = t.shape
    return t.view(b, s, n, -1).transpose(1, 2)


# ---------------------------------------------------------------------------------------------- differential
@pytest.mark.parametrize("positional", ["none", "rope"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_differential_matches_the_papers_equations(positional, kv_heads):
    torch.manual_seed(0)
    layer = get_attention("differential", D, H, num_kv_heads=kv_heads, causal=True, positional=positional, layer_index=3).eval()
    d = D // (2 * H)
    assert layer.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.3 * 3))
    x = torch.randn(2, 9, D)

    def reference(x):
        b, s, _ = x.shape
        w = layer.qkv_proj.weight
        q = (x @ w[: H * 2 * d].T).view(b, s, H, 2, d)
        k = (x @ w[H * 2 * d : H * 2 * d + kv_heads * 2 * d].T).view(b, s, kv_heads, 2, d)
        v = (x @ w[H * 2 * d + kv_heads * 2 * d :].T).view(b, s, kv_heads, 2 * d)
        lam = (torch.exp((layer.lambda_q1 * layer.lambda_k1).sum()) - torch.exp((layer.lambda_q2 * layer.lambda_k2).sum())
               + layer.lambda_init)
        causal = torch.ones(s, s, dtype=torch.bool).tril()
        pos = torch.arange(s)
        outs = []
        for i in range(H):
            j = i // (H // kv_heads)
            qi, ki = q[:, :, i].transpose(1, 2), k[:, :, j].transpose(1, 2)  # [b, 2, s, d]
            if positional == "rope":
                qi, ki = rope_ref(qi, pos), rope_ref(ki, pos)
            a1 = softmax_rows(qi[:, 0] @ ki[:, 0].transpose(-1, -2) / math.sqrt(d), causal)
            a2 = softmax_rows(qi[:, 1] @ ki[:, 1].transpose(-1, -2) / math.sqrt(d), causal)
            head = (a1 - lam * a2) @ v[:, :, j]  # [b, s, 2d]
            head = head * torch.rsqrt(head.pow(2).mean(-1, keepdim=True) + layer.sub_norm.eps) * layer.sub_norm.weight
            outs.append(head * (1 - layer.lambda_init))
        return torch.cat(outs, -1) @ layer.out_proj.weight.T

    check(layer, reference, x)


def test_differential_lambda_schedule_and_weights():
    assert lambda_init_for(0) == pytest.approx(0.2)
    layer = get_attention("differential", D, H, causal=True, backend="eager", layer_index=0).eval()
    x = torch.randn(1, 6, D)
    out, weights = layer(x, need_weights=True)
    assert weights.shape == (1, H, 6, 6)
    assert torch.allclose(weights.sum(-1), (1 - layer.lambda_full()).expand(1, H, 6), atol=1e-5)  # rows of A1 - lam A2
    assert get_attention("differential", D, H, diff_lambda_init=0.5).lambda_init == 0.5


# ---------------------------------------------------------------------------------------------- linear
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("chunk", [4, 64])
def test_causal_linear_attention_matches_the_quadratic_form(decay, chunk):
    torch.manual_seed(1)
    kv = 2
    layer = get_attention("linear", D, H, num_kv_heads=kv, causal=True, linear_decay=decay, linear_chunk=chunk).eval()
    d = D // H
    x = torch.randn(2, 11, D)

    def reference(x):
        b, s, _ = x.shape
        w = layer.qkv_proj.weight
        q = F.elu(heads(x @ w[: H * d].T, H)) + 1
        k = F.elu(heads(x @ w[H * d : H * d + kv * d].T, kv)) + 1
        v = heads(x @ w[H * d + kv * d :].T, kv)
        i, j = torch.arange(s)[:, None], torch.arange(s)[None, :]
        outs = []
        for hd in range(H):
            g = hd // (H // kv)
            gamma = 1 - 2.0 ** (-5 - g) if decay else 1.0
            weight = torch.where(j <= i, torch.tensor(gamma).pow((i - j).clamp(min=0).float()), torch.zeros(()))  # [s, s]
            a = (q[:, hd] @ k[:, g].transpose(-1, -2)) * weight
            outs.append((a @ v[:, g]) / (a.sum(-1, keepdim=True) + 1e-6))
        return torch.cat(outs, -1) @ layer.out_proj.weight.T

    check(layer, reference, x)


def test_bidirectional_linear_attention_and_its_errors():
    layer = get_attention("linear", D, H).eval()
    x = torch.randn(1, 7, D)
    w = layer.qkv_proj.weight
    q, k, v = (heads(x @ w[i * D : (i + 1) * D].T, H) for i in range(3))
    q, k = F.elu(q) + 1, F.elu(k) + 1
    a = q @ k.transpose(-1, -2)
    ref = (a @ v / (a.sum(-1, keepdim=True) + 1e-6)).transpose(1, 2).reshape(1, 7, D) @ layer.out_proj.weight.T
    assert_close(layer(x), ref)
    with pytest.raises(ValueError, match="positional='none'"):
        get_attention("linear", D, H, positional="rope")
    with pytest.raises(ValueError, match="linear_decay needs a causal"):
        get_attention("linear", D, H, linear_decay=True)


def test_linear_recurrent_equals_chunked_and_state_is_constant():
    layer = get_attention("linear", D, H, causal=True, linear_decay=True, linear_chunk=4).eval()
    x = torch.randn(2, 13, D)
    state = layer.new_cache(2, 64)
    steps = torch.cat([layer(x[:, t : t + 1], cache=state) for t in range(13)], 1)
    assert layer.last_dispatch == "linear:recurrent"
    assert_close(steps, layer(x))
    d = D // H
    assert state.allocated_bytes() == 2 * H * d * (d + 1) * 4 == 2 * layer.kv_cache_bytes(1) == 2 * layer.kv_cache_bytes(10_000)
    assert layer.kv_cache_bytes_per_token() == 0


# ---------------------------------------------------------------------------------------------- sparse
def dense_gqa(layer, x, allowed, kv, positional="none"):
    """Softmax attention with an explicit ``[s, s]`` (or ``[b, 1, s, s]``) allowed matrix, from the fused weight."""
    b, s, _ = x.shape
    d = layer.head_dim
    w = layer.qkv_proj.weight
    q, k, v = heads(x @ w[: H * d].T, H), heads(x @ w[H * d : H * d + kv * d].T, kv), heads(x @ w[H * d + kv * d :].T, kv)
    if positional == "rope":
        q, k = rope_ref(q, torch.arange(s)), rope_ref(k, torch.arange(s))
    k, v = k.repeat_interleave(H // kv, 1), v.repeat_interleave(H // kv, 1)
    a = softmax_rows(q @ k.transpose(-1, -2) / math.sqrt(d), allowed)
    return (a @ v).transpose(1, 2).reshape(b, s, H * d) @ layer.out_proj.weight.T


@pytest.mark.parametrize("pattern", ["strided", "fixed"])
@pytest.mark.parametrize("s", [16, 19])
def test_strided_and_fixed_patterns_match_child_et_al(pattern, s):
    torch.manual_seed(2)
    l, c = 4, 2
    layer = get_attention("sparse", D, H, num_kv_heads=2, causal=True, positional="rope", sparse_pattern=pattern,
                          sparse_stride=l, sparse_summary=c).eval()
    i, j = torch.arange(s)[:, None], torch.arange(s)[None, :]
    if pattern == "strided":
        allowed = (j <= i) & ((i - j < l) | ((i - j) % l == 0))
    else:
        allowed = (j <= i) & ((i // l == j // l) | (j % l >= l - c))
    x = torch.randn(2, s, D)
    check(layer, lambda x: dense_gqa(layer, x, allowed, 2, "rope"), x)
    assert layer.last_dispatch == f"sparse:{pattern}:blocks"


def test_top_k_keeps_the_k_largest_scores_per_query():
    torch.manual_seed(3)
    layer = get_attention("sparse", D, H, num_kv_heads=2, causal=True, sparse_top_k=3).eval()
    x = torch.randn(2, 10, D)

    def reference(x):
        b, s, _ = x.shape
        d = layer.head_dim
        w = layer.qkv_proj.weight
        q, k, v = heads(x @ w[: H * d].T, H), heads(x @ w[H * d : H * d + 2 * d].T, 2), heads(x @ w[H * d + 2 * d :].T, 2)
        k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(), float("-inf"))
        kth = scores.sort(-1, descending=True).values[..., min(3, s) - 1 : min(3, s)]
        a = torch.softmax(scores.masked_fill(scores < kth, float("-inf")), -1)
        return (a @ v).transpose(1, 2).reshape(b, s, D) @ layer.out_proj.weight.T

    check(layer, reference, x)


def test_sparse_patterns_with_right_padding_match_the_dense_mask():
    layer = get_attention("sparse", D, H, causal=True, sparse_pattern="strided", sparse_stride=3).eval()
    x = torch.randn(2, 11, D)
    padding = torch.ones(2, 11, dtype=torch.long)
    padding[1, 8:] = 0
    i, j = torch.arange(11)[:, None], torch.arange(11)[None, :]
    allowed = ((j <= i) & ((i - j < 3) | ((i - j) % 3 == 0)))[None, None] & padding.bool()[:, None, None, :]
    out = layer(x, attention_mask=padding)
    assert_close(out[0], dense_gqa(layer, x, allowed, H)[0])
    assert_close(out[1, :8], dense_gqa(layer, x, allowed, H)[1, :8])


# ---------------------------------------------------------------------------------------------- neighbourhood
def neighborhood_allowed(s, w, lengths):
    """Loop form of NATTEN's 1-D rule: the w keys centred on i, shifted inward at the row's real end."""
    allowed = torch.zeros(len(lengths), 1, s, s, dtype=torch.bool)
    for r, n in enumerate(lengths):
        for i in range(s):
            start = max(0, min(i - w // 2, n - w))
            allowed[r, 0, i, start : min(start + w, n)] = True
    return allowed


@pytest.mark.parametrize("w", [3, 4, 7])
def test_neighborhood_attention_shifts_its_window_at_the_edges(w):
    torch.manual_seed(4)
    layer = get_attention("neighborhood", D, H, num_kv_heads=2, positional="rope", neighborhood_size=w).eval()
    x = torch.randn(2, 17, D)
    check(layer, lambda x: dense_gqa(layer, x, neighborhood_allowed(17, w, [17, 17]), 2, "rope"), x)
    assert layer.last_dispatch == "neighborhood:banded"
    padding = torch.ones(2, 17, dtype=torch.long)
    padding[1, 12:] = 0
    out = layer(x, attention_mask=padding)
    ref = dense_gqa(layer, x, neighborhood_allowed(17, w, [17, 12]), 2, "rope")
    assert_close(out[0], ref[0])
    assert_close(out[1, :12], ref[1, :12])


def test_neighborhood_over_many_tiles_with_rows_of_different_lengths():
    torch.manual_seed(6)
    layer = get_attention("neighborhood", D, H, neighborhood_size=9).eval()
    x = torch.randn(3, 90, D)  # several tiles of 32 queries; each row's window shifts inward at its own end
    padding = torch.ones(3, 90, dtype=torch.long)
    padding[1, 70:] = 0
    padding[2, 5:] = 0  # shorter than the window
    out = layer(x, attention_mask=padding)
    assert layer.last_dispatch == "neighborhood:banded"
    ref = dense_gqa(layer, x, neighborhood_allowed(90, 9, [90, 70, 5]), H)
    for row, n in enumerate([90, 70, 5]):
        assert_close(out[row, :n], ref[row, :n])


def test_neighborhood_differs_from_a_sliding_window_only_at_the_borders():
    s, w = 12, 5
    nb = neighborhood_allowed(s, w, [s])[0, 0]
    i, j = torch.arange(s)[:, None], torch.arange(s)[None, :]
    window = (i - j).abs() <= w // 2
    assert (nb.sum(-1) == w).all() and not (window.sum(-1) == w).all()
    assert (nb[w // 2 : s - w // 2] == window[w // 2 : s - w // 2]).all()
    causal = get_attention("neighborhood", D, H, causal=True, neighborhood_size=w)
    assert causal.sliding_window == w  # the causal neighbourhood is the causal sliding window (NATTEN is_causal)


# ---------------------------------------------------------------------------------------------- SwitchHead
def test_switchhead_matches_its_mixture_equations():
    torch.manual_seed(5)
    E, k_top = 4, 2
    layer = get_attention("switchhead", D, 2, causal=True, switchhead_experts=E, switchhead_top_k=k_top).eval()
    d = layer.head_dim
    x = torch.randn(2, 7, D)

    def reference(x):
        b, s, _ = x.shape
        qk = x @ layer.qk_proj.weight.T
        q, k = heads(qk[..., : 2 * d], 2), heads(qk[..., 2 * d :], 2)
        wv = layer.v_experts.weight.view(2, E, d, D)
        wo = layer.out_experts.weight.view(D, 2, E, d)
        src = torch.sigmoid(x @ layer.source_router.weight.T).view(b, s, 2, E)
        dst = torch.sigmoid(x @ layer.dest_router.weight.T).view(b, s, 2, E)
        causal = torch.ones(s, s, dtype=torch.bool).tril()
        y = torch.zeros(b, s, D)
        for h in range(2):
            v = torch.zeros(b, s, d)
            for bb in range(b):
                for t in range(s):
                    for e in src[bb, t, h].topk(k_top).indices:
                        v[bb, t] += src[bb, t, h, e] * (wv[h, e] @ x[bb, t])
            o = softmax_rows(q[:, h] @ k[:, h].transpose(-1, -2) / math.sqrt(d), causal) @ v  # [b, s, d]
            for bb in range(b):
                for t in range(s):
                    for e in dst[bb, t, h].topk(k_top).indices:
                        y[bb, t] += dst[bb, t, h, e] * (wo[:, h, e] @ o[bb, t])
        return y

    check(layer, reference, x)
    assert layer.last_aux_loss is not None and 0.9 < layer.last_aux_loss.item() < float(E)


def test_switchhead_balancing_loss_reaches_the_model_loss():
    from transformer.config import ModelConfig
    from transformer.transformer_model import build_model

    model = build_model(ModelConfig(vocab_size=40, embed_dim=D, num_heads=2, num_layers=2, max_seq_len=16,
                                    attention={"type": "switchhead", "causal": False}))
    ids = torch.randint(0, 40, (2, 12))
    out = model(ids, ids)
    assert out.aux_loss is not None
    out.aux_loss.backward()
    assert model.decoder.blocks[0].attn.source_router.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- shared properties
CAUSAL = [
    ("differential", {"num_kv_heads": 2}),
    ("linear", {"linear_decay": True, "linear_chunk": 4}),
    ("linear", {"linear_chunk": 3}),
    ("sparse", {"sparse_pattern": "topk", "sparse_top_k": 3}),
    ("sparse", {"sparse_pattern": "strided", "sparse_stride": 3}),
    ("sparse", {"sparse_pattern": "fixed", "sparse_stride": 4, "sparse_summary": 2}),
    ("neighborhood", {"neighborhood_size": 4}),
    ("switchhead", {}),
]
IDS = [f"{t}-{'-'.join(map(str, o.values()))}" for t, o in CAUSAL]


@pytest.mark.parametrize("attention_type,options", CAUSAL, ids=IDS)
def test_no_gradient_flows_from_future_positions(attention_type, options):
    layer = get_attention(attention_type, D, H, causal=True, **options).eval()
    x = torch.randn(1, 10, D, requires_grad=True)
    layer(x)[0, 5].sum().backward()
    assert x.grad[0, 6:].abs().max() == 0
    assert x.grad[0, :6].abs().sum() > 0


@pytest.mark.parametrize("attention_type,options", CAUSAL, ids=IDS)
def test_token_by_token_and_chunked_decoding_equal_the_full_forward(attention_type, options):
    layer = get_attention(attention_type, D, H, causal=True, **options).eval()
    x = torch.randn(2, 11, D)
    full = layer(x)
    cache = layer.new_cache(2, 16)
    parts = [layer(x[:, :4], cache=cache)] + [layer(x[:, t : t + 1], cache=cache) for t in range(4, 7)]
    parts.append(layer(x[:, 7:], cache=cache))  # a multi-token chunk after single steps
    assert_close(torch.cat(parts, 1), full)


def test_rolling_window_cache_equals_the_full_cache_and_caps_its_bytes():
    from transformer.attention.cache_kinds import new_kv_cache
    from transformer.attention.kv_cache import KVCache, RollingKVCache

    layer = get_attention("gqa", D, H, num_kv_heads=2, causal=True, sliding_window=4, positional="alibi").eval()
    x = torch.randn(2, 12, D)
    rolling = layer.new_cache(2, 32)
    assert isinstance(rolling, RollingKVCache)
    full = new_kv_cache("contiguous", 2, 32, layer.cache_streams())  # no window: every token kept
    assert isinstance(full, KVCache) and not isinstance(full, RollingKVCache)
    out_r = torch.cat([layer(x[:, :5], cache=rolling)] + [layer(x[:, t : t + 1], cache=rolling) for t in range(5, 12)], 1)
    out_f = torch.cat([layer(x[:, :5], cache=full)] + [layer(x[:, t : t + 1], cache=full) for t in range(5, 12)], 1)
    assert_close(out_r, out_f)
    per_token = layer.kv_cache_bytes_per_token()
    assert rolling.allocated_bytes() == 2 * 3 * per_token < full.allocated_bytes() == 2 * 32 * per_token
    assert layer.kv_cache_bytes(1000) == 3 * per_token and layer.kv_cache_bytes(2) == 2 * per_token


def test_kv_bytes_of_every_type_follow_their_formula():
    d = D // H
    assert get_attention("differential", D, H, num_kv_heads=2).kv_cache_bytes_per_token() == 2 * 2 * (2 * (d // 2)) * 4
    assert get_attention("switchhead", D, H).kv_cache_bytes_per_token(torch.bfloat16) == 2 * H * d * 2
    assert get_attention("sparse", D, H, num_kv_heads=1).kv_cache_bytes_per_token() == 2 * d * 4
    assert get_attention("neighborhood", D, H, neighborhood_size=5, causal=True).kv_cache_bytes(100) == 4 * 2 * H * d * 4


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("build,message", [
    (lambda: get_attention("neighborhood", D, H), "needs neighborhood_size"),
    (lambda: get_attention("neighborhood", D, H, neighborhood_size=0), "neighborhood_size=0 must be a positive integer"),
    (lambda: get_attention("sparse", D, H, sparse_top_k=0), "sparse_top_k=0 must be a positive integer"),
    (lambda: get_attention("sparse", D, H, sparse_pattern="strided"), "is causal"),
    (lambda: get_attention("sparse", D, H, sparse_pattern="block"), r"sparse_pattern='block' is not one of"),
    (lambda: get_attention("gqa", D, H, sliding_window=0), "sliding_window=0 must be a positive integer"),
    (lambda: get_attention("gqa", D, H, linear_decay=True), "linear_decay is for attention type 'linear'"),
    (lambda: get_attention("switchhead", D, H, num_kv_heads=2), "num_kv_heads=2 does not apply"),
    (lambda: get_attention("switchhead", D, H, switchhead_top_k=5), "switchhead_top_k=5 must be between 1 and"),
    (lambda: get_attention("differential", 30, 4), "not divisible by 2 \\* num_heads"),
])
def test_bad_options_name_the_option_and_value(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# ---------------------------------------------------------------------------------------------- sdpa kernel choice
@pytest.mark.parametrize("kernel", ["math", "flash"])
def test_sdpa_kernel_choice_is_honoured_and_visible(kernel):
    x = torch.randn(2, 9, D)
    chosen = get_attention("gqa", D, H, num_kv_heads=2, causal=True, sdpa_kernel=kernel).eval()
    auto = get_attention("gqa", D, H, num_kv_heads=2, causal=True).eval()
    auto.load_state_dict(chosen.state_dict())
    assert_close(chosen(x), auto(x))
    assert chosen.last_dispatch == f"sdpa:is_causal[{kernel}]"


def test_an_sdpa_kernel_that_cannot_run_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("on CUDA the efficient kernel may run")
    layer = get_attention("gqa", D, H, causal=True, sdpa_kernel="efficient")
    with pytest.raises(ValueError, match="sdpa_kernel='efficient' cannot run this call \\(device cpu"):
        layer(torch.randn(1, 4, D))
    with pytest.raises(ValueError, match="needs backend='sdpa'"):
        get_attention("gqa", D, H, backend="eager", sdpa_kernel="math")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kernel", ["flash", "efficient", "cudnn", "math"])
def test_sdpa_kernels_on_cuda(kernel):
    layer = get_attention("gqa", 64, 4, num_kv_heads=2, causal=True, sdpa_kernel=kernel).cuda().half()
    reference = get_attention("gqa", 64, 4, num_kv_heads=2, causal=True, backend="eager").cuda().half()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 128, 64, device="cuda", dtype=torch.half)
    try:
        out = layer(x)
    except ValueError as err:  # e.g. cudnn on a GPU or build without it: the error names the option
        assert "sdpa_kernel" in str(err)
        return
    torch.testing.assert_close(out, reference(x), atol=2e-3, rtol=2e-3)
    assert layer.last_dispatch.endswith(f"[{kernel}]")


@pytest.mark.parametrize("causal", [True, False])
def test_a_long_sequence_with_a_sliding_window_runs_banded_with_the_dense_result(causal):
    torch.manual_seed(7)
    layer = get_attention("gqa", D, H, num_kv_heads=2, causal=causal, sliding_window=6, positional="rope").eval()
    dense = get_attention("gqa", D, H, num_kv_heads=2, causal=causal, sliding_window=6, positional="rope", backend="eager").eval()
    dense.load_state_dict(layer.state_dict())
    x = torch.randn(2, 200, D)
    padding = torch.ones(2, 200, dtype=torch.long)
    padding[1, 150:] = 0
    check(layer, dense, x)
    assert layer.last_dispatch == "sdpa:window_band"
    out, ref = layer(x, attention_mask=padding), dense(x, attention_mask=padding)
    assert_close(out[0], ref[0])
    assert_close(out[1, :150], ref[1, :150])
    short = get_attention("gqa", D, H, causal=causal, sliding_window=6)
    short(x[:, :40])
    assert short.last_dispatch == "sdpa:bool_mask"  # a short sequence keeps the dense masked kernel


def test_bands_wider_than_a_tile_of_32_run_in_larger_tiles_with_the_dense_result():
    from transformer.attention.block_sparse import band_tile

    assert [band_tile(w) for w in (5, 63, 65, 255, 256, 1023)] == [32, 32, 64, 128, 128, 256]
    torch.manual_seed(8)
    layer = get_attention("neighborhood", D, H, neighborhood_size=100).eval()  # tiles of 64: 5 tiles over 300
    x = torch.randn(2, 300, D)
    padding = torch.ones(2, 300, dtype=torch.long)
    padding[1, 230:] = 0
    out = layer(x, attention_mask=padding)
    assert layer.last_dispatch == "neighborhood:banded"
    ref = dense_gqa(layer, x, neighborhood_allowed(300, 100, [300, 230]), H)
    assert_close(out[0], ref[0])
    assert_close(out[1, :230], ref[1, :230])
    for causal in (True, False):  # a band of 70 (causal) / 139 (bidirectional): tiles of 64 / 128
        window = get_attention("gqa", D, H, num_kv_heads=2, causal=causal, sliding_window=70).eval()
        dense = get_attention("gqa", D, H, num_kv_heads=2, causal=causal, sliding_window=70, backend="eager").eval()
        dense.load_state_dict(window.state_dict())
        x = torch.randn(1, 1100, D)
        assert_close(window(x), dense(x))
        assert window.last_dispatch == "sdpa:window_band"
