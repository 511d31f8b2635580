"""Regression data: a table -> cleaned -> split without leakage -> scaled on the training split -> examples.

Sequence data: each series is sorted by time and cut into train / validation / test parts (the last
``val_fraction`` then ``test_fraction`` of its steps are held out). An example belongs to the split that
holds its target rows; its input window may reach back into the series' earlier rows (observed before
that split began), never forward and never into another series, so no target is in two splits. Inputs
are the feature columns, optional calendar features and target lags, and (``data.target_history``) the
targets' own past values. Tabular data: rows are split at random (seeded).

The synthetic default (``data.source: synthetic``) is a multivariate time series with known noise:

    x1, x2, x3: independent AR(1) processes, x_t = phi * x_{t-1} + sqrt(1 - phi^2) * e_t  (unit variance;
                phi = 0.9, 0.7, 0.5), e_t ~ N(0, 1)
    y_t = 1.5 * tanh(x1_t) + 0.8 * x2_{t-1} * x3_t + 0.5 * x1_{t-2} + eps_t,     eps_t ~ N(0, noise^2)

The window holds x1, x2, x3 up to and including step t (``horizon: 0`` predicts y at the window's last
step), so the best possible RMSE is exactly ``noise`` (the default 0.3); a linear model cannot
represent the tanh and the product, which bounds it well above that floor.

Shapes: n rows, F numeric features, C categorical features, T targets, W window, H horizon steps.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .config import RegressionDataConfig

SYNTHETIC_FEATURES, SYNTHETIC_TARGET = ["x1", "x2", "x3"], ["y"]


# ------------------------------------------------------------------------------------ sources
def synthetic_frame(cfg: RegressionDataConfig, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(cfg.synthetic_series):
        n = cfg.synthetic_length
        x = np.zeros((n, 3))
        for j, phi in enumerate((0.9, 0.7, 0.5)):
            e = rng.standard_normal(n)
            x[0, j] = e[0]
            for t in range(1, n):
                x[t, j] = phi * x[t - 1, j] + np.sqrt(1 - phi**2) * e[t]
        lag1 = np.roll(x[:, 1], 1)
        lag2 = np.roll(x[:, 0], 2)
        y = 1.5 * np.tanh(x[:, 0]) + 0.8 * lag1 * x[:, 2] + 0.5 * lag2 + cfg.synthetic_noise * rng.standard_normal(n)
        frame = pd.DataFrame({"series": s, "t": np.arange(n), "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "y": y})
        frames.append(frame.iloc[2:])  # the first two steps have no lags
    return pd.concat(frames, ignore_index=True)


def table_files(path_spec: str, fmt: str | None) -> tuple[list[str], str]:
    """The files ``data.path`` names (comma-separated, globs) and their format, checked: each exists, is not
    empty, and a CSV / JSON one is text."""
    from transformer.data.corpus import check_text_file

    files: list[str] = []
    for part in (p.strip() for p in path_spec.split(",") if p.strip()):
        matches = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
        for m in matches:
            if os.path.isdir(m):
                raise ValueError(f"data.path: {m!r} is a directory; name the CSV / Parquet / JSON file(s) or a glob")
            if not os.path.isfile(m):
                raise FileNotFoundError(f"data.path: {m!r} does not exist")
            if os.path.getsize(m) == 0:
                raise ValueError(f"data file {m!r} is empty")
            files.append(m)
    if not files:
        raise FileNotFoundError(f"data.path={path_spec!r} matches no files")
    suffix = Path(files[0]).suffix.lower()
    fmt = fmt or {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".json": "json", ".jsonl": "json"}.get(suffix)
    if fmt is None:
        raise ValueError(f"cannot tell the format of {files[0]!r}; set data.format to csv, parquet or json")
    if fmt in ("csv", "json"):
        for f in files:
            check_text_file(f, what=f"{fmt.upper()} data file")
    return files, fmt


def read_table(path_spec: str, fmt: str | None) -> pd.DataFrame:
    """CSV / Parquet / JSON file(s) through ``datasets`` (so large files stream and cache)."""
    import datasets

    files, fmt = table_files(path_spec, fmt)
    try:
        frame = datasets.load_dataset(fmt, data_files=files, split="train").to_pandas()
    except Exception as err:  # datasets wraps parser errors in its own types; name the files instead
        from transformer.data.corpus import dataset_read_error

        raise ValueError(dataset_read_error(files, fmt, err)) from None
    if len(frame) == 0:
        raise ValueError(f"{', '.join(files)} hold(s) no data rows (only a header?)")
    return frame


def frame_fingerprint(frame: pd.DataFrame) -> dict[str, object]:
    """Rows, columns and a content hash of a table: what a resumed run compares with its checkpoint."""
    import hashlib

    digest = hashlib.blake2b(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes(), digest_size=16)
    return {"rows": int(len(frame)), "columns": [str(c) for c in frame.columns], "hash": digest.hexdigest()}


# ------------------------------------------------------------------------------------ cleaning
def _columns(cfg: RegressionDataConfig) -> tuple[list[str], list[str], list[str]]:
    if cfg.source == "synthetic":
        return cfg.feature_columns or SYNTHETIC_FEATURES, cfg.categorical_columns, cfg.target_columns or SYNTHETIC_TARGET
    return cfg.feature_columns, cfg.categorical_columns, cfg.target_columns


def clean(frame: pd.DataFrame, cfg: RegressionDataConfig, *, require_targets: bool = True) -> pd.DataFrame:
    """Check columns, coerce numbers (naming the first bad cell), apply the missing-value policy.
    ``require_targets=False`` (prediction): target columns may be absent."""
    features, categoricals, targets = _columns(cfg)
    if not require_targets:
        targets = [t for t in targets if t in frame.columns]
    needed = features + categoricals + targets + [c for c in (cfg.series_column, cfg.time_column) if c]
    missing_cols = [c for c in needed if c not in frame.columns]
    if missing_cols:
        raise ValueError(f"column(s) {missing_cols} not in the data; available columns: {list(frame.columns)}")
    frame = frame.copy()
    for col in features + targets:
        numeric = pd.to_numeric(frame[col], errors="coerce")
        bad = numeric.isna() & frame[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"column {col!r} has a non-numeric value {frame[col].iloc[row]!r} at row {row}")
        frame[col] = numeric.astype("float64")
    if cfg.kind == "sequence":
        keys = [c for c in (cfg.series_column, cfg.time_column) if c]
        if keys:
            frame = frame.sort_values(keys, kind="stable").reset_index(drop=True)
        if cfg.time_column:
            _check_increasing(frame, cfg)
    holes = frame[features + targets].isna()
    if holes.to_numpy().any():
        if cfg.missing == "error":
            col = holes.any().idxmax()
            row = int(np.flatnonzero(holes[col].to_numpy())[0])
            raise ValueError(f"column {col!r} has a missing value at row {row}; set data.missing to drop, ffill or mean")
        if cfg.missing == "drop":
            frame = frame[~holes.any(axis=1)].reset_index(drop=True)
        elif cfg.missing == "ffill":
            group = frame.groupby(cfg.series_column) if cfg.series_column else frame
            frame[features + targets] = group[features + targets].ffill()
            if frame[features + targets].isna().to_numpy().any():
                raise ValueError("data.missing=ffill cannot fill values missing at the start of a series; use drop or mean")
        # "mean" is applied after the split, with training-split means
    return frame


def _check_increasing(frame: pd.DataFrame, cfg: RegressionDataConfig) -> None:
    """After sorting, the time column must increase strictly within each series: a repeated time (two rows for one
    step, e.g. a file holding several series without ``data.series_column``) is an error, named with its row."""
    times = frame[cfg.time_column]
    if times.isna().any():
        row = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise ValueError(f"column {cfg.time_column!r} (data.time_column) is empty at row {row}")
    same = times.eq(times.shift())
    if cfg.series_column:
        same &= frame[cfg.series_column].eq(frame[cfg.series_column].shift())
    if same.any():
        row = int(np.flatnonzero(same.to_numpy())[0])
        where = f" in series {frame[cfg.series_column].iloc[row]!r}" if cfg.series_column else ""
        hint = "" if cfg.series_column else "; if the file holds several series, name their column in data.series_column"
        value = times.iloc[row]
        raise ValueError(f"column {cfg.time_column!r} (data.time_column) is not strictly increasing: the value "
                         f"{getattr(value, 'item', lambda: value)()!r} appears twice{where} (rows {row - 1} and {row} after sorting){hint}")


# ------------------------------------------------------------------------------------ scaling
@dataclass
class Scaler:
    """Per-column affine scaling ``(x - loc) / scale``, fitted on the training split only."""

    kind: str
    loc: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, kind: str) -> "Scaler":
        if kind == "standard":
            loc, scale = np.nanmean(values, 0), np.nanstd(values, 0)
        elif kind == "minmax":
            loc, scale = np.nanmin(values, 0), np.nanmax(values, 0) - np.nanmin(values, 0)
        else:
            loc, scale = np.zeros(values.shape[1]), np.ones(values.shape[1])
        return cls(kind, loc.astype(np.float64), np.where(scale > 0, scale, 1.0).astype(np.float64))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.loc) / self.scale

    def inverse(self, values):
        """Scaled -> original units; numpy arrays or tensors ``[..., columns]``."""
        if isinstance(values, torch.Tensor):
            loc = torch.as_tensor(self.loc, dtype=values.dtype, device=values.device)
            return values * torch.as_tensor(self.scale, dtype=values.dtype, device=values.device) + loc
        return values * self.scale + self.loc

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "loc": self.loc.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scaler":
        return cls(d["kind"], np.asarray(d["loc"], dtype=np.float64), np.asarray(d["scale"], dtype=np.float64))


# ------------------------------------------------------------------------------------ derived inputs
TIME_CYCLES = {"minute": 60, "hour": 24, "day_of_week": 7, "day_of_month": 31, "day_of_year": 366, "week": 53,
               "month": 12, "quarter": 4}


def _times(frame: pd.DataFrame, column: str) -> pd.Series:
    """The time column as datetimes; a one-line error naming the column and a bad value when it is not one."""
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_datetime64_any_dtype(values):
        raise ValueError(f"data.time_features need a date / time column, but data.time_column={column!r} holds numbers "
                         f"(e.g. {values.iloc[0]!r}); use a column of dates, or remove data.time_features")
    parsed = pd.to_datetime(values, errors="coerce")
    bad = parsed.isna() & values.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"column {column!r} (data.time_column) has a value that is not a date / time: "
                         f"{values.iloc[row]!r} at row {row}")
    return parsed


def resolve_time_features(frame: pd.DataFrame, cfg: RegressionDataConfig) -> list[str]:
    """``data.time_features`` with ``[auto]`` replaced by the features that vary at the data's median step."""
    if cfg.time_features != ["auto"]:
        return list(cfg.time_features)
    column = frame[cfg.time_column]
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_datetime64_any_dtype(column):
        return []  # a step count or a year: no calendar to read
    times = _times(frame, cfg.time_column)
    steps = times.groupby(frame[cfg.series_column]).diff() if cfg.series_column else times.diff()
    step = steps.dropna().median()
    if pd.isna(step):
        return []
    days = step / pd.Timedelta(days=1)
    for limit, names in ((1 / 24, ["minute", "hour", "day_of_week"]), (1, ["hour", "day_of_week", "day_of_year"]),
                         (7, ["day_of_week", "day_of_year"]), (28, ["week"]), (89, ["month"]), (365, ["quarter"])):
        if days < limit:
            return names
    return []


def time_feature_columns(frame: pd.DataFrame, column: str, names: list[str]) -> dict[str, np.ndarray]:
    """``{"<column>:<feature>_sin": ..., "..._cos": ...}``: each calendar feature as a point on its cycle."""
    t = _times(frame, column).dt
    phase = {"minute": t.minute / 60, "hour": t.hour / 24, "day_of_week": t.dayofweek / 7,
             "day_of_month": (t.day - 1) / t.days_in_month, "day_of_year": (t.dayofyear - 1) / 365.25,
             "week": (t.isocalendar().week.astype("int64") - 1) / 52.18, "month": (t.month - 1) / 12,
             "quarter": (t.quarter - 1) / 4}
    out = {}
    for name in names:
        angle = 2 * np.pi * np.asarray(phase[name], dtype=np.float64)
        out[f"{column}:{name}_sin"], out[f"{column}:{name}_cos"] = np.sin(angle), np.cos(angle)
    return out


def lag_name(target: str, lag: int) -> str:
    return f"{target}:lag{lag}"


def add_derived(frame: pd.DataFrame, cfg: RegressionDataConfig, time_features: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` with the calendar features and target lags added (a series' first ``max(lags)`` rows, which have
    no lag, dropped), and the names of the added columns (inputs after ``data.feature_columns``)."""
    added: dict[str, np.ndarray] = {}
    if time_features:
        added.update(time_feature_columns(frame, cfg.time_column, time_features))
    if cfg.lags:
        missing = [t for t in _columns(cfg)[2] if t not in frame.columns]
        if missing:
            raise ValueError(f"data.lags={cfg.lags} are lags of the targets {missing}: the input needs those columns")
        group = frame.groupby(cfg.series_column, sort=False) if cfg.series_column else None
        for target in _columns(cfg)[2]:
            for lag in cfg.lags:
                col = group[target].shift(lag) if group is not None else frame[target].shift(lag)
                added[lag_name(target, lag)] = col.to_numpy(np.float64)
    if not added:
        return frame, []
    frame = frame.assign(**added)
    if cfg.lags:
        frame = frame[~frame[[lag_name(t, k) for t in _columns(cfg)[2] for k in cfg.lags]].isna().any(axis=1)]
        frame = frame.reset_index(drop=True)
        if frame.empty:
            raise ValueError(f"data.lags={cfg.lags}: no series is longer than its largest lag ({max(cfg.lags)} rows)")
    return frame, list(added)


# ------------------------------------------------------------------------------------ datasets
def window_inputs(series: dict[str, np.ndarray], start: int, window: int, first_target: int,
                  target_history: bool) -> np.ndarray:
    """``[W, F]`` features of rows ``start .. start + W - 1``, with ``target_history`` ``[W, F + T]``: the targets
    too, where a row at or after ``first_target`` (being predicted) holds the last observed value (0, the
    training mean, when none is observed)."""
    rows = slice(start, start + window)
    x = series["x"][rows]
    if not target_history:
        return x
    history = series["y"][rows].copy()
    observed = min(window, first_target - start)  # rows of the window before the first predicted one
    if observed < window:
        history[observed:] = history[observed - 1] if observed > 0 else 0.0
    return np.concatenate([x, history], axis=1)


class SequenceWindows(Dataset):
    """Windows ``x [W, F (+ T)]``, ``cats [W, C]`` -> targets ``y [H * T]`` (step-major).

    ``segments`` are whole series (scaled arrays) and ``bounds`` this split's rows ``[lo, hi)`` of each: an
    example belongs to the split that holds all its target rows, and its window may reach back into the rows
    before ``lo`` (observed before the split began, as at forecast time), never forward. So no target is in
    two splits, and a short validation or test part still has examples.
    """

    def __init__(self, segments: list[dict[str, np.ndarray]], bounds: list[tuple[int, int]], cfg: RegressionDataConfig) -> None:
        self.segments, self.bounds, self.W = segments, bounds, cfg.window
        self.offset, self.H, self.target_history = cfg.horizon, cfg.horizon_steps, cfg.target_history
        reach = self.W - 1 + self.offset  # rows from a window's start to its first target
        need = reach + self.H  # rows one example spans
        self.index = [(i, s) for i, (lo, hi) in enumerate(bounds) for s in range(max(0, lo - reach), hi - need + 1, cfg.stride)]

    def __len__(self) -> int:
        return len(self.index)

    def split_rows(self, key: str = "y") -> list[np.ndarray]:
        """This split's own rows of each series (``y``: the scaled targets), e.g. for statistics of the training split."""
        return [seg[key][lo:hi] for seg, (lo, hi) in zip(self.segments, self.bounds) if hi > lo]

    def target_rows(self, i: int) -> tuple[int, np.ndarray]:
        seg, start = self.index[i]
        first = start + self.W - 1 + self.offset
        return seg, np.arange(first, first + self.H)

    def __getitem__(self, i: int):
        seg_id, start = self.index[i]
        seg = self.segments[seg_id]
        _, rows = self.target_rows(i)
        x = window_inputs(seg, start, self.W, int(rows[0]), self.target_history)
        return (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(seg["cats"][start:start + self.W]),
                torch.from_numpy(seg["y"][rows].reshape(-1)))


class TabularRows(Dataset):
    """Rows ``x [F]``, ``cats [C]`` -> ``y [T]``."""

    def __init__(self, x: np.ndarray, cats: np.ndarray, y: np.ndarray) -> None:
        self.x, self.cats, self.y = x, cats, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.x[i]), torch.from_numpy(self.cats[i]), torch.from_numpy(self.y[i])


class IndexedRows(Dataset):
    """Rows of a :class:`TabularRows` with their index: ``(x, cats, y, i)``, for models that retrieve training rows."""

    def __init__(self, rows: TabularRows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return (*self.rows[i], i)


@dataclass
class Preprocessing:
    """Everything fitted on the training split that prediction needs again (stored in checkpoints)."""

    features: list[str]
    categoricals: list[str]
    targets: list[str]
    feature_scaler: Scaler
    target_scaler: Scaler
    categories: dict[str, list[str]]  # column -> known values (code = index + 1; 0 = unseen)
    feature_means: list[float]  # training means, for data.missing=mean
    time_features: list[str] = field(default_factory=list)  # resolved data.time_features (``[auto]`` -> names)

    def to_dict(self) -> dict[str, Any]:
        return {"features": self.features, "categoricals": self.categoricals, "targets": self.targets,
                "feature_scaler": self.feature_scaler.to_dict(), "target_scaler": self.target_scaler.to_dict(),
                "categories": self.categories, "feature_means": self.feature_means, "time_features": self.time_features}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        return cls(d["features"], d["categoricals"], d["targets"], Scaler.from_dict(d["feature_scaler"]),
                   Scaler.from_dict(d["target_scaler"]), d["categories"], d["feature_means"], d.get("time_features", []))

    @property
    def cardinalities(self) -> list[int]:
        return [len(self.categories[c]) + 1 for c in self.categoricals]

    def arrays(self, frame: pd.DataFrame, missing: str) -> dict[str, np.ndarray]:
        """Scaled float32 features / targets and int64 category codes of ``frame``'s rows."""
        x = frame[self.features].to_numpy(np.float64) if self.features else np.zeros((len(frame), 0))
        if missing == "mean" and self.features:
            x = np.where(np.isnan(x), np.asarray(self.feature_means), x)
        y = frame[self.targets].to_numpy(np.float64) if set(self.targets) <= set(frame.columns) else np.full((len(frame), len(self.targets)), np.nan)
        cats = np.stack([frame[c].astype(str).map({v: i + 1 for i, v in enumerate(self.categories[c])}).fillna(0).to_numpy(np.int64)
                         for c in self.categoricals], axis=1) if self.categoricals else np.zeros((len(frame), 0), np.int64)
        return {"x": self.feature_scaler.transform(x).astype(np.float32), "cats": cats,
                "y": self.target_scaler.transform(y).astype(np.float32)}


@dataclass
class RegressionData:
    pre: Preprocessing
    train: Dataset
    val: Dataset
    test: Dataset | None
    frames: dict[str, pd.DataFrame]  # the raw rows of each split (for baselines and reports)
    fingerprint: dict = field(default_factory=dict)  # of the cleaned table (frame_fingerprint)


def fit_preprocessing(train: pd.DataFrame, cfg: RegressionDataConfig, derived: list[str] = (),
                      time_features: list[str] = ()) -> Preprocessing:
    """Scalers, category codes and means from the training rows; ``derived``: the added input columns."""
    features, categoricals, targets = _columns(cfg)
    features = list(features) + list(derived)
    x = train[features].to_numpy(np.float64) if features else np.zeros((len(train), 0))
    means = np.nanmean(x, 0).tolist() if features else []
    if cfg.missing == "mean" and features:
        x = np.where(np.isnan(x), np.asarray(means), x)
    y = train[targets].to_numpy(np.float64)
    if np.isnan(y).any():
        raise ValueError("targets have missing values in the training split; data.missing=mean fills features only, "
                         "use data.missing=drop")
    categories = {c: sorted(train[c].astype(str).unique().tolist()) for c in categoricals}
    return Preprocessing(features, categoricals, targets, Scaler.fit(x, cfg.feature_scaling),
                         Scaler.fit(y, cfg.target_scaling), categories, means, list(time_features))


def split_frame(frame: pd.DataFrame, cfg: RegressionDataConfig, seed: int) -> dict[str, list[pd.DataFrame]]:
    """-> {"train": [...], "val": [...], "test": [...]}: per-series consecutive parts in time (sequence; series in
    ``data.series_column`` order), or one frame each of a seeded random share of rows (tabular)."""
    parts: dict[str, list[pd.DataFrame]] = {"train": [], "val": [], "test": []}
    if cfg.kind == "tabular":
        order = np.random.default_rng(seed).permutation(len(frame))
        n_val, n_test = int(round(cfg.val_fraction * len(frame))), int(round(cfg.test_fraction * len(frame)))
        parts["val"].append(frame.iloc[np.sort(order[:n_val])])
        parts["test"].append(frame.iloc[np.sort(order[n_val:n_val + n_test])])
        parts["train"].append(frame.iloc[np.sort(order[n_val + n_test:])])
        return parts
    for s in series_frames(frame, cfg):
        n = len(s)
        n_test, n_val = int(round(cfg.test_fraction * n)), int(round(cfg.val_fraction * n))
        cut_val, cut_test = n - n_val - n_test, n - n_test
        parts["train"].append(s.iloc[:cut_val])
        parts["val"].append(s.iloc[cut_val:cut_test])
        parts["test"].append(s.iloc[cut_test:])
    return parts


def series_frames(frame: pd.DataFrame, cfg: RegressionDataConfig) -> list[pd.DataFrame]:
    return [g for _, g in frame.groupby(cfg.series_column, sort=True)] if cfg.series_column else [frame]


def build_data(cfg: RegressionDataConfig, seed: int) -> RegressionData:
    frame = synthetic_frame(cfg, seed) if cfg.source == "synthetic" else read_table(cfg.path, cfg.format)
    frame = clean(frame, cfg)
    fingerprint = frame_fingerprint(frame)
    if cfg.missing == "mean":  # features are filled with training means; rows without a target cannot be used
        frame = frame[~frame[_columns(cfg)[2]].isna().any(axis=1)].reset_index(drop=True)
    time_features = resolve_time_features(frame, cfg) if cfg.time_features else []
    frame, derived = add_derived(frame, cfg, time_features)
    parts = split_frame(frame, cfg, seed)
    if cfg.kind == "sequence" and cfg.season_period is not None:
        longest = max((len(p) for p in parts["train"]), default=0)
        if cfg.season_period >= longest:
            raise ValueError(f"data.season_period={cfg.season_period} is longer than the training part of every series "
                             f"(the longest has {longest} rows); give a shorter period, or leave it out to detect one")
    pre = fit_preprocessing(pd.concat(parts["train"]), cfg, derived, time_features)
    datasets: dict[str, Dataset | None] = {}
    if cfg.kind == "sequence":
        series = [pre.arrays(s, cfg.missing) for s in series_frames(frame, cfg)]
        lengths = {name: [len(p) for p in parts[name]] for name in parts}
        starts = np.zeros(len(series), dtype=np.int64)
        for name in ("train", "val", "test"):
            ends = starts + np.asarray(lengths[name], dtype=np.int64)
            datasets[name] = SequenceWindows(series, list(zip(starts.tolist(), ends.tolist())), cfg)
            starts = ends
    else:
        for name, segments in parts.items():
            arrays = [pre.arrays(seg, cfg.missing) for seg in segments if len(seg)]
            datasets[name] = TabularRows(*(np.concatenate([a[k] for a in arrays]) for k in ("x", "cats", "y"))) if arrays else None
    for name, ds in datasets.items():
        if ds is None or len(ds) == 0:
            if name == "test" and cfg.test_fraction == 0:
                datasets[name] = None
                continue
            if cfg.kind == "tabular":
                raise ValueError(f"the {name} split has no rows ({len(frame)} rows in all); use more data or a larger "
                                 f"data.{name}_fraction")
            need = cfg.window + cfg.horizon + cfg.horizon_steps - 1
            longest = max(len(s) for s in series_frames(frame, cfg))
            raise ValueError(f"the {name} split has no complete example: one needs {need} rows of one series (data.window="
                             f"{cfg.window} + data.horizon={cfg.horizon} + data.horizon_steps={cfg.horizon_steps} - 1) and "
                             f"the longest series has {longest} rows ({lengths[name] and max(lengths[name])} in the {name} "
                             f"split); use a smaller data.window / data.horizon, more data, or a larger data.{name}_fraction")
    return RegressionData(pre, datasets["train"], datasets["val"], datasets["test"],
                          {k: pd.concat(v) if v else pd.DataFrame() for k, v in parts.items()}, fingerprint)
