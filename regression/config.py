"""Config schema of regression runs (``task: regression`` in a YAML given to ``train.py``).

The encoder is the toolkit's own (``model.*`` is a :class:`transformer.config.ModelConfig` with
``kind: encoder``; ``model.attention.*`` picks MHA / GQA / MQA / MLA and positions), and the trainer,
logger and checkpoint sections are the language-model run's, so every option has one name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformer.config import ModelConfig
from transformer.training.config import (
    CheckpointConfig,
    LoggerConfig,
    OptimConfig,
    RunCommon,
    TrainerConfig,
)
from transformer.validation import choice, in_range, positive_fields

SCALINGS = ("standard", "minmax", "none")
TIME_FEATURES = ("minute", "hour", "day_of_week", "day_of_month", "day_of_year", "week", "month", "quarter")
"""Calendar features of ``data.time_features``: each becomes a sin / cos pair over its cycle."""
WINDOW_NORMS = ("auto", "none", "mean", "last")
NUMERIC_EMBEDDINGS = ("linear", "periodic", "ple")
MISSING_POLICIES = ("error", "drop", "ffill", "mean")
LOSSES = ("mse", "huber", "mae")


@dataclass
class RegressionDataConfig:
    """Where the table comes from, which columns mean what, and how examples are cut and split."""

    source: str = "synthetic"
    """``synthetic`` (the embedded default: a generated multivariate series with known noise) or ``files``."""
    path: str | None = None
    """``files``: CSV / Parquet / JSON file(s) (comma-separated or a glob)."""
    format: str | None = None
    """``csv``, ``parquet`` or ``json`` (``None``: from the extension)."""
    kind: str = "sequence"
    """``sequence``: windows over time series -> a transformer over time steps; ``tabular``: one row = one
    example, each feature a token (FT-Transformer)."""
    feature_columns: list[str] = field(default_factory=list)
    """Numeric input columns (``[]`` with ``synthetic``: its own)."""
    categorical_columns: list[str] = field(default_factory=list)
    """Categorical input columns (any values; codes are learned from the training split, unseen -> a reserved code)."""
    target_columns: list[str] = field(default_factory=list)
    """Columns to predict."""
    series_column: str | None = None
    """``sequence``: the column identifying each series (windows never cross series)."""
    time_column: str | None = None
    """``sequence``: rows are sorted by this within each series (``None``: file order); a value repeated within
    one series is an error."""
    time_features: list[str] = field(default_factory=list)
    """Calendar features of ``time_column`` (a date / time column) as inputs, each a sin / cos pair: any of
    ``minute, hour, day_of_week, day_of_month, day_of_year, week, month, quarter``, or ``[auto]``: those that
    vary at the data's median step (hourly data: hour, day_of_week, day_of_year; monthly: month; ...)."""
    target_history: bool = True
    """``sequence``: the targets' own past values are input channels (after the features): at each window row the
    observed target, and at a row being predicted (``horizon: 0``) the last observed one. Off: the targets are
    predicted from the features alone."""
    lags: list[int] = field(default_factory=list)
    """``sequence``: lagged copies of each target as extra features (``y`` ``k`` rows earlier, per series), e.g.
    ``[52]`` for a yearly season of weekly data that is longer than the window; each series loses its first
    ``max(lags)`` rows."""
    window: int = 32
    """``sequence``: time steps per input window."""
    horizon: int = 0
    """``sequence``: predict targets this many steps after the window's last step (0: at the last step);
    with ``horizon_steps`` > 1, the values at ``horizon .. horizon + horizon_steps - 1``."""
    horizon_steps: int = 1
    """``sequence``: how many consecutive future values of each target to predict (forecasting)."""
    stride: int = 1
    """``sequence``: step between consecutive windows."""
    season_period: int | None = None
    """``sequence``: the season length (in rows) of the seasonal-naive baselines; ``None``: the lag of the training
    targets' highest autocorrelation peak up to ``window`` (no peak reaching 0.3: those baselines are skipped)."""
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    """Held-out shares: the last ones in time within each series (``sequence``) or a seeded random share of rows (``tabular``)."""
    missing: str = "error"
    """Missing / non-numeric cells: ``error`` (name column and row), ``drop`` rows, ``ffill`` within a series,
    or ``mean`` (training-split mean)."""
    feature_scaling: str = "standard"
    target_scaling: str = "standard"
    """``standard``, ``minmax`` or ``none``; fitted on the training split only, stored in the checkpoint, inverted
    for metrics and predictions."""
    batch_size: int = 64
    num_workers: int = 0
    synthetic_series: int = 16
    synthetic_length: int = 600
    synthetic_noise: float = 0.3
    """``synthetic``: number of series, steps per series, and the std of the irreducible noise (the RMSE floor)."""

    def __post_init__(self) -> None:
        choice("data.source", self.source, ("synthetic", "files"))
        choice("data.kind", self.kind, ("sequence", "tabular"))
        choice("data.missing", self.missing, MISSING_POLICIES)
        choice("data.feature_scaling", self.feature_scaling, SCALINGS)
        choice("data.target_scaling", self.target_scaling, SCALINGS)
        if self.format is not None:
            choice("data.format", self.format, ("csv", "parquet", "json"))
        if self.source == "files":
            if not self.path:
                raise ValueError("data.path is required when data.source='files'")
            if not self.target_columns:
                raise ValueError("data.target_columns must name at least one column to predict")
            if not (self.feature_columns or self.categorical_columns or self.time_features or self.lags
                    or (self.kind == "sequence" and self.target_history)):
                raise ValueError("data.feature_columns / data.categorical_columns must name at least one input column "
                                 "(or, for a sequence, keep data.target_history=true to forecast from the targets' past)")
        overlap = set(self.target_columns) & set(self.categorical_columns)
        if overlap:
            raise ValueError(f"columns {sorted(overlap)} are both targets and categorical inputs")
        in_range("data.horizon", self.horizon, 0)
        in_range("data.num_workers", self.num_workers, 0)
        in_range("data.synthetic_noise", self.synthetic_noise, 0.0)
        positive_fields("data", self, ("window", "horizon_steps", "stride", "batch_size", "synthetic_series", "synthetic_length"))
        if self.season_period is not None:
            in_range("data.season_period", self.season_period, 2)
        for lag in self.lags:
            in_range("data.lags", lag, 1)
        if self.time_features:
            if not self.time_column:
                raise ValueError("data.time_features needs data.time_column (the date / time column they are read from)")
            if self.time_features != ["auto"]:
                for name in self.time_features:
                    choice("data.time_features", name, TIME_FEATURES + ("auto",))
                if "auto" in self.time_features:
                    raise ValueError("data.time_features: give [auto] alone, or a list of features without auto")
        if not (0 < self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"data.val_fraction={self.val_fraction} and data.test_fraction={self.test_fraction} must leave a training share")


@dataclass
class HeadConfig:
    loss: str = "mse"
    """Training loss: ``mse``, ``huber`` or ``mae`` (on scaled targets)."""
    huber_delta: float = 1.0
    head_dropout: float = 0.0

    def __post_init__(self) -> None:
        choice("head.loss", self.loss, LOSSES)


@dataclass
class RegressorConfig:
    """How the regressor reads its inputs (``regressor.*``): per-window normalisation, patches and channels for
    sequences, numeric feature embeddings for tables. Defaults chosen by measurement (``bench/regression_real.py``)."""

    window_norm: str = "auto"
    """``sequence``, RevIN (Kim et al. 2022): each input channel of a window is shifted by its own ``mean`` or
    ``last`` value and divided by its own std; the model predicts in that frame and the prediction is mapped back
    with the target channels' statistics (so shifting a series shifts its forecast). ``last`` means the model
    predicts the change from the last observed value. ``none``: only the global scaling fitted on the training
    split. ``auto``: the frame whose least-squares linear forecast (the linear skip's start) has the lowest
    validation error; the run says which (``none`` without ``data.target_history``)."""
    window_norm_affine: bool = False
    """A learnable per-channel scale and shift inside the normalised frame (RevIN's affine option)."""
    linear_skip: bool | None = None
    """A linear map from the (normalised) window (tables: the numeric features) straight to the prediction, added to
    the transformer's (as the autoregressive component of LSTNet), fitted by ridge before training with the head
    starting at zero: the transformer learns what a linear model misses. ``None``: on for sequences, off for tables
    (measured on real tables it lost: randhie 1.026 -> 1.039 of the best baseline, fair 0.99 -> 1.00)."""
    linear_skip_trainable: bool = False
    """Train the linear skip with the rest (``false``: it keeps its ridge fit, whose penalty was chosen on validation;
    gradient steps without that penalty would undo it on small data)."""
    patch_len: int = 0
    """``sequence``, PatchTST (Nie et al. 2023): tokens are patches of this many steps (0: one token per step)."""
    patch_stride: int | None = None
    """Step between patches (``None``: ``patch_len``, no overlap); where the patches would not end on the window's
    last step, the window is padded by repeating that step."""
    channel_independent: bool = False
    """``sequence``: every input channel is its own token sequence through the shared encoder (PatchTST's channel
    independence); the head reads all channels' pooled states."""
    numeric_embedding: str = "linear"
    """``tabular``: each numeric feature's token: ``linear`` (``x w + b``, FT-Transformer), ``periodic`` (sin / cos of
    learned frequencies -> linear -> ReLU, PLR of Gorishniy et al. 2022) or ``ple`` (piecewise-linear encoding on
    training-split quantile bins -> linear)."""
    num_frequencies: int = 16
    frequency_scale: float = 0.1
    """``periodic``: frequencies per feature and the std of their initialisation (on standardised inputs)."""
    ple_bins: int = 16
    """``ple``: quantile bins per feature (fewer where a feature has fewer distinct training values)."""
    retrieval: bool | None = None
    """``tabular``, TabR (Gorishniy et al. 2024): each row retrieves its ``neighbours`` nearest training rows (in a
    learned key space) and reads their targets as one more token (``retrieval.py``). ``None`` (auto): on when at least half
    the training rows repeat another training row's features exactly (a panel: the same unit in several rows), where
    it was measured to help (randhie 1.034 -> 0.983 of the best baseline); off otherwise, where it was measured to cost
    (fair, engel, anes96: bench/RESULTS.md). The run says which and why; a model built outside a run has none. The
    training rows are stored in the model (checkpoints grow with the training split)."""
    neighbours: int = 32
    """``retrieval``: training rows each row reads."""

    def __post_init__(self) -> None:
        choice("regressor.window_norm", self.window_norm, WINDOW_NORMS)
        choice("regressor.numeric_embedding", self.numeric_embedding, NUMERIC_EMBEDDINGS)
        in_range("regressor.patch_len", self.patch_len, 0)
        if self.patch_stride is not None:
            in_range("regressor.patch_stride", self.patch_stride, 1)
            if not self.patch_len:
                raise ValueError("regressor.patch_stride needs regressor.patch_len (the patch size)")
        positive_fields("regressor", self, ("num_frequencies", "ple_bins"))
        positive_fields("regressor", self, ("neighbours",))
        in_range("regressor.frequency_scale", self.frequency_scale, 0.0, low_open=True)


def _default_model() -> ModelConfig:
    return ModelConfig(kind="encoder", vocab_size=1, embed_dim=64, num_heads=4, num_layers=3, max_seq_len=64,
                       norm="rmsnorm", mlp="swiglu", pooling="last", attention={"type": "mha", "positional": "rope"})


@dataclass
class RegressionRunConfig(RunCommon):
    task: str = "regression"
    name: str = "regression"
    model: ModelConfig = field(default_factory=_default_model)
    """The encoder (``kind`` is forced to ``encoder``; ``vocab_size`` is unused). ``init_from`` may name a
    language model's checkpoint or export: its ``decoder.*`` weights map onto ``encoder.*``."""
    data: RegressionDataConfig = field(default_factory=RegressionDataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    regressor: RegressorConfig = field(default_factory=RegressorConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, min_lr=1e-5, weight_decay=0.01, warmup_steps=100))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=3000, val_check_interval=250,
                                                                         limit_val_batches=None))
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        self.check_common("regression")
        if self.model.kind != "encoder":
            raise ValueError(f"model.kind={self.model.kind!r}: regression models use an encoder (model.kind: encoder)")
        if self.trainer.peak_flops is not None:
            raise ValueError("trainer.peak_flops is for the MFU metric of language-model runs; regression runs report "
                             "no MFU: remove the key")
        if self.data.kind == "sequence" and self.regressor.retrieval:
            raise ValueError("regressor.retrieval=true retrieves similar training rows of a table (data.kind=tabular); a "
                             "sequence model reads its window instead: set regressor.retrieval=false")
        if self.data.kind == "sequence":
            r = self.regressor
            if r.patch_len > self.data.window:
                raise ValueError(f"regressor.patch_len={r.patch_len} is longer than data.window={self.data.window}")
            tokens = self.tokens_per_window() + (self.model.pooling == "cls")
            if tokens > self.model.max_seq_len:
                raise ValueError(f"data.window={self.data.window} gives {tokens} tokens (patches, +1 for a CLS token), more "
                                 f"than model.max_seq_len={self.model.max_seq_len}; raise model.max_seq_len or use patches")
            if r.window_norm not in ("none", "auto") and not self.data.target_history:
                raise ValueError(f"regressor.window_norm={r.window_norm} maps predictions back with the targets' window "
                                 f"statistics, which needs data.target_history=true (or set regressor.window_norm=none)")

    def tokens_per_window(self) -> int:
        """Tokens one window becomes: its steps, or its patches (the padded end makes one more patch)."""
        r, W = self.regressor, self.data.window
        if not r.patch_len:
            return W
        stride = r.patch_stride or r.patch_len
        return -(-(W - r.patch_len) // stride) + 1
