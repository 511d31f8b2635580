"""Regression runs end to end: training, metrics, checkpoints, predict, and the embedded default's quality."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from regression.cli import run
from regression.config import RegressionRunConfig
from regression.predict import load_regressor, main as main_predict, predict_file
from transformer.cli import load_any_config, main


def quick(tmp_path, *extra):
    return load_any_config("configs/regression/default.yaml", [
        f"out_dir={tmp_path}", "trainer.max_steps=30", "trainer.val_check_interval=15", "trainer.progress_bar=false",
        "data.synthetic_series=4", "data.synthetic_length=200", "model.num_layers=1", *extra])


@pytest.mark.parametrize("attention_type", ["gqa", "mla"])
def test_quick_run_predict_and_checkpoint(tmp_path, attention_type, capsys):
    extra = [f"model.attention.type={attention_type}"] + (["model.attention.num_kv_heads=2"] if attention_type == "gqa" else [])
    cfg = quick(tmp_path, *extra)
    assert isinstance(cfg, RegressionRunConfig)
    result = run(cfg)
    assert set(result.val) >= {"rmse", "mae", "r2"} and result.val["rmse"] > 0
    assert {"last value", "ridge"} <= set(result.baselines) and result.baselines["ridge"]["val"]["rmse"] > 0
    logged = pd.read_csv(result.run_dir / "csv" / "metrics.csv")  # the baselines are logged beside the model
    assert logged["baseline/ridge/test_rmse"].dropna().item() == pytest.approx(result.baselines["ridge"]["test"]["rmse"])
    assert logged["baseline/last_value/val_mae"].dropna().item() == pytest.approx(result.baselines["last value"]["val"]["mae"])
    ckpt = next((result.run_dir / "checkpoints").glob("step*-rmse*.ckpt"))
    model, saved_cfg, pre = load_regressor(ckpt)
    assert saved_cfg.model.attention.type == attention_type and pre.targets == ["y"]
    # predict: one row per window, in original units
    from regression.data import synthetic_frame

    frame = synthetic_frame(cfg.data, seed=5)
    frame.to_csv(tmp_path / "new.csv", index=False)
    out = predict_file(ckpt, tmp_path / "new.csv", tmp_path / "pred.csv")
    assert len(out) == len(frame) - cfg.data.window + 1 and list(out.columns)[-2:] == ["y", "pred_y"]
    assert abs(out["pred_y"].std() - frame["y"].std()) < frame["y"].std()  # original units, not standardised
    # the input held the target: the actual value sits beside each prediction, and the metrics are the direct ones
    ends = out["window_end_row"].to_numpy()
    assert np.array_equal(out["y"].to_numpy(), frame.sort_values(["series", "t"])["y"].to_numpy()[ends])
    expected = {"rmse": float(np.sqrt(np.mean((out["pred_y"] - out["y"]) ** 2))),
                "mape": float(100 * np.mean(np.abs(out["pred_y"] - out["y"]) / np.abs(out["y"])))}
    saved = json.loads((tmp_path / "pred.csv.metrics.json").read_text())
    assert saved["predictions"] == len(out) and all(abs(saved[k] - v) < 1e-9 for k, v in expected.items())
    with pytest.raises(FileExistsError):
        predict_file(ckpt, tmp_path / "new.csv", tmp_path / "pred.csv")
    # the embedded default needs no input file: --synthetic draws fresh data (the run's seed + 1)
    assert main_predict([str(ckpt), "--synthetic", str(tmp_path / "syn.csv"), "--write-input", str(tmp_path / "in.csv")]) == 0
    assert "against the" in capsys.readouterr().out and "MAPE" in (tmp_path / "syn.csv.metrics.json").read_text().upper()
    assert np.allclose(pd.read_csv(tmp_path / "in.csv")["y"], synthetic_frame(cfg.data, seed=cfg.seed + 1)["y"])
    with pytest.raises(SystemExit, match="2"):
        main_predict([str(ckpt), "--synthetic", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    assert "give only the predictions file" in capsys.readouterr().err


def test_tabular_csv_run_and_predict(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"area": rng.uniform(30, 200, 600), "rooms": rng.integers(1, 6, 600), "city": rng.choice(["a", "b"], 600)})
    frame["price"] = 3000 * frame["area"] + 10000 * frame["rooms"] + np.where(frame["city"] == "a", 50000, 0) + rng.normal(0, 1000, 600)
    frame.to_csv(tmp_path / "houses.csv", index=False)
    cfg = load_any_config("configs/regression/csv_tabular.yaml", [
        f"out_dir={tmp_path}", f"data.path={tmp_path / 'houses.csv'}", "data.feature_columns=[area,rooms]",
        "data.categorical_columns=[city]", "data.target_columns=[price]", "trainer.max_steps=20",
        "trainer.val_check_interval=10", "trainer.progress_bar=false", "model.num_layers=1"])
    result = run(cfg)
    out = predict_file(next((result.run_dir / "checkpoints").glob("step*.ckpt")), tmp_path / "houses.csv", tmp_path / "p.parquet")
    assert len(out) == 600 and out["pred_price"].mean() > 1000  # original units (prices), not z-scores
    assert out["price"].tolist() == frame["price"].tolist()  # the actual value beside its prediction


def test_cli_errors_for_regression(tmp_path, capsys):
    assert main(["--config", "configs/regression/csv_tabular.yaml", f"data.path={tmp_path}/missing.csv", f"out_dir={tmp_path}"]) == 1
    assert "missing.csv' does not exist" in capsys.readouterr().err
    assert main(["--config", "configs/regression/default.yaml", "data.windw=3"]) == 2
    assert "data.windw" in capsys.readouterr().err


@pytest.mark.parametrize("attention", [
    pytest.param(["model.attention.type=mha"], id="mha"),  # ~35 s: in the default suite
    pytest.param(["model.attention.type=gqa", "model.attention.num_kv_heads=2"], id="gqa", marks=pytest.mark.slow),
    pytest.param(["model.attention.type=mqa"], id="mqa", marks=pytest.mark.slow),
])
def test_embedded_default_reaches_the_noise_floor_and_beats_linear(tmp_path, attention):
    cfg = load_any_config("configs/regression/default.yaml", [f"out_dir={tmp_path}", "trainer.progress_bar=false", *attention])
    result = run(cfg)
    print(f"test RMSE {result.test['rmse']:.4f} vs noise floor {result.noise_floor} vs ridge {result.baselines['ridge']['test']['rmse']:.4f}")
    assert result.test["rmse"] <= 1.10 * result.noise_floor
    assert result.test["rmse"] < result.baselines["ridge"]["test"]["rmse"]


def test_regression_module_honours_compile_and_the_moe_aux_loss():
    from regression.config import HeadConfig
    from regression.data import Preprocessing, Scaler
    from regression.h_transformer import build_regressor
    from regression.module import RegressionModule
    from transformer.config import ModelConfig
    from transformer.training.config import OptimConfig

    cfg = ModelConfig(kind="encoder", vocab_size=1, embed_dim=16, num_heads=2, num_layers=1, max_seq_len=8, pooling="last",
                      moe_num_experts=2, moe_top_k=1, attention={"type": "mha", "positional": "rope"})
    model = build_regressor(cfg, kind="sequence", num_features=3, num_targets=1)
    pre = Preprocessing(["a", "b", "c"], [], ["y"], Scaler("none", np.zeros(3), np.ones(3)), Scaler("none", np.zeros(1), np.ones(1)), {}, [])
    batch = (torch.randn(4, 8, 3), torch.zeros(4, 8, 0, dtype=torch.long), torch.randn(4, 1))
    losses = {}
    for weight in (0.0, 1.0):
        module = RegressionModule(model, pre, HeadConfig(), OptimConfig(), max_steps=2, moe_aux_loss_weight=weight)
        module.log = lambda *a, **k: None
        losses[weight] = module.training_step(batch, 0)
    _, aux = model(batch[0], batch[1], return_aux=True)
    assert aux is not None and torch.allclose(losses[1.0] - losses[0.0], aux)
    compiled = RegressionModule(model, pre, HeadConfig(), OptimConfig(), max_steps=2, compile=True)
    compiled.configure_model()
    assert type(compiled.model).__name__ == "OptimizedModule"


def test_early_stopping_stops_keeps_the_best_and_counts_across_a_resume(tmp_path, capsys):
    """A learning rate too small to improve val/rmse by min_delta: checks at steps 2 (the best), 4, 6 -> stop at 6.
    Split 4 + resume gives the same stop: the patience counter is in the checkpoint."""
    stall = ["optim.lr=1e-9", "optim.min_lr=1e-10", "optim.warmup_steps=1", "trainer.val_check_interval=2",
             "trainer.early_stopping_patience=2", "trainer.early_stopping_min_delta=0.01", "checkpoint.save_top_k=1"]
    straight = run(quick(tmp_path / "a", *stall, "trainer.max_steps=100", "name=es"))
    assert straight.steps == 6
    out = capsys.readouterr().out
    assert "early stopping at step 6: val/rmse has not improved by more than 0.01 for 2 validation check(s)" in out
    (best,) = (straight.run_dir / "checkpoints").glob("step*.ckpt")
    logged = pd.read_csv(straight.run_dir / "csv" / "metrics.csv")["val/rmse"].dropna()
    assert len(logged) == 3 + 1 and f"rmse{logged.min():.4f}" in best.name  # 3 checks + the best one re-evaluated
    first = run(quick(tmp_path / "b", *stall, "trainer.max_steps=4", "name=es"))
    assert first.steps == 4
    resumed = run(quick(tmp_path / "b", *stall, "trainer.max_steps=100", "name=es", "resume_from=auto"))
    assert resumed.steps == 6 and resumed.run_dir == first.run_dir
    assert abs(resumed.test["rmse"] - straight.test["rmse"]) < 1e-5  # (checks differ by ~1e-7 at this learning rate)


def test_a_training_split_small_for_the_model_is_warned_about(tmp_path, capsys):
    run(quick(tmp_path, "data.synthetic_series=1", "data.synthetic_length=150", "trainer.max_steps=2",
              "trainer.val_check_interval=2"))
    err = capsys.readouterr().err
    assert re.search(r"warning: [0-9]+ training examples for [0-9,]+ parameters \([0-9,]+ per example\): expect "
                     r"overfitting. .*trainer.early_stopping_patience", err), err[-1000:]


def test_compare_report_of_regression_runs_shows_the_baselines(tmp_path):
    from transformer.compare import report

    dirs = [run(quick(tmp_path / name, f"model.attention.type={name}")).run_dir for name in ("mha", "mqa")]
    out = report([str(d) for d in dirs], tmp_path / "report")
    table = pd.read_csv(out / "report.csv")
    result = json.loads((dirs[1] / "result.json").read_text())
    row = table[table["attention"] == "mqa"].iloc[0]
    assert row["test_rmse"] == pytest.approx(result["test"]["rmse"])
    assert row["ridge test_rmse"] == pytest.approx(result["baselines"]["ridge"]["test"]["rmse"])
    assert row["rmse_vs_best_baseline"] == pytest.approx(result["test"]["rmse"] / result["best_baseline"]["test"]["rmse"], rel=1e-3)
    assert "last value test_rmse" in table.columns and "# Regression comparison (2 runs)" in (out / "report.md").read_text()
