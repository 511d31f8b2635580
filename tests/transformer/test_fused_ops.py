"""The hand-fused autograd functions give the composite ops' values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from transformer.attention.positional import RotaryEmbedding, apply_rotary, rotary_qkv
from transformer.fused_ops import RMSNorm, swiglu


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


def test_swiglu_matches_composite_and_gradcheck():
    torch.manual_seed(0)
    h = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    gate, up = h.chunk(2, dim=-1)
    ref = F.silu(gate) * up
    torch.testing.assert_close(swiglu(h), ref)
    assert torch.autograd.gradcheck(swiglu, (h,))


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
    h = torch.randn(2, 6, 12)
    norm = RMSNorm(d)

    def f(qkv, h):
        q, k, v = rotary_qkv(qkv, c, s, 2, 2)
        return q, k, v, swiglu(h), norm(qkv)

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
    h = torch.randn(2, 5, 12, requires_grad=True)
    norm = RMSNorm(d)
    train = (*rotary_qkv(qkv, c, s, 2, 2), apply_rotary(qkv, c, s), swiglu(h), norm(qkv))
    with torch.no_grad():
        infer = (*rotary_qkv(qkv, c, s, 2, 2), apply_rotary(qkv, c, s), swiglu(h), norm(qkv))
    assert all(t.grad_fn is not None for t in train) and all(t.grad_fn is None for t in infer)
    for a, b in zip(train, infer):
        torch.testing.assert_close(a, b)
