"""Predictions of a trained regression checkpoint for a CSV / Parquet / JSON file, in original units.

    python -m regression.predict runs/reg-.../checkpoints/last.ckpt new_data.csv predictions.csv

Tabular models: one prediction per input row (column ``row`` is the input row number). Sequence
models: one prediction per window of ``data.window`` consecutive rows of one series, including the
last window, whose targets may lie beyond the file (a forecast); the output names the series, the
window's last row and time value, and one column per target and horizon step. The input needs the
feature (and series / time) columns of the training config; target columns are optional.
"""

from __future__ import annotations

import argparse
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
from .data import Preprocessing, clean, read_table
from .h_transformer import build_regressor


def load_regressor(checkpoint: str | Path):
    ckpt = read_checkpoint(checkpoint)
    if K.PREPROCESSING not in ckpt or (ckpt.get(K.RUN_CONFIG) or {}).get("task") != "regression":
        raise CheckpointError(f"{checkpoint} is not a regression checkpoint (no preprocessing / task: regression)")
    cfg: RegressionRunConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RegressionRunConfig), ckpt[K.RUN_CONFIG]))
    pre = Preprocessing.from_dict(ckpt[K.PREPROCESSING])
    model = build_regressor(cfg.model, kind=cfg.data.kind, num_features=len(pre.features), num_targets=len(pre.targets),
                            horizon_steps=cfg.data.horizon_steps, cardinalities=pre.cardinalities)
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
            x = torch.from_numpy(np.stack([a["x"][j:j + d.window] for j in s]))
            cats = torch.from_numpy(np.stack([a["cats"][j:j + d.window] for j in s]))
            pred = pre.target_scaler.inverse(model(x, cats).double().numpy().reshape(-1, H, T)).reshape(len(s), H * T)
            block = pd.DataFrame(pred, columns=names)
            ends = s + d.window - 1
            block.insert(0, "window_end_row", g.index.to_numpy()[ends])
            if d.time_column:
                block.insert(0, "window_end_time", g[d.time_column].to_numpy()[ends])
            if d.series_column:
                block.insert(0, d.series_column, g[d.series_column].to_numpy()[ends])
            rows.append(block)
    if not rows:
        raise ValueError(f"no series in the input has the {d.window} rows one window needs")
    return pd.concat(rows, ignore_index=True)


def predict_file(checkpoint, input_path, output_path, *, overwrite: bool = False) -> pd.DataFrame:
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
    result = predict_frame(model, cfg, pre, read_table(str(input_path), None))
    tmp = output_path.with_name(f".{output_path.name}.tmp-{os.getpid()}")
    try:
        if output_path.suffix.lower() in (".parquet", ".pq"):
            result.to_parquet(tmp, index=False)
        else:
            result.to_csv(tmp, index=False)
        os.replace(tmp, output_path)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m regression.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("input", help="CSV / Parquet / JSON with the training config's input columns")
    parser.add_argument("output", help="predictions file (.csv or .parquet)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    result = predict_file(args.checkpoint, args.input, args.output, overwrite=args.overwrite)
    print(f"wrote {len(result)} predictions to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
