"""Forecasting inputs and models: window normalisation (equivariance, trends past the training range), the
linear skip's least-squares start, patches and channel independence, calendar features and target lags,
numeric feature embeddings, and the one-line errors of their settings."""

import numpy as np
import pandas as pd
import pytest
import torch

from regression.baselines import ridge_fit
from regression.config import RegressionDataConfig, RegressionRunConfig, RegressorConfig
from regression.data import build_data
from regression.h_transformer import SequenceRegressor, TabularRegressor, patches
from regression.numeric_embeddings import PiecewiseLinearEmbedding
from transformer.cli import load_any_config
from transformer.config import ModelConfig


def enc(**kw):
    base = dict(kind="encoder", vocab_size=1, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=32, pooling="last",
                attention={"type": "mha", "positional": "rope"})
    base.update(kw)
    return ModelConfig(**base)


def _random_head(model):  # a trained-looking model: the zero-initialised head and skip given values
    torch.manual_seed(3)
    for layer in (model.head[-1], model.skip):
        if layer is not None:
            torch.nn.init.normal_(layer.weight, 0, 0.3)
            torch.nn.init.normal_(layer.bias, 0, 0.3)
    return model.eval()


@pytest.mark.parametrize("center", ["last", "mean"])
@pytest.mark.parametrize("reader", [{}, {"patch_len": 4, "patch_stride": 2}, {"patch_len": 4, "channel_independent": True}])
def test_window_norm_is_shift_and_scale_equivariant(center, reader):
    r = RegressorConfig(window_norm=center, linear_skip=True, window_norm_affine=True, **reader)
    model = _random_head(SequenceRegressor(enc(), num_features=4, num_targets=2, horizon_steps=3, regressor=r, window=12,
                                           target_channels=2, normalised=[False, True, True, True]))
    x = torch.randn(5, 12, 4, dtype=torch.float64) * 3
    model.double()
    base = model(x).reshape(5, 3, 2)
    shift = torch.tensor([0.0, 7.0, -50.0, 1e3], dtype=torch.float64)  # channel 0 is a calendar feature: kept
    shifted = model(x + shift).reshape(5, 3, 2)
    torch.testing.assert_close(shifted, base + shift[-2:], atol=1e-8, rtol=1e-9)  # the forecast moves with the series
    scaled = model(torch.cat([x[..., :1], x[..., 1:] * 10], dim=-1)).reshape(5, 3, 2)
    torch.testing.assert_close(scaled, base * 10, atol=1e-3, rtol=2e-4)  # EPS in the variance: not exact
    assert not torch.allclose(model(x + torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)), model(x))  # calendar counts


def test_a_trend_past_the_training_range_is_forecast(tmp_path):
    """A rising line with noise: every test value is above the training maximum, where one global scaler fails."""
    t = np.arange(400)
    y = 0.1 * t + 2 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(0).normal(0, 0.2, len(t))
    pd.DataFrame({"t": t, "y": y}).to_csv(tmp_path / "trend.csv", index=False)
    cfg = load_any_config("configs/regression/csv_timeseries.yaml", [
        f"data.path={tmp_path / 'trend.csv'}", "data.target_columns=[y]", "data.feature_columns=[]", "data.series_column=null",
        "data.time_column=t", "data.window=24", "data.horizon=1", "data.horizon_steps=1", f"out_dir={tmp_path}",
        "trainer.max_steps=60", "trainer.val_check_interval=20", "trainer.progress_bar=false", "model.num_layers=1",
        "model.embed_dim=32", "model.num_heads=4", "model.attention.num_kv_heads=2"])
    from regression.cli import run

    result = run(cfg)
    assert min(y[-60:]) > max(y[:280])  # the test part lies above everything the model trained on
    assert result.test["rmse"] < 0.4 and result.test["r2"] > 0.9  # noise 0.2; the global-scaler model was R² < 0
    baseline = min(m["test"]["rmse"] for m in result.baselines.values())
    assert result.test["rmse"] <= 1.05 * baseline


def test_the_linear_skip_starts_at_the_ridge_fit_of_the_model_frame(tmp_path):
    t = np.arange(300)
    frame = pd.DataFrame({"t": t, "x": np.cos(t / 5.0), "y": np.sin(t / 7.0) + 0.1 * np.random.default_rng(1).normal(size=300)})
    frame.to_csv(tmp_path / "s.csv", index=False)
    cfg = load_any_config("configs/regression/csv_timeseries.yaml", [
        f"data.path={tmp_path / 's.csv'}", "data.target_columns=[y]", "data.feature_columns=[x]", "data.series_column=null",
        "data.time_column=t", "data.window=6", "data.horizon=1", "data.horizon_steps=1", "regressor.window_norm=none",
        "data.feature_scaling=none", "data.target_scaling=none"])
    from regression.task import RegressionTask

    task = RegressionTask()
    data = task.build_data(cfg, 0)
    model = task.build_module(cfg, data).model.eval()
    alpha = float(task.notes[0].split("alpha ")[1].split(")")[0])
    x = np.stack([data.train[i][0].numpy().reshape(-1) for i in range(len(data.train))]).astype(np.float64)
    b = np.stack([data.train[i][2].numpy() for i in range(len(data.train))]).astype(np.float64)
    w = ridge_fit(np.concatenate([x, np.ones((len(x), 1))], axis=1), b, alpha)  # written out again: same windows
    xv = torch.stack([data.val[i][0] for i in range(len(data.val))])
    expected = np.concatenate([xv.reshape(len(xv), -1).numpy(), np.ones((len(xv), 1))], axis=1) @ w
    with torch.no_grad():
        torch.testing.assert_close(model(xv).double(), torch.as_tensor(expected), atol=1e-4, rtol=1e-4)


def test_patches_shapes_padding_and_token_count():
    x = torch.arange(10.0).reshape(1, 10, 1)
    p = patches(x, 4, 2)  # starts 0, 2, 4, 6: ends on the last step, no padding
    assert p.shape == (1, 4, 4, 1) and p[0, -1, :, 0].tolist() == [6, 7, 8, 9]
    p = patches(x, 4, 4)  # starts 0, 4, 8: the last patch is padded by repeating step 9
    assert p.shape == (1, 3, 4, 1) and p[0, -1, :, 0].tolist() == [8, 9, 9, 9]
    for W, P, S in ((10, 4, 2), (10, 4, 4), (12, 12, None), (7, 3, 1)):
        cfg = RegressionRunConfig(data=RegressionDataConfig(window=W), regressor=RegressorConfig(patch_len=P, patch_stride=S))
        assert cfg.tokens_per_window() == patches(torch.zeros(1, W, 1), P, S or P).shape[1]
    for r in ({"patch_len": 4, "patch_stride": 2}, {"patch_len": 3, "channel_independent": True}, {"channel_independent": True}):
        model = SequenceRegressor(enc(pooling="cls"), num_features=3, num_targets=2, horizon_steps=4, cardinalities=[5],
                                  regressor=RegressorConfig(window_norm="none", linear_skip=False, **r), window=10)
        assert model(torch.randn(2, 10, 3), torch.randint(0, 5, (2, 10, 1))).shape == (2, 8)
        with pytest.raises(ValueError, match="a padding mask needs one token per step"):
            model(torch.randn(2, 10, 3), padding_mask=torch.ones(2, 10))


def test_patch_and_window_settings_give_one_line_errors():
    with pytest.raises(ValueError, match=r"data.window=64 gives 64 tokens .* more than model.max_seq_len=32; raise model.max_seq_len or use patches"):
        RegressionRunConfig(model=enc(), data=RegressionDataConfig(window=64))
    RegressionRunConfig(model=enc(), data=RegressionDataConfig(window=64), regressor=RegressorConfig(patch_len=8))  # 8 patches fit
    with pytest.raises(ValueError, match="regressor.patch_len=80 is longer than data.window=64"):
        RegressionRunConfig(data=RegressionDataConfig(window=64), regressor=RegressorConfig(patch_len=80))
    with pytest.raises(ValueError, match="regressor.window_norm=last .* needs data.target_history=true"):
        RegressionRunConfig(data=RegressionDataConfig(target_history=False), regressor=RegressorConfig(window_norm="last"))
    with pytest.raises(ValueError, match="regressor.patch_stride needs regressor.patch_len"):
        RegressorConfig(patch_stride=2)


def _dated(tmp_path, freq, n=120, **cfg):
    times = pd.date_range("2021-01-01", periods=n, freq=freq)
    pd.DataFrame({"when": times.astype(str), "y": np.arange(n, dtype=float)}).to_csv(tmp_path / "d.csv", index=False)
    base = dict(source="files", path=str(tmp_path / "d.csv"), kind="sequence", target_columns=["y"], time_column="when",
                window=4, horizon=1)
    base.update(cfg)
    return RegressionDataConfig(**base)


def test_a_time_column_gives_calendar_features(tmp_path):
    data = build_data(_dated(tmp_path, "h", time_features=["hour", "day_of_week", "month"], feature_scaling="none"), seed=0)
    names = data.pre.features
    assert names == [f"when:{f}_{p}" for f in ("hour", "day_of_week", "month") for p in ("sin", "cos")]
    frame = data.frames["train"]
    hours = pd.to_datetime(frame["when"]).dt.hour.to_numpy()
    np.testing.assert_allclose(frame["when:hour_sin"], np.sin(2 * np.pi * hours / 24), atol=1e-12)
    np.testing.assert_allclose(frame["when:day_of_week_cos"], np.cos(2 * np.pi * pd.to_datetime(frame["when"]).dt.dayofweek / 7))
    x, _, _ = data.train[0]
    assert x.shape == (4, 6 + 1)  # six calendar channels, then the target's history
    auto = lambda freq: build_data(_dated(tmp_path, freq, time_features=["auto"]), seed=0).pre.time_features
    assert auto("h") == ["hour", "day_of_week", "day_of_year"] and auto("D") == ["day_of_week", "day_of_year"]
    assert auto("MS") == ["month"] and auto("QS") == ["quarter"] and auto("YS") == []


def test_target_lags_are_the_target_rows_earlier_within_each_series(tmp_path):
    frame = pd.DataFrame({"s": np.repeat(["a", "b"], 30), "t": np.tile(np.arange(30), 2),
                          "y": np.concatenate([np.arange(30.0), 100 + np.arange(30.0)])})
    frame.to_csv(tmp_path / "l.csv", index=False)
    cfg = RegressionDataConfig(source="files", path=str(tmp_path / "l.csv"), kind="sequence", target_columns=["y"],
                               series_column="s", time_column="t", window=3, horizon=1, lags=[5], feature_scaling="none",
                               target_scaling="none")
    data = build_data(cfg, seed=0)
    train = data.frames["train"]
    assert (train["y:lag5"] == train["y"] - 5).all()  # never the other series' rows
    assert len(data.frames["train"]) + len(data.frames["val"]) + len(data.frames["test"]) == 2 * 25  # 5 rows lost each
    x, _, _ = data.train[0]
    assert x.shape == (3, 2) and float(x[0, 0]) == float(x[0, 1]) - 5


@pytest.mark.parametrize("make,pattern", [
    (lambda p: pd.DataFrame({"t": [0, 1, 2, 2, 3] * 8, "y": np.arange(40.0)}),
     r"column 't' \(data.time_column\) is not strictly increasing: the value 0 appears twice .* name their column in data.series_column"),
    (lambda p: pd.DataFrame({"t": [str(d.date()) for d in pd.date_range("2020-01-01", periods=29)] + ["soon"], "y": np.arange(30.0)}),
     r"column 't' \(data.time_column\) has a value that is not a date / time: 'soon'"),
    (lambda p: pd.DataFrame({"t": np.arange(30), "y": np.arange(30.0)}),
     r"data.time_features need a date / time column, but data.time_column='t' holds numbers"),
])
def test_bad_time_columns_give_one_line_errors(tmp_path, make, pattern):
    make(tmp_path).to_csv(tmp_path / "bad.csv", index=False)
    cfg = RegressionDataConfig(source="files", path=str(tmp_path / "bad.csv"), kind="sequence", target_columns=["y"],
                               time_column="t", window=3, horizon=1,
                               time_features=["month"] if "numbers" in pattern or "not a date" in pattern else [])
    with pytest.raises(ValueError, match=pattern):
        build_data(cfg, seed=0)


def test_too_few_rows_and_bad_feature_settings_give_one_line_errors(tmp_path):
    pd.DataFrame({"t": np.arange(12), "y": np.arange(12.0)}).to_csv(tmp_path / "short.csv", index=False)
    cfg = RegressionDataConfig(source="files", path=str(tmp_path / "short.csv"), kind="sequence", target_columns=["y"],
                               time_column="t", window=16, horizon=1)
    with pytest.raises(ValueError, match=r"the train split has no complete example: one needs 17 rows of one series "
                                         r"\(data.window=16 \+ data.horizon=1 .* the longest series has 12 rows"):
        build_data(cfg, seed=0)
    with pytest.raises(ValueError, match=r"data.lags=\[40\]: no series is longer than its largest lag \(40 rows\)"):
        build_data(RegressionDataConfig(**{**cfg.__dict__, "window": 2, "lags": [40]}), seed=0)
    with pytest.raises(ValueError, match="data.time_features needs data.time_column"):
        RegressionDataConfig(time_features=["month"])
    with pytest.raises(ValueError, match="data.time_features='weekday' is not one of"):
        RegressionDataConfig(time_column="t", time_features=["weekday"])
    with pytest.raises(ValueError, match=r"data.lags=0 must be in \[1, inf\]"):
        RegressionDataConfig(lags=[0])


def test_piecewise_linear_encoding_matches_the_papers_definition():
    emb = PiecewiseLinearEmbedding(2, 8, bins=4)
    train = np.stack([np.linspace(0, 8, 101), np.repeat([0.0, 1.0], [60, 41])], axis=1)  # feature 1: two values only
    emb.fit_edges(train)
    x = torch.tensor([[-1.0, 0.0], [3.0, 0.5], [9.0, 1.0]])
    edges = emb.edges.numpy()
    for row in x.numpy():
        for f, value in enumerate(row):
            b = edges[f]
            expected = []
            for t in range(4):  # Gorishniy et al. 2022, eq. (PLE): first bin open below, last open above
                lo, hi = b[t], b[t + 1]
                if hi == lo:
                    e = float(value >= hi)
                elif value < lo and t > 0:
                    e = 0.0
                elif value >= hi and t < 3:
                    e = 1.0
                else:
                    e = (value - lo) / (hi - lo)
                expected.append(e)
            got = emb.encode(torch.tensor(row)[None])[0, f].numpy()
            np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(edges[0], [0, 2, 4, 6, 8])


@pytest.mark.parametrize("kind", ["linear", "periodic", "ple"])
def test_tabular_numeric_embeddings_run_and_train(kind):
    cfg = enc(pooling="cls", attention={"type": "mha", "positional": "none"})
    model = TabularRegressor(cfg, num_features=3, num_targets=1, cardinalities=[4], regressor=RegressorConfig(numeric_embedding=kind))
    if kind == "ple":
        model.numeric.fit_edges(np.random.default_rng(0).normal(size=(200, 3)))
    x, cats = torch.randn(16, 3), torch.randint(0, 4, (16, 1))
    out = model(x, cats)
    out.sum().backward()
    assert out.shape == (16, 1) and all(p.grad is not None for p in model.numeric.parameters())


def test_an_old_tabular_checkpoint_still_loads():
    cfg = enc(pooling="cls", attention={"type": "mha", "positional": "none"})
    model = TabularRegressor(cfg, num_features=3, num_targets=1)
    state = {("weight" if k == "numeric.weight" else "bias" if k == "numeric.bias" else k): v for k, v in model.state_dict().items()}
    fresh = TabularRegressor(cfg, num_features=3, num_targets=1)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.numeric.weight, model.numeric.weight)


def test_window_norm_auto_is_recorded_and_a_resume_accepts_it(tmp_path, capsys):
    t = np.arange(200)
    pd.DataFrame({"t": t, "y": 0.1 * t + np.sin(t / 3.0)}).to_csv(tmp_path / "s.csv", index=False)
    args = [f"data.path={tmp_path / 's.csv'}", "data.target_columns=[y]", "data.feature_columns=[]", "data.series_column=null",
            "data.time_column=t", "data.window=8", "data.horizon=1", "data.horizon_steps=1", f"out_dir={tmp_path / 'runs'}",
            "trainer.val_check_interval=5", "trainer.progress_bar=false", "model.num_layers=1", "name=auto"]
    from regression.cli import run
    from regression.predict import load_regressor

    first = run(load_any_config("configs/regression/csv_timeseries.yaml", [*args, "trainer.max_steps=10"]))
    chosen = [n for n in first.model_notes if n.startswith("window_norm auto: ")]
    assert chosen and chosen[0].split()[2] in ("none", "mean", "last")
    assert "window_norm auto" in capsys.readouterr().out
    _, cfg, _ = load_regressor(first.run_dir / "checkpoints" / "last.ckpt")
    assert cfg.regressor.window_norm == chosen[0].split()[2]  # the checkpoint holds the choice, not "auto"
    resumed = run(load_any_config("configs/regression/csv_timeseries.yaml", [*args, "trainer.max_steps=20", "resume_from=auto"]))
    assert resumed.run_dir == first.run_dir and resumed.steps == 20
