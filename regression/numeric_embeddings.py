"""Numeric feature embeddings of tabular regressors: one token ``[D]`` per numeric feature.

- ``linear`` (FT-Transformer, Gorishniy et al. 2021): ``x_i * w_i + b_i``.
- ``periodic`` (PLR, Gorishniy et al. 2022, "On Embeddings for Numerical Features"): ``v = [sin(2π c_i x_i),
  cos(2π c_i x_i)]`` with ``k`` learned frequencies ``c_i ~ N(0, σ)`` per feature, then a per-feature linear map
  ``2k -> D`` and ReLU.
- ``ple`` (piecewise-linear encoding, same paper): bin edges ``b_0 < ... < b_n`` from training-split quantiles;
  component ``t`` is 0 below bin ``t``, 1 above it, linear inside (the first bin is open below, the last above),
  then a per-feature linear map ``n -> D``. A feature with fewer distinct values than bins gets repeated edges,
  whose zero-width bins act as steps.

Shapes: b batch, F features, D embed dim, k frequencies, n bins.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn


class LinearEmbedding(nn.Module):
    def __init__(self, num_features: int, dim: int, std: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_features, dim) * std)
        self.bias = nn.Parameter(torch.zeros(num_features, dim))

    def forward(self, x: Tensor) -> Tensor:
        """``[b, F] -> [b, F, D]``."""
        return x[..., None] * self.weight + self.bias


class PeriodicEmbedding(nn.Module):
    def __init__(self, num_features: int, dim: int, *, frequencies: int, scale: float) -> None:
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(num_features, frequencies) * scale)  # [F, k]
        self.weight = nn.Parameter(torch.empty(num_features, 2 * frequencies, dim))  # [F, 2k, D]
        self.bias = nn.Parameter(torch.zeros(num_features, dim))
        bound = 1 / math.sqrt(2 * frequencies)  # nn.Linear's default, per feature
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        angle = 2 * math.pi * self.frequencies * x[..., None]  # [b, F, k]
        v = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)  # [b, F, 2k]
        return torch.relu(torch.einsum("bfk,fkd->bfd", v, self.weight) + self.bias)


class PiecewiseLinearEmbedding(nn.Module):
    def __init__(self, num_features: int, dim: int, *, bins: int) -> None:
        super().__init__()
        self.register_buffer("edges", torch.zeros(num_features, bins + 1))  # [F, n + 1], set by fit_edges / a checkpoint
        self.weight = nn.Parameter(torch.empty(num_features, bins, dim))
        self.bias = nn.Parameter(torch.zeros(num_features, dim))
        bound = 1 / math.sqrt(bins)
        nn.init.uniform_(self.weight, -bound, bound)

    def fit_edges(self, x: np.ndarray) -> None:
        """Quantile edges of the training inputs ``x`` ``[n_rows, F]``."""
        q = np.linspace(0, 1, self.edges.shape[1])
        self.edges.copy_(torch.as_tensor(np.quantile(x, q, axis=0).T, dtype=self.edges.dtype))

    def encode(self, x: Tensor) -> Tensor:
        """``[b, F] -> [b, F, n]``: the piecewise-linear encoding."""
        lo, hi = self.edges[:, :-1], self.edges[:, 1:]  # [F, n]
        t = (x[..., None] - lo) / (hi - lo).clamp(min=1e-12)
        t = torch.where(hi > lo, t, (x[..., None] >= hi).to(x.dtype))  # a zero-width bin is a step
        n = t.shape[-1]
        first = t[..., :1].clamp(max=1.0) if n > 1 else t[..., :1]
        last = t[..., -1:].clamp(min=0.0) if n > 1 else t[..., -1:]
        return torch.cat([first, t[..., 1:-1].clamp(0.0, 1.0), last], dim=-1) if n > 1 else t

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bfn,fnd->bfd", self.encode(x), self.weight) + self.bias


def numeric_embedding(kind: str, num_features: int, dim: int, *, std: float, frequencies: int = 16,
                      frequency_scale: float = 0.1, bins: int = 16) -> nn.Module:
    if kind == "periodic":
        return PeriodicEmbedding(num_features, dim, frequencies=frequencies, scale=frequency_scale)
    if kind == "ple":
        return PiecewiseLinearEmbedding(num_features, dim, bins=bins)
    return LinearEmbedding(num_features, dim, std)
