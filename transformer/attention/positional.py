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
    ) -> None:
        super().__init__()
        rot = int(head_dim * fraction)
        rot -= rot % 2
        if rot < 2:
            raise ValueError(f"RoPE needs at least 2 rotated dims; head_dim={head_dim} * rope_fraction={fraction} gives {rot}")
        if fraction == 1.0 and head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got head_dim={head_dim}")
        self.head_dim, self.rot_dim = head_dim, rot
        self.position_scale = 1.0
        base = theta
        if scaling == "linear":
            self.position_scale = 1.0 / scaling_factor
        elif scaling == "ntk":
            base = theta * scaling_factor ** (rot / (rot - 2))
        elif scaling is not None:
            raise ValueError(f"unknown rope_scaling={scaling!r}; choose 'linear', 'ntk' or None")
        inv_freq = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))  # [r/2]
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


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``r`` dims of ``x`` (``[..., s, heads?, d]``) by the angles of ``cos``/``sin`` (``[..., r]``,
    broadcastable). Computed in fp32 and cast back, so bf16 activations keep the rotation's precision.

    ``rotate_half(x) * sin`` is ``[-x2 * sin, x1 * sin]``: one ``flip`` of the two halves times ``[-sin, sin]``
    (fewer kernels than chunk + neg + cat, which matters at small sizes).
    """
    rot = cos.shape[-1]
    x_rot = x if rot == x.shape[-1] else x[..., :rot]
    x32 = x_rot.float()  # no-op for fp32 inputs
    half = sin.shape[-1] // 2
    sign = torch.tensor([-1.0, 1.0], dtype=sin.dtype, device=sin.device)[:, None]  # [2, 1]
    swapped = (x32.unflatten(-1, (2, half)).flip(-2) * (sin.unflatten(-1, (2, half)) * sign)).flatten(-2)
    rotated = (x32 * cos + swapped).to(x.dtype)
    return rotated if rot == x.shape[-1] else torch.cat((rotated, x[..., rot:]), dim=-1)


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
