"""Hand-fused autograd functions for the Llama-style elementwise work: RMSNorm and SwiGLU.

Why: at small and medium sizes an eager training step is bound by the number of elementwise kernels,
not by their arithmetic. PyTorch's CPU ``rms_norm`` is a composite of ~20 kernels forward + backward,
and ``silu(gate) * up`` over a fused ``[gate | up]`` projection ends its backward with a full-size
``cat``. The functions here compute the same values with the fewest kernels we could find and write
gradients straight into their final buffers. They run for eager training only: under ``torch.compile`` the
plain composite ops run instead (dynamo does not trace ``out=`` into strided views, and inductor fuses the
plain ops itself), and without autograd the plain ops are as fast. Low-precision inputs are computed in fp32 and cast back.

Tests (``tests/transformer/test_fused_ops.py``) compare values and gradients with the composite ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _wide(t: Tensor) -> Tensor:
    """fp16 / bf16 -> fp32 for the arithmetic; fp32 and fp64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def use_fused_autograd(*tensors: Tensor) -> bool:
    """Use a hand-fused function: an autograd node is needed and torch.compile is not tracing. Otherwise
    the plain ops are as fast or faster (inference at decode sizes is bound by Python calls, not kernels)."""
    return (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
            and not torch.compiler.is_compiling())


class _RMSNormFunction(torch.autograd.Function):
    """``y = x * rsqrt(mean(x^2) + eps) * w`` over the last dim: 3 full-size kernels forward, 6 backward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        x32 = _wide(x)
        sumsq = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_()  # [..., 1]
        rstd = sumsq.div_(x.shape[-1]).add_(eps).rsqrt_()  # [..., 1]
        xhat = x32 * rstd  # [..., D]
        ctx.save_for_backward(xhat, rstd, weight)
        return (xhat * weight).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        xhat, rstd, weight = ctx.saved_tensors
        g32 = _wide(grad)
        dim = xhat.shape[-1]
        g_xhat = g32 * xhat  # [..., D]
        grad_w = g_xhat.reshape(-1, dim).sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        # d/dx: rstd * (g*w - xhat * mean(g*w*xhat)); the mean is a matrix-vector product
        dot = (g_xhat.reshape(-1, dim) @ _wide(weight)).view(*xhat.shape[:-1], 1)  # [..., 1]
        grad_x = torch.addcmul(g32 * weight, xhat, dot, value=-1.0 / dim).mul_(rstd)
        return grad_x.to(grad.dtype), grad_w, None


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (same parameters and state-dict keys) computed by one fused autograd function."""

    def forward(self, x: Tensor) -> Tensor:
        if self.weight is None or len(self.normalized_shape) != 1 or not use_fused_autograd(x, self.weight):
            return super().forward(x)
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        return _RMSNormFunction.apply(x, self.weight, eps)


class _SwiGLUFunction(torch.autograd.Function):
    """``silu(gate) * up`` for ``h = [gate | up]`` (``[..., 2F] -> [..., F]``); the backward writes both
    halves of the gradient into one buffer instead of concatenating them."""

    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:
        gate, up = h.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(h, act)
        return act * up

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, act = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        grad_h = torch.empty_like(h, memory_format=torch.contiguous_format)
        grad_gate, grad_up = grad_h.chunk(2, dim=-1)
        torch.mul(grad, act, out=grad_up)
        torch.ops.aten.silu_backward(grad * up, gate, grad_input=grad_gate)
        return grad_h


def swiglu(h: Tensor) -> Tensor:
    """``[..., 2F] -> [..., F]``: ``silu(gate) * up`` of a fused ``[gate | up]`` projection."""
    if not use_fused_autograd(h):
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    return _SwiGLUFunction.apply(h)
