"""Position schemes used inside attention: RoPE, ALiBi and T5-style learned relative bias.

RoPE rotates queries and keys (a multiplicative scheme); ALiBi and relative bias add a
``[1, h, q, k]`` bias to the attention scores. Absolute learned / sinusoidal embeddings belong to
the model's input layer; :func:`sinusoidal_table` is here so there is one copy of the formula.

Shapes: b batch, h heads, s sequence, d head dim, r rotated dims (``<= d``, even).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..fused_ops import use_fused_autograd, wide_float


# ---------------------------------------------------------------------------------------- RoPE
class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary position embeddings (Su et al. 2021), "rotate-half" layout.

    The rotate-half layout (pairs ``(x_i, x_{i+r/2})``) is the one Llama / GPT-NeoX checkpoints use,
    so their weights load without permutation. A model computes the tables once per forward and
    passes them to every layer; a stand-alone layer calls its own instance.

    ``fraction`` < 1 rotates only the first ``r = fraction * d`` dims (partial rotary).
    ``scaling="linear"`` divides positions by ``factor`` (position interpolation, Chen et al. 2023);
    ``scaling="ntk"`` raises the base to ``theta * factor ** (r / (r - 2))`` (NTK-aware scaling), which
    keeps high frequencies intact and stretches low ones.
    """

    def __init__(
        self,
        head_dim: int,
        *,
        theta: float = 10000.0,
        fraction: float = 1.0,
        scaling: str | None = None,
        scaling_factor: float = 1.0,
        low_freq_factor: float = 1.0,
        high_freq_factor: float = 4.0,
        original_max_len: int | None = None,
    ) -> None:
        super().__init__()
        rot = int(head_dim * fraction)
        rot -= rot % 2
        if rot < 2:
            raise ValueError(f"RoPE needs at least 2 rotated dims; head_dim={head_dim} * rope_fraction={fraction} gives {rot}")
        if fraction == 1.0 and head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got head_dim={head_dim}")
        self.head_dim, self.rot_dim = head_dim, rot
        self.signature = (head_dim, rot, theta, scaling, scaling_factor, low_freq_factor, high_freq_factor, original_max_len)
        """Equal signatures give equal tables: a model computes each distinct table once per forward."""
        self.position_scale = 1.0
        base = theta
        if scaling == "linear":
            self.position_scale = 1.0 / scaling_factor
        elif scaling == "ntk":
            base = theta * scaling_factor ** (rot / (rot - 2))
        elif scaling not in (None, "llama3"):
            raise ValueError(f"unknown rope_scaling={scaling!r}; choose 'linear', 'ntk', 'llama3' or None")
        inv_freq = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))  # [r/2]
        if scaling == "llama3":
            inv_freq = llama3_inv_freq(inv_freq, scaling_factor, low_freq_factor, high_freq_factor, original_max_len)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``positions``: ``[s]`` or ``[b, s]`` ints -> ``(cos, sin)`` each ``[s, r]`` or ``[b, 1, s, r]`` fp32."""
        angles = (positions.to(torch.float32) * self.position_scale)[..., None] * self.inv_freq  # [..., s, r/2]
        angles = torch.cat((angles, angles), dim=-1)  # [..., s, r]
        cos, sin = angles.cos(), angles.sin()
        if positions.dim() == 2:  # per-sample positions broadcast over heads
            cos, sin = cos[:, None], sin[:, None]
        return cos, sin

    def for_range(self, start: int, length: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """Tables for positions ``start .. start+length-1``."""
        device = device or self.inv_freq.device
        return self(torch.arange(start, start + length, device=device))


def llama3_inv_freq(inv_freq: Tensor, factor: float, low_freq_factor: float, high_freq_factor: float,
                    original_max_len: int) -> Tensor:
    """Llama-3.1's RoPE frequencies ``[r/2]``: a wavelength longer than ``original / low_freq_factor`` is
    stretched by ``factor`` (position interpolation), one shorter than ``original / high_freq_factor`` kept,
    and those between blended linearly in ``original / wavelength`` (Meta's reference ``apply_scaling``)."""
    wavelen = 2 * math.pi / inv_freq
    ratio = original_max_len / wavelen  # how many times each frequency turns over the original context
    smooth = ((ratio - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0.0, 1.0)
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def _rotate_into(out: Tensor, x: Tensor, cos: Tensor, sin: Tensor, direction: float) -> None:
    """``out = rotate(x)`` in the rotate-half layout: pairs ``(x_i, x_{i+r/2})`` for ``i < r/2`` turn by the
    angles whose ``cos``/``sin`` are ``[..., r/2]`` (broadcastable); dims ``>= r`` are copied. ``direction``
    -1 turns backwards (the rotation's transpose, i.e. its gradient).

    Four kernels on half-width views, writing into ``out`` directly: no ``cat``, no ``flip`` copy.
    fp16 / bf16 tensors are rotated in fp32 and rounded once.
    """
    if out.dtype in (torch.float16, torch.bfloat16):
        wide = torch.empty(out.shape, dtype=torch.float32, device=out.device)
        _rotate_into(wide, x.float(), cos, sin, direction)
        out.copy_(wide)
        return
    half = cos.shape[-1]
    x1, x2, o1, o2 = x[..., :half], x[..., half:2 * half], out[..., :half], out[..., half:2 * half]
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-direction)  # x1 cos - x2 sin
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin, value=direction)  # x2 cos + x1 sin
    if 2 * half < x.shape[-1]:
        out[..., 2 * half:].copy_(x[..., 2 * half:])


def _rotated(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """The same rotation as plain differentiable ops: for ``torch.compile`` (which does not trace ``out=``
    into strided views, and fuses these ops into one kernel itself) and for inference (no autograd node;
    fewest Python calls at decode sizes)."""
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    x1, x2 = wide_float(x1), wide_float(x2)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out


def _half_tables(cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """RotaryEmbedding's ``[..., r]`` tables repeat one ``[..., r/2]`` half; the kernels need that half."""
    half = cos.shape[-1] // 2
    return cos[..., :half], sin[..., :half]


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, direction: float = 1.0) -> Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _rotate_into(out, x, cos, sin, direction)
    return out


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, -1.0), None, None


class _RotaryQKV(torch.autograd.Function):
    """``qkv [b, s, hq + 2 hkv, d] -> q [b, s, hq, d], k [b, s, hkv, d], v [b, s, hkv, d]`` with q and k
    rotated. The backward writes the three gradients straight into one ``qkv``-shaped buffer, where
    ``split`` + rotation + ``split`` under autograd would concatenate twice."""

    @staticmethod
    def forward(ctx, qkv: Tensor, cos: Tensor, sin: Tensor, num_q: int, num_kv: int):
        ctx.save_for_backward(cos, sin)
        ctx.num_q, ctx.num_kv = num_q, num_kv
        q, k = _rotate(qkv[:, :, : num_q + num_kv], cos, sin).split([num_q, num_kv], dim=2)
        return q, k, qkv[:, :, num_q + num_kv:]

    @staticmethod
    def backward(ctx, grad_q: Tensor | None, grad_k: Tensor | None, grad_v: Tensor | None):
        cos, sin = ctx.saved_tensors
        nq, nkv = ctx.num_q, ctx.num_kv
        ref = next(g for g in (grad_q, grad_k, grad_v) if g is not None)
        grad = torch.empty((*ref.shape[:2], nq + 2 * nkv, ref.shape[3]), dtype=ref.dtype, device=ref.device)
        for g, part, rotate in ((grad_q, grad[:, :, :nq], True), (grad_k, grad[:, :, nq:nq + nkv], True),
                                (grad_v, grad[:, :, nq + nkv:], False)):
            if g is None:
                part.zero_()
            elif rotate:
                _rotate_into(part, g, cos, sin, -1.0)
            else:
                part.copy_(g)
        return grad, None, None, None, None


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``r`` dims of ``x`` (``[..., s, heads?, d]``) by the angles of ``cos``/``sin``
    (``[..., r]`` as :class:`RotaryEmbedding` returns them, both halves equal; broadcastable)."""
    if not use_fused_autograd(x):
        return _rotated(x, *_half_tables(cos, sin))
    return _Rotary.apply(x, *_half_tables(cos, sin))


def rotary_qkv(qkv: Tensor, cos: Tensor, sin: Tensor, num_q: int, num_kv: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split a fused projection ``[b, s, num_q + 2 num_kv, d]`` into ``q, k, v`` (``[b, s, heads, d]``) and
    rotate q and k. ``cos``/``sin``: ``[s, 1, r]`` or ``[b, s, 1, r]``."""
    if not use_fused_autograd(qkv):
        qk, v = qkv.split([num_q + num_kv, num_kv], dim=2)
        q, k = _rotated(qk, *_half_tables(cos, sin)).split([num_q, num_kv], dim=2)
        return q, k, v
    return _RotaryQKV.apply(qkv, *_half_tables(cos, sin), num_q, num_kv)


# --------------------------------------------------------------------------------------- ALiBi
def alibi_slopes(num_heads: int) -> Tensor:
    """Head slopes of ALiBi (Press et al. 2022), ``[h]`` fp32.

    For ``n`` a power of two the slopes are the geometric sequence ``2^(-8i/n)``, i = 1..n. Otherwise
    take the ``m`` slopes of the largest power of two ``m < n`` and add every other slope of the
    ``2m`` sequence until there are ``n`` (the paper's reference implementation).
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if num_heads & (num_heads - 1) == 0:
        slopes = power_of_two(num_heads)
    else:
        m = 2 ** math.floor(math.log2(num_heads))
        slopes = power_of_two(m) + power_of_two(2 * m)[0::2][: num_heads - m]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBi(nn.Module):
    """Linear distance penalty ``-slope_h * |q_pos - k_pos|`` added to the scores (no parameters).

    For causal attention this equals the paper's ``slope * (k - q)`` on every visible key; the
    absolute distance also makes it usable bidirectionally.
    """

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)

    def forward(self, q_len: int, kv_len: int, q_offset: int) -> Tensor:
        """-> ``[1, h, q, k]`` fp32."""
        device = self.slopes.device
        q_pos = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]
        k_pos = torch.arange(kv_len, device=device)[None, :]
        distance = (q_pos - k_pos).abs().float()  # [q, k]
        return (-self.slopes[:, None, None] * distance)[None]


# ------------------------------------------------------------------------ T5 relative position bias
def relative_position_bucket(relative_position: Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bucketing of ``k_pos - q_pos``: exact buckets for small offsets, log-spaced up to ``max_distance``.

    Matches ``transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket``.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        relative_position = relative_position.abs()
    else:
        relative_position = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    large = max_exact + (
        torch.log(relative_position.float().clamp(min=1) / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative_position, large)


class RelativePositionBias(nn.Module):
    """Learned per-head bias indexed by the bucketed offset ``k_pos - q_pos`` (Raffel et al. 2020)."""

    def __init__(self, num_heads: int, *, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128) -> None:
        super().__init__()
        if num_buckets < 2 or max_distance < num_buckets // 2:
            raise ValueError(
                f"relative bias needs relative_buckets >= 2 and relative_max_distance >= buckets/2, "
                f"got relative_buckets={num_buckets}, relative_max_distance={max_distance}"
            )
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, q_len: int, kv_len: int, q_offset: int) -> Tensor:
        """-> ``[1, h, q, k]`` in the embedding's dtype."""
        device = self.embedding.weight.device
        q_pos = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]
        k_pos = torch.arange(kv_len, device=device)[None, :]
        buckets = relative_position_bucket(
            k_pos - q_pos, bidirectional=self.bidirectional, num_buckets=self.num_buckets, max_distance=self.max_distance
        )
        return self.embedding(buckets).permute(2, 0, 1)[None]  # [q, k, h] -> [1, h, q, k]


# ---------------------------------------------------------------------- absolute (model-level) helper
def sinusoidal_table(num_positions: int, dim: int, *, base: float = 10000.0) -> Tensor:
    """The fixed sin/cos table of "Attention Is All You Need", ``[num_positions, dim]`` fp32.

    Even columns hold ``sin(pos / base^(2i/dim))`` and odd columns the matching ``cos``.
    """
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(base) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)[:, : dim // 2]
    return table
