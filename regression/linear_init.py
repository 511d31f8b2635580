"""The linear skip of a sequence regressor, fitted in closed form before training.

``regressor.linear_skip`` adds ``skip(z)``, a linear map of the (window-normalised) input window ``z``, to the
transformer's prediction. Fitted by ridge regression on the training windows in the model's own frame (alpha
chosen by validation error in original units, the head starting at zero), the model begins at the best
linear forecast of its frame — under ``window_norm`` one that follows each window's level, which a ridge on
the global scaling cannot — and training fits what that misses, with the best checkpoint kept by validation.

Shapes: n windows, W window, C channels, T targets, H horizon steps, P = W * C + 1 design columns.
"""

from __future__ import annotations

import numpy as np
import torch

from .baselines import RIDGE_ALPHAS, ridge_fit, to_original_units

MAX_WINDOWS = 50_000  # a least-squares fit on more windows than this gains nothing; a seeded subset is used


@torch.no_grad()
def _frame(model, ds, limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Design ``[n, P]`` of normalised windows (+ 1), targets in the normalised frame ``[n, H*T]``, and the
    window statistics to map predictions back."""
    index = np.arange(len(ds))
    if limit is not None and len(index) > limit:
        index = np.sort(np.random.default_rng(seed).choice(index, limit, replace=False))
    x = torch.stack([ds[int(i)][0] for i in index]).double()  # [n, W, C] (tables: [n, F])
    y = torch.stack([ds[int(i)][2] for i in index]).double()  # [n, H*T], globally scaled
    n, H, T = len(index), model.horizon_steps, model.num_targets
    stats = None
    if getattr(model, "window_norm", None) is not None:
        x, stats = model.window_norm.double().normalise(x)
        model.window_norm.float()
        center, scale = stats
        y = ((y.reshape(n, H, T) - center) / scale).reshape(n, -1)
    return np.concatenate([x.reshape(n, -1).numpy(), np.ones((n, 1))], axis=1), y.numpy(), stats


def _back(model, pred: np.ndarray, stats) -> np.ndarray:
    if stats is None:
        return pred
    center, scale = (s.numpy() for s in stats)
    n = len(pred)
    return (pred.reshape(n, model.horizon_steps, model.num_targets) * scale + center).reshape(n, -1)


@torch.no_grad()
def fit_linear_skip(model, train, val, pre, seed: int = 0) -> tuple[float, float]:
    """Set ``model.skip`` to the ridge fit on ``train`` (alpha by ``val`` error in original units, through ``pre``'s
    target scaler); returns the alpha and that validation RMSE."""
    a, b, stats = _frame(model, train, MAX_WINDOWS, seed)
    a_val, b_val, stats_val = _frame(model, val)
    truth = to_original_units(pre, _back(model, b_val, stats_val))
    H, T = model.horizon_steps, model.num_targets
    # an error in the normalised frame is ``scale`` times smaller than in the model's loss frame: weight each
    # window by scale² (per target), so the fit minimises the same squared error as training and the metrics
    weights = np.ones((len(a), H * T)) if stats is None else np.tile(stats[1].numpy()[:, 0] ** 2, (1, H))

    def fit(alpha: float) -> np.ndarray:  # [P, H*T], one weighted ridge per output column
        root = np.sqrt(weights)
        return np.stack([ridge_fit(a * root[:, j:j + 1], b[:, j] * root[:, j], alpha) for j in range(H * T)], axis=1)

    def error(alpha: float) -> float:
        pred = to_original_units(pre, _back(model, a_val @ fit(alpha), stats_val))
        return float(np.mean((pred - truth) ** 2))

    errors = {al: error(al) for al in RIDGE_ALPHAS if al > 0}  # alpha 0 is unstable on few windows
    alpha = min(errors, key=errors.get)
    w = fit(alpha)
    model.skip.weight.copy_(torch.as_tensor(w[:-1].T, dtype=model.skip.weight.dtype))
    model.skip.bias.copy_(torch.as_tensor(w[-1], dtype=model.skip.bias.dtype))
    return alpha, float(np.sqrt(errors[alpha]))
