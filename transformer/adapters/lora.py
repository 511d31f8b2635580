"""LoRA and DoRA adapters over a (possibly fused, possibly NF4-quantised) linear layer.

Why not ``peft``'s layers directly: this toolkit fuses ``[q | k | v]`` and ``[gate | up]`` into one
projection each, and a user targeting ``q`` and ``v`` expects what ``peft`` gives on a Hugging Face model:
one adapter per *segment* of the output rows, with its own A and B (and, for DoRA, its own magnitude
over its own rows). :class:`AdaptedLinear` holds exactly that, so its adapters are ``peft``'s tensors
one to one (``transformer.adapters.peft_format`` writes and reads them), and ``peft`` is the numerical
reference in the tests.

For segment s with base rows ``W_s`` ``[o_s, i]``, input x ``[..., i]``, scale ``alpha / r``:

* LoRA:  ``y_s = W_s x + b_s + scale * B_s A_s dropout(x)``
* DoRA:  ``y_s = W_s x + b_s + (m_s / n_s - 1) * W_s x' + (m_s / n_s) * scale * B_s A_s x'`` with
  ``n_s = ||W_s + scale B_s A_s||`` per output row, detached (the DoRA paper, section 4.3), and
  ``x' = dropout(x)`` — ``peft``'s formulation, term by term.

Shape legend: i in_features, o out_features (sum of the segments' o_s), r rank.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quant import dequantize, is_quantized, linear_any


class AdaptedLinear(nn.Module):
    """``base`` (frozen) plus an adapter on each adapted segment of its output rows.

    ``segments``: ``[(name, rows), ...]`` covering ``base.out_features`` in order (e.g. ``q, k, v``);
    ``adapted``: the names that get an adapter. The base's parameters keep their names under ``base.``.
    """

    def __init__(self, base: nn.Linear, segments: list[tuple[str, int]], adapted: list[str], *, r: int, alpha: float,
                 dropout: float = 0.0, dora: bool = False) -> None:
        super().__init__()
        if sum(rows for _, rows in segments) != base.out_features:
            raise ValueError(f"segments {segments} do not cover the {base.out_features} output rows")
        self.base = base
        self.segments = list(segments)
        self.adapted = [name for name, _ in segments if name in adapted]
        self.r, self.alpha, self.scale, self.dora = r, alpha, alpha / r, dora
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        rows = dict(segments)
        self.lora_A = nn.ParameterDict({n: nn.Parameter(torch.empty(r, base.in_features)) for n in self.adapted})
        self.lora_B = nn.ParameterDict({n: nn.Parameter(torch.zeros(rows[n], r)) for n in self.adapted})
        for a in self.lora_A.values():  # peft's (and nn.Linear's) default init of A; B = 0 starts at the base
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.magnitude = nn.ParameterDict()
        if dora:
            weights = self._base_rows()
            self.magnitude = nn.ParameterDict({n: nn.Parameter(weights[n].norm(dim=1).detach().clone()) for n in self.adapted})
        for p in base.parameters():
            p.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def _base_rows(self) -> dict[str, Tensor]:
        """The base weight split into segments ``{name: [o_s, i]}`` (dequantised if NF4)."""
        weight = dequantize(self.base.weight)
        return dict(zip([n for n, _ in self.segments], weight.split([rows for _, rows in self.segments], dim=0)))

    def delta_weight(self, name: str) -> Tensor:
        """``scale * B A`` of one segment ``[o_s, i]`` (LoRA); for DoRA the merged segment minus the base."""
        lora = self.scale * (self.lora_B[name] @ self.lora_A[name])
        if not self.dora:
            return lora
        base = self._base_rows()[name].to(lora.dtype)
        combined = base + lora
        return (self.magnitude[name] / combined.norm(dim=1))[:, None] * combined - base

    def merged_weight(self) -> Tensor:
        """The full ``[o, i]`` weight with every adapter folded in (what ``--merge`` exports)."""
        rows = self._base_rows()
        return torch.cat([rows[n] + self.delta_weight(n).to(rows[n].dtype) if n in self.lora_A else rows[n]
                          for n, _ in self.segments], dim=0)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., i] -> [..., o]``."""
        out = linear_any(x, self.base.weight, self.base.bias)  # [..., o]
        if not self.adapted:
            return out
        h = self.dropout(x)
        names = [n for n, _ in self.segments]
        pieces = list(out.split([rows for _, rows in self.segments], dim=-1))
        # one matmul for every segment's A (stacked [r * n_adapted, i]), then each segment's own B
        a_all = torch.cat([self.lora_A[n] for n in self.adapted], dim=0) if len(self.adapted) > 1 else self.lora_A[self.adapted[0]]
        low = F.linear(h, a_all.to(h.dtype)).split(self.r, dim=-1)  # n_adapted x [..., r]
        base_rows = self._base_rows() if self.dora else None
        for name, z in zip(self.adapted, low):
            i = names.index(name)
            lora = F.linear(z, self.lora_B[name].to(z.dtype)) * self.scale  # [..., o_s]
            if not self.dora:
                pieces[i] = pieces[i] + lora
                continue
            w = base_rows[name].to(lora.dtype)
            norm = (w + self.scale * (self.lora_B[name] @ self.lora_A[name]).to(w.dtype)).norm(dim=1).detach()
            factor = (self.magnitude[name] / norm).to(lora.dtype)  # [o_s]
            if isinstance(self.dropout, nn.Identity) or not self.training:
                bias = self.base.bias
                start = sum(rows for _, rows in self.segments[:i])
                base_out = pieces[i] if bias is None else pieces[i] - bias[start:start + w.shape[0]]
            else:
                base_out = F.linear(h, w)
            pieces[i] = pieces[i] + (factor - 1) * base_out + factor * lora
        return torch.cat(pieces, dim=-1)

    def extra_repr(self) -> str:
        kind = "dora" if self.dora else "lora"
        quant = ", base=nf4" if is_quantized(self.base.weight) else ""
        return f"{kind} r={self.r} alpha={self.alpha} on {'/'.join(self.adapted)} of {[n for n, _ in self.segments]}{quant}"
