"""Simple baselines beside every regression result: fitted on the training split only, scored on exactly the
examples the model is scored on (the same split, the same windows), in original units.

Sequences (each window predicts the targets at the rows :meth:`SequenceWindows.target_rows` names; the
last *observed* target is the row before the first predicted one, or the window's last row when
forecasting ahead):

- ``last value``: every predicted step repeats the last observed target;
- ``drift``: the last value plus the window's average change per step times the steps ahead (a random walk
  with drift);
- ``seasonal naive``: the target one (or more) seasons earlier, period ``data.season_period`` or the lag
  of the training targets' highest autocorrelation peak (skipped when no peak reaches 0.3);
- ``seasonal naive + drift``: the seasonal value plus the window's average change per step (observed
  targets, first to last) times the steps between the two;
- ``ridge``: ridge regression on the window's scaled inputs (the model's inputs, flattened, with one-hot
  categories), the penalty chosen on the validation split.

Tables: ``ridge`` as above on each row, and ``gradient boosting`` (scikit-learn's
``HistGradientBoostingRegressor``, one per target; needs the ``regression`` extra; without it the run
says the baseline was skipped).

Shape legend: n examples, H horizon steps, T targets, D design width.
"""

from __future__ import annotations

import math

import numpy as np
import torch.nn.functional as F

from .data import Preprocessing, SequenceWindows
from .module import metrics_numpy

RIDGE_ALPHAS = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
MIN_AUTOCORRELATION = 0.3  # a detected season must explain at least this much


def design_matrix(ds, pre: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """``[n, D]`` flattened scaled inputs + one-hot categories + 1, and ``[n, H*T]`` scaled targets."""
    xs, ys = [], []
    for i in range(len(ds)):
        x, cats, y = ds[i]
        onehot = [F.one_hot(cats[..., j], card).float().reshape(-1) for j, card in enumerate(pre.cardinalities)]
        xs.append(np.concatenate([x.reshape(-1).numpy(), *(o.numpy() for o in onehot), [1.0]]))
        ys.append(y.numpy())
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def ridge_fit(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """``argmin |a w - b|² + alpha |w|²`` with the intercept (the last column) unpenalised; least squares at 0."""
    if alpha == 0:
        return np.linalg.lstsq(a, b, rcond=None)[0]
    penalty = alpha * np.eye(a.shape[1])
    penalty[-1, -1] = 0.0
    return np.linalg.solve(a.T @ a + penalty, a.T @ b)


def to_original_units(pre: Preprocessing, scaled: np.ndarray) -> np.ndarray:
    """``[n, H*T]`` scaled -> original units (the target scaler is per target column)."""
    T = len(pre.targets)
    return pre.target_scaler.inverse(scaled.reshape(len(scaled), -1, T)).reshape(len(scaled), -1)


def ridge_baseline(train, splits: dict, pre: Preprocessing) -> tuple[dict[str, dict], float]:
    """Metrics per split of ridge regression, alpha chosen by validation RMSE; returns (metrics, alpha)."""
    a, b = design_matrix(train, pre)
    evaluated = {name: design_matrix(ds, pre) for name, ds in splits.items()}
    a_val, b_val = evaluated["val"]
    best = min(RIDGE_ALPHAS, key=lambda alpha: float(np.mean((a_val @ ridge_fit(a, b, alpha) - b_val) ** 2)))
    w = ridge_fit(a, b, best)
    return {name: metrics_numpy(to_original_units(pre, x @ w), to_original_units(pre, y)) for name, (x, y) in evaluated.items()}, best


def detect_period(train: SequenceWindows, max_lag: int) -> int | None:
    """The season of the training targets (first target, pooled over segments): the lag in ``2..max_lag`` where
    the autocorrelation has its highest local peak, if that reaches :data:`MIN_AUTOCORRELATION`. A peak, not
    just the highest value: a persistent but unseasonal series (autocorrelation decaying from lag 1) has none."""
    series = [rows[:, 0].astype(np.float64) for rows in train.split_rows()]

    def autocorrelation(lag: int) -> float:
        pairs = [(s[:-lag] - s.mean(), s[lag:] - s.mean()) for s in series if len(s) > lag + 2]
        den = math.sqrt(sum(float(np.dot(x, x)) for x, _ in pairs) * sum(float(np.dot(y, y)) for _, y in pairs)) if pairs else 0.0
        return sum(float(np.dot(x, y)) for x, y in pairs) / den if den > 0 else 0.0

    r = [autocorrelation(lag) if lag else 1.0 for lag in range(max_lag + 2)]
    peaks = [lag for lag in range(2, max_lag + 1) if r[lag] > r[lag - 1] and r[lag] >= r[lag + 1] and r[lag] >= MIN_AUTOCORRELATION]
    return max(peaks, key=lambda lag: r[lag]) if peaks else None


def naive_predictions(ds: SequenceWindows, period: int | None, *, drift: bool,
                      fallback: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[n, H*T]`` scaled predictions of last value (``period`` None) or seasonal naive (+ drift), and the targets.
    A window with no observed target at all (one row, predicting that row, at a segment's start) gets
    ``fallback`` (the training targets' mean), never a row it should not see."""
    preds, targets = [], []
    for i in range(len(ds)):
        seg_id, start = ds.index[i]
        y = ds.segments[seg_id]["y"].astype(np.float64)  # [rows, T]
        _, rows = ds.target_rows(i)
        last = min(start + ds.W - 1, int(rows[0]) - 1)  # the last observed target row
        if last < 0:
            width = y.shape[1]
            preds.append(np.tile(np.zeros(width) if fallback is None else fallback, len(rows)))
            targets.append(y[rows].reshape(-1))
            continue
        slope = (y[last] - y[start]) / (last - start) if drift and last > start else 0.0
        out = []
        for r in rows:
            if period is None:
                out.append(y[last])
                continue
            k = -(-(int(r) - last) // period)  # seasons back to an observed row
            source = int(r) - k * period
            out.append(y[source] + slope * k * period if source >= 0 else y[last])
        preds.append(np.concatenate(out))
        targets.append(y[rows].reshape(-1))
    return np.asarray(preds), np.asarray(targets)


def sequence_baselines(train: SequenceWindows, splits: dict, pre: Preprocessing, period: int | None) -> tuple[dict, list[str]]:
    """{baseline: {split: metrics}} for sequences, and notes on what was skipped or detected."""
    notes = []
    if period is None:
        period = detect_period(train, max_lag=train.W)
        notes.append(f"season period detected: {period}" if period else
                     f"seasonal baselines skipped: the autocorrelation has no peak >= {MIN_AUTOCORRELATION} up to "
                     f"data.window={train.W} lags (set data.season_period to force one)")
    mean = np.concatenate(train.split_rows()).astype(np.float64).mean(0)  # [T], scaled
    results = {}
    for name, p, drift in (("last value", None, False), ("drift", 1, True), ("seasonal naive", period, False),
                           ("seasonal naive + drift", period, True)):
        if name.startswith("seasonal") and period is None:
            continue
        results[name] = {}
        for split, ds in splits.items():
            pred, target = naive_predictions(ds, p, drift=drift, fallback=mean)
            results[name][split] = metrics_numpy(to_original_units(pre, pred), to_original_units(pre, target))
    results["ridge"], alpha = ridge_baseline(train, splits, pre)
    notes.append(f"ridge alpha chosen on validation: {alpha:g}")
    return results, notes


def tabular_baselines(train, splits: dict, pre: Preprocessing, seed: int) -> tuple[dict, list[str]]:
    results, notes = {}, []
    results["ridge"], alpha = ridge_baseline(train, splits, pre)
    notes.append(f"ridge alpha chosen on validation: {alpha:g}")
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
    except ImportError:
        notes.append("gradient boosting skipped: scikit-learn is not installed (pip install 'transformer-toolkit[regression]')")
        return results, notes
    features = lambda ds: np.concatenate([ds.x, ds.cats.astype(np.float32)], axis=1)
    # category codes as categories where the booster takes them (at most 255 values), else as numbers
    categorical = np.array([False] * train.x.shape[1] + [card <= 255 for card in pre.cardinalities])
    models = [HistGradientBoostingRegressor(random_state=seed, categorical_features=categorical if categorical.any() else None)
              .fit(features(train), train.y[:, t]) for t in range(train.y.shape[1])]
    results["gradient boosting"] = {
        split: metrics_numpy(to_original_units(pre, np.stack([m.predict(features(ds)) for m in models], axis=1)), to_original_units(pre, ds.y.astype(np.float64)))
        for split, ds in splits.items()}
    return results, notes


def baselines(data, cfg) -> tuple[dict, list[str]]:
    """Every baseline of the data kind, on the validation and (if any) test examples."""
    splits = {"val": data.val, **({"test": data.test} if data.test is not None else {})}
    if cfg.data.kind == "sequence":
        return sequence_baselines(data.train, splits, data.pre, cfg.data.season_period)
    return tabular_baselines(data.train, splits, data.pre, cfg.seed)
