"""Baselines: written from their definitions on series whose answer is known, scored on exactly the model's
examples (the same split and windows), and the one-line errors of their settings."""

import numpy as np
import pandas as pd
import pytest

from regression.baselines import baselines, detect_period, naive_predictions
from regression.config import RegressionDataConfig, RegressionRunConfig
from regression.data import build_data


def _series_data(tmp_path, y_of_t, *, window=8, horizon=0, horizon_steps=1, period=None, n=240, series=2):
    rows = [pd.DataFrame({"site": s, "t": np.arange(n), "x": np.sin(np.arange(n) / 3.0), "y": y_of_t(np.arange(n)) + 10 * s})
            for s in range(series)]
    pd.concat(rows).to_csv(tmp_path / "s.csv", index=False)
    cfg = RegressionDataConfig(source="files", path=str(tmp_path / "s.csv"), kind="sequence", feature_columns=["x"],
                               target_columns=["y"], series_column="site", time_column="t", window=window, horizon=horizon,
                               horizon_steps=horizon_steps, season_period=period)
    return cfg, build_data(cfg, seed=0)


def _run_cfg(data_cfg):
    return RegressionRunConfig(data=data_cfg)


def test_last_value_is_the_last_observed_target_of_each_model_window(tmp_path):
    cfg, data = _series_data(tmp_path, lambda t: np.random.default_rng(0).normal(size=len(t)).cumsum())
    pred, target = naive_predictions(data.test, None, drift=False)
    assert len(pred) == len(data.test)  # the model's test windows, one prediction each
    for i in (0, 5, len(data.test) - 1):  # horizon 0: the target is the window's last row; the row before is observed
        seg, start = data.test.index[i]
        y = data.test.segments[seg]["y"][:, 0]
        assert pred[i, 0] == pytest.approx(y[start + cfg.window - 2]) and target[i, 0] == pytest.approx(y[start + cfg.window - 1])
    # forecasting 3 steps ahead, 2 steps: the window's last row is the last observed one
    cfg, data = _series_data(tmp_path, lambda t: t * 0.5, horizon=3, horizon_steps=2)
    pred, target = naive_predictions(data.val, None, drift=False)
    seg, start = data.val.index[0]
    y = data.val.segments[seg]["y"][:, 0]
    assert pred[0] == pytest.approx([y[start + 7], y[start + 7]]) and target[0] == pytest.approx([y[start + 10], y[start + 11]])


def test_seasonal_naive_is_exact_on_a_periodic_series_and_drift_fixes_a_trend(tmp_path):
    pattern = np.array([3.0, -1.0, 4.0, 1.0, -5.0, 9.0, 2.0])  # period 7
    cfg, data = _series_data(tmp_path, lambda t: pattern[t % 7], window=16)
    assert detect_period(data.train, max_lag=16) == 7
    scores, notes = baselines(data, _run_cfg(cfg))
    assert "season period detected: 7" in notes
    assert scores["seasonal naive"]["test"]["rmse"] < 1e-5 and scores["last value"]["test"]["rmse"] > 1.0
    # a straight line: seasonal naive is off by slope * period, adding the window's drift makes it exact
    cfg, data = _series_data(tmp_path, lambda t: 0.25 * t, window=16, period=5, horizon=2, horizon_steps=3)
    scores, _ = baselines(data, _run_cfg(cfg))
    assert scores["seasonal naive"]["test"]["rmse"] > 0.5 and scores["seasonal naive + drift"]["test"]["rmse"] < 1e-4
    assert scores["ridge"]["test"]["rmse"] > 0  # scored on the same test windows
    assert set(scores["ridge"]) == {"val", "test"}


def test_no_season_found_skips_the_seasonal_baselines_and_says_so(tmp_path):
    def ar1(t):  # persistent (autocorrelation 0.9, 0.81, ...) but without a season: no peak to find
        rng, y = np.random.default_rng(1), np.zeros(len(t))
        for i in range(1, len(t)):
            y[i] = 0.9 * y[i - 1] + rng.normal()
        return y

    for y_of_t in (lambda t: np.random.default_rng(1).normal(size=len(t)), ar1):
        cfg, data = _series_data(tmp_path, y_of_t)
        scores, notes = baselines(data, _run_cfg(cfg))
        assert "seasonal naive" not in scores and any("seasonal baselines skipped" in n for n in notes), notes


def test_tabular_ridge_and_gradient_boosting(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=500), "b": rng.normal(size=500), "c": rng.choice(["u", "v", "w"], 500)})
    frame["y"] = 3 * frame["a"] - 2 * frame["b"] + frame["c"].map({"u": 0.0, "v": 5.0, "w": -5.0})
    frame.to_csv(tmp_path / "t.csv", index=False)
    cfg = RegressionDataConfig(source="files", path=str(tmp_path / "t.csv"), kind="tabular", feature_columns=["a", "b"],
                               categorical_columns=["c"], target_columns=["y"])
    data = build_data(cfg, seed=0)
    scores, notes = baselines(data, _run_cfg(cfg))
    assert scores["ridge"]["test"]["rmse"] < 1e-3  # the target is linear in the inputs and one-hot categories
    pytest.importorskip("sklearn")
    assert 0 < scores["gradient boosting"]["test"]["rmse"] < frame["y"].std()
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith("sklearn") else real_import(name, *a, **k))
    scores, notes = baselines(data, _run_cfg(cfg))
    assert "gradient boosting" not in scores and any("scikit-learn is not installed" in n for n in notes)


def test_season_period_errors(tmp_path):
    with pytest.raises(ValueError, match=r"data.season_period=1 must be in \[2, inf\]"):
        RegressionDataConfig(season_period=1)
    with pytest.raises(ValueError, match=r"data.season_period=500 is longer than the training part of every series \(the longest has 168 rows\)"):
        _series_data(tmp_path, lambda t: t * 1.0, period=500)


def test_a_window_without_an_observed_target_never_sees_its_own_target(tmp_path):
    cfg, data = _series_data(tmp_path, lambda t: np.random.default_rng(2).normal(size=len(t)), window=1)
    pred, target = naive_predictions(data.train, None, drift=False, fallback=np.array([0.123]))
    assert pred[0, 0] == pytest.approx(0.123)  # the first window of a series: nothing observed yet
    seg, start = data.train.index[1]
    assert pred[1, 0] == pytest.approx(data.train.segments[seg]["y"][start - 1, 0])  # then the previous row
    # a test window may look back into the validation rows before it (observed by then), never forward
    pred, target = naive_predictions(data.test, None, drift=False, fallback=np.array([0.123]))
    seg, start = data.test.index[0]
    assert start == data.test.bounds[seg][0] and pred[0, 0] == pytest.approx(data.test.segments[seg]["y"][start - 1, 0])
