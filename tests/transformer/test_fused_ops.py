"""The hand-fused autograd functions give the composite ops' values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from transformer.attention.positional import RotaryEmbedding, apply_rotary, rotary_qkv
from transformer.fused_ops import RMSNorm, swiglu_mlp
from transformer.layers import FeedForward


def _rotate_half_reference(x, cos, sin):
    """Llama / GPT-NeoX RoPE as transformers writes it: x * cos + rotate_half(x) * sin."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def test_rmsnorm_matches_torch_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    ours, ref = RMSNorm(16, eps=1e-5).double(), torch.nn.RMSNorm(16, eps=1e-5).double()
    with torch.no_grad():
        ours.weight.normal_()
    ref.load_state_dict(ours.state_dict())
    g = torch.randn(3, 5, 16, dtype=torch.float64)
    y = ours(x)
    gx, gw = torch.autograd.grad(y, (x, ours.weight), g)
    y_ref = ref(x)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, ref.weight), g)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gw, gw_ref)
    small = RMSNorm(4, eps=1e-5).double()
    assert torch.autograd.gradcheck(small, (torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True),))


def test_rmsnorm_bf16_is_computed_in_fp32():
    torch.manual_seed(0)
    x = torch.randn(4, 64) * 30
    norm = RMSNorm(64, eps=1e-6)
    y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), F.rms_norm(x.bfloat16().float(), (64,), norm.weight, 1e-6), atol=1e-2, rtol=1e-2)


def _plain_swiglu_mlp(x, ff):
    gate, up = ff.w_in(x).chunk(2, dim=-1)
    return ff.w_out(F.silu(gate) * up)


@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_mlp_matches_composite_and_gradcheck(bias):
    torch.manual_seed(0)
    ff = FeedForward(6, 5, "swiglu", bias=bias).double()
    if bias:
        with torch.no_grad():
            ff.w_in.bias.normal_(), ff.w_out.bias.normal_()
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    params = [x, *ff.parameters()]
    g = torch.randn(2, 3, 6, dtype=torch.float64)
    y = ff(x)
    assert y.grad_fn is not None and "SwiGLUMLP" in type(y.grad_fn).__name__  # the fused node ran
    grads = torch.autograd.grad(y, params, g)
    y_ref = _plain_swiglu_mlp(x, ff)
    grads_ref = torch.autograd.grad(y_ref, params, g)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda x, *p: swiglu_mlp(x, ff.w_in, ff.w_out), (x, *ff.parameters()))


def test_swiglu_mlp_frozen_weights_get_no_gradient():
    ff = FeedForward(8, 6, "swiglu", bias=False)
    ff.w_in.weight.requires_grad_(False)
    x = torch.randn(4, 8, requires_grad=True)
    ff(x).sum().backward()
    assert ff.w_in.weight.grad is None and ff.w_out.weight.grad is not None and x.grad is not None


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_apply_rotary_matches_rotate_half_and_inverts(fraction):
    torch.manual_seed(0)
    d = 16
    rope = RotaryEmbedding(d, fraction=fraction)
    cos, sin = rope.for_range(0, 7)  # [s, r]
    x = torch.randn(2, 7, 3, d, dtype=torch.float64, requires_grad=True)  # [b, s, heads, d]
    c, s = cos[:, None].double(), sin[:, None].double()
    r = rope.rot_dim
    expected = torch.cat((_rotate_half_reference(x[..., :r], c, s), x[..., r:]), dim=-1)
    torch.testing.assert_close(apply_rotary(x, c, s), expected)
    assert torch.autograd.gradcheck(lambda t: apply_rotary(t, c, s), (x[:1, :, :1].detach().requires_grad_(),))
    # a rotation's gradient is its inverse rotation: the gradient of <rope(x), g> is rope^-1(g)
    g = torch.randn_like(x)
    (grad,) = torch.autograd.grad(apply_rotary(x, c, s), x, g)
    torch.testing.assert_close(apply_rotary(grad, c, s), g)


def test_rotary_qkv_equals_split_then_rotate_for_gqa():
    torch.manual_seed(0)
    b, s, hq, hkv, d = 2, 5, 4, 2, 8
    cos, sin = RotaryEmbedding(d).for_range(0, s)
    c, sn = cos[:, None].double(), sin[:, None].double()
    qkv = torch.randn(b, s, hq + 2 * hkv, d, dtype=torch.float64, requires_grad=True)
    q, k, v = rotary_qkv(qkv, c, sn, hq, hkv)
    q_ref, k_ref, v_ref = qkv.split([hq, hkv, hkv], dim=2)
    torch.testing.assert_close(q, _rotate_half_reference(q_ref, c, sn))
    torch.testing.assert_close(k, _rotate_half_reference(k_ref, c, sn))
    torch.testing.assert_close(v, v_ref)
    assert torch.autograd.gradcheck(lambda t: rotary_qkv(t, c, sn, hq, hkv), (qkv,))
    # outputs that do not reach the loss get zero gradient
    (grad,) = torch.autograd.grad(k.sum(), qkv)
    assert grad[:, :, :hq].abs().sum() == 0 and grad[:, :, hq + hkv:].abs().sum() == 0


def test_compiled_and_eager_paths_agree():
    """Under torch.compile the plain ops run; both paths must give the same values."""
    torch.manual_seed(0)
    d = 8
    cos, sin = RotaryEmbedding(d).for_range(0, 6)
    c, s = cos[:, None], sin[:, None]
    qkv = torch.randn(2, 6, 6, d)
    h = torch.randn(2, 6, 8)
    norm, ff = RMSNorm(d), FeedForward(8, 6, "swiglu", bias=False)

    def f(qkv, h):
        q, k, v = rotary_qkv(qkv, c, s, 2, 2)
        return q, k, v, ff(h), norm(qkv)

    eager = f(qkv, h)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)(qkv, h)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)


def test_inference_paths_match_training_paths():
    """Without autograd the plain ops run (no node to set up; fewest calls at decode sizes): same values."""
    torch.manual_seed(0)
    d = 8
    cos, sin = RotaryEmbedding(d).for_range(0, 5)
    c, s = cos[:, None], sin[:, None]
    qkv = torch.randn(2, 5, 6, d, requires_grad=True)
    h = torch.randn(2, 5, 8, requires_grad=True)
    norm, ff = RMSNorm(d), FeedForward(8, 6, "swiglu", bias=False)
    train = (*rotary_qkv(qkv, c, s, 2, 2), apply_rotary(qkv, c, s), ff(h), norm(qkv))
    with torch.no_grad():
        infer = (*rotary_qkv(qkv, c, s, 2, 2), apply_rotary(qkv, c, s), ff(h), norm(qkv))
    assert all(t.grad_fn is not None for t in train) and all(t.grad_fn is None for t in infer)
    for a, b in zip(train, infer):
        torch.testing.assert_close(a, b)
