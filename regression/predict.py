"""Predictions of a trained regression checkpoint for a CSV / Parquet / JSON file, in original units.

    python -m regression.predict runs/reg-.../checkpoints/last.ckpt new_data.csv predictions.csv
    python -m regression.predict runs/reg-.../checkpoints/last.ckpt --synthetic predictions.csv   # embedded default

Tabular models: one prediction per input row (column ``row`` is the input row number). Sequence
models: one prediction per window of ``data.window`` consecutive rows of one series, including the
last window, whose targets may lie beyond the file (a forecast); the output names the series, the
window's last row and time value, and one column per target and horizon step. The input needs the
feature (and series / time) columns of the training config; target columns are optional. When the
input holds them, each prediction column ``pred_<target>...`` gets its actual value beside it (``<target>...``)
and RMSE, MAE, R² and MAPE (in original units, over the predictions whose actual value is known) are
printed and written to ``<output>.metrics.json``.

``--synthetic`` predicts on a fresh draw of the synthetic default's process (seed ``--seed``, by default the
run's seed + 1, so not the training data); ``--write-input FILE`` keeps that input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from transformer.errors import guarded
from transformer.training import checkpoint_keys as K
from transformer.training.checkpoint_io import CheckpointError, read_checkpoint
from transformer.training.weights import strip_prefixes

from .config import RegressionRunConfig
from .data import Preprocessing, add_derived, clean, read_table, synthetic_frame, window_inputs
from .h_transformer import regressor_for_run
from .module import metrics_numpy


def load_regressor(checkpoint: str | Path):
    ckpt = read_checkpoint(checkpoint)
    if K.PREPROCESSING not in ckpt or (ckpt.get(K.RUN_CONFIG) or {}).get("task") != "regression":
        raise CheckpointError(f"{checkpoint} is not a regression checkpoint (no preprocessing / task: regression)")
    saved = ckpt[K.RUN_CONFIG]
    if "regressor" not in saved:  # a run from before regressor.* existed: targets were not inputs, no window norm
        saved = {**saved, "regressor": {"window_norm": "none", "linear_skip": False},
                 "data": {**saved.get("data", {}), "target_history": False}}
    cfg: RegressionRunConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RegressionRunConfig), saved))
    pre = Preprocessing.from_dict(ckpt[K.PREPROCESSING])
    model = regressor_for_run(cfg, pre)
    state = {k[len("model."):]: v for k, v in ckpt[K.STATE_DICT].items() if k.startswith("model.")}
    model.load_state_dict(strip_prefixes(state))
    return model.eval(), cfg, pre


def _column_names(cfg: RegressionRunConfig, pre: Preprocessing) -> list[str]:
    d = cfg.data
    if d.kind == "tabular" or d.horizon_steps == 1 and d.horizon == 0:
        return [f"pred_{t}" for t in pre.targets]
    return [f"pred_{t}_t+{d.horizon + k}" for k in range(d.horizon_steps) for t in pre.targets]


@torch.inference_mode()
def predict_frame(model, cfg: RegressionRunConfig, pre: Preprocessing, frame: pd.DataFrame, batch_size: int = 512) -> pd.DataFrame:
    d = cfg.data
    frame = clean(frame, d, require_targets=False)
    history = d.kind == "sequence" and d.target_history
    absent = [t for t in pre.targets if t not in frame.columns]
    if (history or d.lags) and absent:
        raise ValueError(f"the model reads the past values of {absent} (data.target_history / data.lags): the input "
                         f"needs those columns, with the observed history of each series")
    frame, _ = add_derived(frame, d, pre.time_features)
    names = _column_names(cfg, pre)
    T, H = len(pre.targets), d.horizon_steps
    if d.kind == "tabular":
        arrays = pre.arrays(frame, d.missing)
        out = []
        for i in range(0, len(frame), batch_size):
            x, cats = torch.from_numpy(arrays["x"][i:i + batch_size]), torch.from_numpy(arrays["cats"][i:i + batch_size])
            out.append(pre.target_scaler.inverse(model(x, cats).double().numpy()))
        result = pd.DataFrame(np.concatenate(out), columns=names)
        result.insert(0, "row", np.arange(len(frame)))
        known = [t for t in pre.targets if t in frame.columns]
        if known == list(pre.targets):
            for t in pre.targets:  # the actual value before its prediction
                result.insert(result.columns.get_loc(f"pred_{t}"), t, frame[t].to_numpy())
        return result
    groups = [g for _, g in frame.groupby(d.series_column, sort=True)] if d.series_column else [frame]
    rows = []
    for g in groups:
        if len(g) < d.window:
            continue
        a = pre.arrays(g, d.missing)
        starts = np.arange(0, len(g) - d.window + 1, d.stride)
        for i in range(0, len(starts), batch_size):
            s = starts[i:i + batch_size]
            x = torch.from_numpy(np.stack([window_inputs(a, j, d.window, j + d.window - 1 + d.horizon, history) for j in s]))
            cats = torch.from_numpy(np.stack([a["cats"][j:j + d.window] for j in s]))
            pred = pre.target_scaler.inverse(model(x, cats).double().numpy().reshape(-1, H, T)).reshape(len(s), H * T)
            block = pd.DataFrame(pred, columns=names)
            ends = s + d.window - 1
            if all(t in g.columns for t in pre.targets):  # actual values where the file holds them (else NaN)
                values = g[list(pre.targets)].to_numpy(dtype="float64")
                for k in range(H):
                    rows_k = ends + d.horizon + k
                    inside = rows_k < len(g)
                    for j, t in enumerate(pre.targets):
                        name = names[k * T + j]
                        actual = np.full(len(s), np.nan)
                        actual[inside] = values[rows_k[inside], j]
                        block.insert(block.columns.get_loc(name), name[len("pred_"):], actual)
            block.insert(0, "window_end_row", g.index.to_numpy()[ends])
            if d.time_column:
                block.insert(0, "window_end_time", g[d.time_column].to_numpy()[ends])
            if d.series_column:
                block.insert(0, d.series_column, g[d.series_column].to_numpy()[ends])
            rows.append(block)
    if not rows:
        raise ValueError(f"no series in the input has the {d.window} rows one window needs")
    return pd.concat(rows, ignore_index=True)


def prediction_metrics(result: pd.DataFrame) -> dict | None:
    """RMSE / MAE / R² / MAPE over every ``pred_X`` column that has its actual ``X`` beside it (known values
    only); None when the input held no targets."""
    pairs = [(c, c[len("pred_"):]) for c in result.columns if c.startswith("pred_") and c[len("pred_"):] in result.columns]
    if not pairs:
        return None
    pred = np.concatenate([result[p].to_numpy(dtype="float64") for p, _ in pairs])
    actual = np.concatenate([result[a].to_numpy(dtype="float64") for _, a in pairs])
    known = ~np.isnan(actual)
    if not known.any():
        return None
    return {"predictions": int(known.sum()), **metrics_numpy(pred[known], actual[known])}


def predict_file(checkpoint, input_path, output_path, *, overwrite: bool = False, synthetic: bool = False,
                 seed: int | None = None, write_input: str | Path | None = None) -> pd.DataFrame:
    """Predict ``input_path`` (or, with ``synthetic``, a fresh synthetic draw: ``seed``, default the run's
    seed + 1) into ``output_path``."""
    output_path = Path(output_path)
    if output_path.is_dir():
        raise IsADirectoryError(f"the output {output_path} is a directory; give a file name (.csv or .parquet)")
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists; choose another name or pass --overwrite")
    if not output_path.parent.is_dir():
        raise FileNotFoundError(f"the folder {output_path.parent} for the output {output_path.name} does not exist; create it first")
    if output_path.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise ValueError(f"the output {output_path} must end in .csv or .parquet")
    model, cfg, pre = load_regressor(checkpoint)
    if not synthetic:
        frame = read_table(str(input_path), None)
    else:
        if cfg.data.source != "synthetic":
            raise ValueError(f"--synthetic: {checkpoint} was trained on data.source={cfg.data.source} "
                             f"({cfg.data.path}), not the synthetic default; give an input file")
        frame = synthetic_frame(cfg.data, cfg.seed + 1 if seed is None else seed)
        if write_input is not None:
            if Path(write_input).exists() and not overwrite:
                raise FileExistsError(f"--write-input {write_input} exists; choose another name or pass --overwrite")
            _write_table(frame, Path(write_input))
    result = predict_frame(model, cfg, pre, frame)
    _write_table(result, output_path)
    metrics = prediction_metrics(result)
    if metrics is not None:
        metrics_path = output_path.with_name(output_path.name + ".metrics.json")
        from transformer.training.checkpoint_io import atomic_write_text

        atomic_write_text(metrics_path, json.dumps(metrics, indent=2))
    result.attrs["metrics"] = metrics
    return result


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    """``.csv`` or ``.parquet``, written to a temporary name and renamed (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m regression.predict", description=__doc__,
                                     usage="%(prog)s CHECKPOINT (INPUT OUTPUT | --synthetic OUTPUT) [options]",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="the input (CSV / Parquet / JSON with the training config's input columns) and the "
                             "predictions file (.csv or .parquet); with --synthetic only the predictions file")
    parser.add_argument("--synthetic", action="store_true", help="predict a fresh draw of the synthetic default's data")
    parser.add_argument("--seed", type=int, help="with --synthetic: the draw's seed (default: the run's seed + 1)")
    parser.add_argument("--write-input", metavar="FILE", help="with --synthetic: also write the generated input here")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    want = 1 if args.synthetic else 2
    if len(args.files) != want:
        parser.error("give INPUT OUTPUT, or --synthetic OUTPUT" if not args.synthetic else
                     f"--synthetic makes the input: give only the predictions file, not {' '.join(args.files)}")
    if (args.seed is not None or args.write_input) and not args.synthetic:
        parser.error("--seed and --write-input only apply with --synthetic")
    inp, out = (None, args.files[0]) if args.synthetic else args.files
    result = predict_file(args.checkpoint, inp, out, overwrite=args.overwrite, synthetic=args.synthetic, seed=args.seed,
                          write_input=args.write_input)
    print(f"wrote {len(result)} predictions to {out}")
    metrics = result.attrs.get("metrics")
    if metrics:
        shown = " | ".join(f"{k.upper() if k != 'r2' else 'R²'} {v:.4f}{'%' if k == 'mape' else ''}"
                           for k, v in metrics.items() if k != "predictions")
        print(f"against the {metrics['predictions']} known targets: {shown} (in {out}.metrics.json)")
    return 0



if __name__ == "__main__":
    sys.exit(main())
