"""Per-window (instance) normalisation of the target channels, RevIN (Kim et al. 2022).

A series whose level drifts past anything the training split saw defeats one global scaler: the model is
asked for values outside the range it learned. RevIN instead shifts each window's target channels by their
own statistics (``mean`` or ``last`` observed value) and divides by their own std, the model predicts in that
frame, and the prediction is mapped back with the same statistics. Shifting (or scaling) the input series then
shifts (or scales) the forecast exactly; with ``last`` the model predicts the change from the last value.

Only the target channels are normalised: covariates (calendar features, exogenous inputs) keep the global
scaling, so their levels keep their meaning.

Shapes: b batch, W window, C channels (the last T of which are the targets), T targets, H horizon steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

EPS = 1e-5  # added to the variance, as in RevIN


class WindowNorm(nn.Module):
    def __init__(self, center: str, num_targets: int, *, affine: bool = False) -> None:
        super().__init__()
        if center not in ("mean", "last"):
            raise ValueError(f"window normalisation centre {center!r} must be mean or last")
        self.center, self.T = center, num_targets
        self.weight = nn.Parameter(torch.ones(num_targets)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_targets)) if affine else None

    def normalise(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x`` ``[b, W, C]`` -> (``x`` with its last ``T`` channels normalised, their (centre, scale) ``[b, 1, T]``)."""
        y = x[..., -self.T:]
        center = y.mean(1, keepdim=True) if self.center == "mean" else y[:, -1:]
        scale = torch.sqrt(y.var(1, keepdim=True, unbiased=False) + EPS)
        z = (y - center) / scale
        if self.weight is not None:
            z = z * self.weight + self.bias
        return torch.cat([x[..., :-self.T], z], dim=-1), (center, scale)

    def denormalise(self, pred: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
        """``pred`` ``[b, H, T]`` in the normalised frame -> the input's frame."""
        center, scale = stats
        if self.weight is not None:
            pred = (pred - self.bias) / (self.weight + EPS * EPS)  # as RevIN's reference code
        return pred * scale + center
