"""Per-window (instance) normalisation of the target channels, RevIN (Kim et al. 2022).

A series whose level drifts past anything the training split saw defeats one global scaler: the model is
asked for values outside the range it learned. RevIN instead shifts each window's target channels by their
own statistics (``mean`` or ``last`` observed value) and divides by their own std, the model predicts in that
frame, and the prediction is mapped back with the same statistics. Shifting (or scaling) the input series then
shifts (or scales) the forecast exactly; with ``last`` the model predicts the change from the last value.

Every measured channel (features, lags, the targets' history) is normalised by its own window statistics, so
the model is free of each window's level and scale (a covariate left in global units would have to be
mapped into the target's window frame, and extrapolates wildly past the training range); calendar features
keep their values, which mean a point in a cycle.

Shapes: b batch, W window, C channels (the last T of which are the targets), T targets, H horizon steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

EPS = 1e-5  # added to the variance, as in RevIN


class WindowNorm(nn.Module):
    def __init__(self, center: str, num_targets: int, normalised: list[bool], *, affine: bool = False) -> None:
        """``normalised`` ``[C]``: which channels to normalise (the last ``num_targets`` are the targets, always)."""
        super().__init__()
        if center not in ("mean", "last"):
            raise ValueError(f"window normalisation centre {center!r} must be mean or last")
        self.center, self.T = center, num_targets
        self.register_buffer("mask", torch.tensor(list(normalised[:-num_targets]) + [True] * num_targets), persistent=False)
        self.weight = nn.Parameter(torch.ones(len(normalised))) if affine else None
        self.bias = nn.Parameter(torch.zeros(len(normalised))) if affine else None

    def normalise(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x`` ``[b, W, C]`` -> (``x`` normalised, the targets' (centre, scale) ``[b, 1, T]``)."""
        center = x.mean(1, keepdim=True) if self.center == "mean" else x[:, -1:]  # [b, 1, C]
        scale = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + EPS)
        z = torch.where(self.mask, (x - center) / scale, x)
        if self.weight is not None:
            z = z * self.weight + self.bias
        return z, (center[..., -self.T:], scale[..., -self.T:])

    def denormalise(self, pred: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
        """``pred`` ``[b, H, T]`` in the normalised frame -> the input's frame."""
        center, scale = stats
        if self.weight is not None:  # as RevIN's reference code
            pred = (pred - self.bias[-self.T:]) / (self.weight[-self.T:] + EPS * EPS)
        return pred * scale + center
