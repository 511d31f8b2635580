"""Regression data: no leakage in windows or splits, scaling on the training split, exact metrics, clear errors."""

import numpy as np
import pandas as pd
import pytest
import torch

from regression.config import RegressionDataConfig
from regression.data import Scaler, build_data, clean
from regression.module import RegressionMetrics, metrics_numpy


def series_frame(n_series=3, length=40):
    rows = []
    for s in range(n_series):
        for t in range(length):
            rows.append({"sid": f"s{s}", "t": t, "f": s * 1000 + t, "y": s * 1000 + t + 0.5, "cat": "ab"[t % 2]})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # shuffled: the loader must sort by time


def files_cfg(path, **kw):
    base = dict(source="files", path=str(path), kind="sequence", feature_columns=["f"], target_columns=["y"],
                categorical_columns=["cat"], series_column="sid", time_column="t", window=5, horizon=1,
                val_fraction=0.25, test_fraction=0.25, feature_scaling="none", target_scaling="none")
    base.update(kw)
    return RegressionDataConfig(**base)


def test_windows_never_cross_series_and_each_target_is_in_one_split(tmp_path):
    series_frame().to_csv(tmp_path / "s.csv", index=False)
    data = build_data(files_cfg(tmp_path / "s.csv"), seed=0)
    seen = set()
    for split, ds, lo, hi in (("train", data.train, 0, 20), ("val", data.val, 20, 30), ("test", data.test, 30, 40)):
        # every target row of the split once: a window may look back before the split (not in training: row 0 first)
        assert len(ds) == 3 * ((hi - max(lo, 5)))
        for i in range(len(ds)):
            x, cats, y = ds[i]
            series, t = divmod(int(x[0, 0]), 1000)
            assert torch.equal(x[:, 0], torch.arange(5.0) + series * 1000 + t)  # consecutive steps of one series
            assert torch.equal(x[:, 1], x[:, 0] + 0.5)  # the targets' history: observed rows only (horizon 1)
            target = t + 5  # one step after the window: inside the split, inputs all before it
            assert lo <= target < hi and float(y[0]) == series * 1000 + target + 0.5
            assert (series, target) not in seen
            seen.add((series, target))


def test_target_history_carries_the_last_observed_value_into_a_predicted_row(tmp_path):
    series_frame().to_csv(tmp_path / "s.csv", index=False)
    data = build_data(files_cfg(tmp_path / "s.csv", horizon=0), seed=0)
    x, _, y = data.val[0]  # horizon 0: the window's last row is the one predicted
    assert float(y[0]) == float(x[-1, 0]) + 0.5  # its target, which the inputs must not hold:
    assert float(x[-1, 1]) == float(x[-2, 1]) == float(x[-2, 0]) + 0.5  # the last observed target instead
    x, _, _ = build_data(files_cfg(tmp_path / "s.csv", target_history=False), seed=0).val[0]
    assert x.shape == (5, 1)


def test_scaling_round_trip_and_fitted_on_train_only(tmp_path):
    series_frame().to_csv(tmp_path / "s.csv", index=False)
    data = build_data(files_cfg(tmp_path / "s.csv", feature_scaling="standard", target_scaling="minmax"), seed=0)
    train_f = data.frames["train"]["f"].to_numpy()
    assert np.allclose(data.pre.feature_scaler.loc, train_f.mean()) and np.allclose(data.pre.feature_scaler.scale, train_f.std())
    y = np.random.default_rng(0).normal(size=(10, 1)) * 7 + 3
    for kind in ("standard", "minmax", "none"):
        scaler = Scaler.fit(y, kind)
        assert np.allclose(scaler.inverse(scaler.transform(y)), y)
        assert torch.allclose(scaler.inverse(torch.tensor(scaler.transform(y))), torch.tensor(y))


def test_metrics_from_sums_equal_numpy_over_the_whole_split():
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=(103, 3)) * 5, rng.normal(size=(103, 3)) * 5 + 2
    metrics = RegressionMetrics()
    for i in range(0, 103, 10):  # uneven batches: a mean of batch RMSEs would differ
        metrics.update(torch.tensor(pred[i:i + 10]), torch.tensor(target[i:i + 10]))
    ours, ref = metrics.compute(), metrics_numpy(pred, target)
    for key in ("rmse", "mae", "r2", "mape"):
        assert abs(ours[key] - ref[key]) < 1e-9 * max(1, abs(ref[key])), key


def test_missing_and_bad_values(tmp_path):
    frame = series_frame(1, 30).sort_values("t")
    frame.loc[frame.index[5], "f"] = np.nan
    frame.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match="column 'f' has a missing value at row 5; set data.missing"):
        build_data(files_cfg(tmp_path / "m.csv", val_fraction=0.2, test_fraction=0.2), seed=0)
    cleaned = clean(pd.read_csv(tmp_path / "m.csv"), files_cfg(tmp_path / "m.csv", missing="ffill"))
    assert cleaned["f"].iloc[5] == cleaned["f"].iloc[4]
    frame["f"] = frame["f"].astype(object)
    frame.loc[frame.index[7], "f"] = "n/a?"
    frame.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(ValueError, match=r"column 'f' has a non-numeric value 'n/a\?' at row 7"):
        build_data(files_cfg(tmp_path / "b.csv", missing="drop"), seed=0)
    with pytest.raises(ValueError, match=r"column\(s\) \['price'\] not in the data; available columns"):
        build_data(files_cfg(tmp_path / "m.csv", target_columns=["price"]), seed=0)
    with pytest.raises(FileNotFoundError, match="nope.csv' does not exist"):
        build_data(files_cfg(tmp_path / "nope.csv"), seed=0)
    with pytest.raises(ValueError, match="the train split has no complete example"):
        build_data(files_cfg(tmp_path / "m.csv", missing="ffill", window=20), seed=0)


def test_tabular_random_split_and_categories(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=200), "c": rng.choice(["x", "y", "z"], 200)})
    frame["y"] = 2 * frame["a"] + (frame["c"] == "x")
    frame.to_parquet(tmp_path / "t.parquet")
    cfg = RegressionDataConfig(source="files", path=str(tmp_path / "t.parquet"), kind="tabular", feature_columns=["a"],
                               categorical_columns=["c"], target_columns=["y"])
    data = build_data(cfg, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (140, 30, 30)
    assert data.pre.cardinalities == [4]  # x, y, z + unseen
    index = [set(data.frames[s].index) for s in ("train", "val", "test")]
    assert not (index[0] & index[1] or index[0] & index[2] or index[1] & index[2])
