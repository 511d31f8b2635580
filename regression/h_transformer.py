"""Regression models on the toolkit's encoder (the original design's module name).

- :class:`SequenceRegressor`: a sequence of feature vectors (multivariate time series, any sequence
  of continuous inputs, optional categorical covariates) -> linear input projection -> positions
  (learned / sinusoidal here, or RoPE / ALiBi / relative inside attention, per ``model.*``) ->
  :class:`transformer.encoder.Encoder` with key-padding masks -> pooling (``cls`` / ``mean`` / ``last``,
  honouring the mask) -> a head predicting ``T`` targets for ``H`` steps.
- :class:`TabularRegressor` (FT-Transformer, Gorishniy et al. 2021): every numeric feature becomes a
  token ``x_i * w_i + b_i``, every categorical one an embedding; a CLS token; the encoder; the head
  reads the CLS token.

Both take any attention type from ``get_attention`` through ``model.attention`` and keep their encoder
under ``encoder.*``, so a language model's ``decoder.*`` layers can initialise it (``init_from``).

Shapes: b batch, s sequence (window) length, F numeric features, C categorical features, D embed_dim,
T targets, H horizon steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from transformer.attention import sinusoidal_table
from transformer.config import ModelConfig
from transformer.encoder import Encoder
from transformer.layers import make_norm, pool

from .config import RegressorConfig
from .numeric_embeddings import numeric_embedding
from .retrieval import NeighbourContext
from .window_norm import WindowNorm


class _CategoricalEmbedding(nn.Module):
    """One table for all categorical columns (code 0 of each column = unseen value): ``[..., C] -> [..., C, D]``."""

    def __init__(self, cardinalities: list[int], dim: int, std: float) -> None:
        super().__init__()
        self.register_buffer("offsets", torch.tensor([0] + cardinalities[:-1]).cumsum(0), persistent=False)
        self.table = nn.Embedding(max(1, sum(cardinalities)), dim)
        nn.init.normal_(self.table.weight, 0.0, std)

    def forward(self, codes: Tensor) -> Tensor:
        return self.table(codes + self.offsets)


def _zero(*layers: nn.Linear | None) -> None:
    for layer in layers:
        if layer is not None:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


def patches(x: Tensor, length: int, stride: int) -> Tensor:
    """``[b, W, C] -> [b, N, length, C]``: windows of ``length`` steps every ``stride``, the end padded by repeating
    the last step where the patches would not end on it (PatchTST)."""
    W = x.shape[1]
    n = -(-(max(W, length) - length) // stride) + 1
    pad = (n - 1) * stride + length - W
    if pad:
        x = torch.cat([x, x[:, -1:].expand(-1, pad, -1)], dim=1)
    return x.unfold(1, length, stride).transpose(-1, -2)  # unfold: [b, N, C, length]


class SequenceRegressor(nn.Module):
    """Windows ``[b, W, C]`` (C = features, then the targets' history when ``target_channels``) -> ``[b, H * T]``.

    Tokens are steps, or patches of ``regressor.patch_len`` steps; with ``regressor.channel_independent`` each
    channel is its own token sequence (``[b * C, N, D]``) through the shared encoder and the head reads every
    channel's pooled state. ``regressor.window_norm`` normalises the target channels per window and maps the
    prediction back (``window_norm.py``); ``regressor.linear_skip`` adds a linear map of the window.
    """

    def __init__(self, cfg: ModelConfig, *, num_features: int, num_targets: int, horizon_steps: int = 1,
                 cardinalities: list[int] | None = None, head_dropout: float = 0.0, regressor: RegressorConfig | None = None,
                 window: int | None = None, target_channels: int = 0, normalised: list[bool] | None = None) -> None:
        """``normalised`` ``[C]``: the channels ``window_norm`` normalises (default all; not calendar features)."""
        super().__init__()
        r = regressor or RegressorConfig(window_norm="none", linear_skip=False)
        self.cfg, self.r, self.num_targets, self.horizon_steps = cfg, r, num_targets, horizon_steps
        if r.window_norm != "none" and target_channels != num_targets:
            raise ValueError("regressor.window_norm needs the targets' history among the inputs (data.target_history=true)")
        if r.linear_skip is not False and window is None:
            raise ValueError("regressor.linear_skip needs the window length")
        D, C = cfg.embed_dim, num_features
        self.patch_len, self.patch_stride = r.patch_len or 1, (r.patch_stride or r.patch_len) if r.patch_len else 1
        per_token = self.patch_len * (1 if r.channel_independent else C)
        self.input_proj = nn.Linear(per_token, D) if C else None
        self.channel_embedding = nn.Parameter(torch.randn(C, D) * cfg.init_std) if r.channel_independent else None
        self.categorical = _CategoricalEmbedding(cardinalities, D, cfg.init_std) if cardinalities else None
        self.cls = nn.Parameter(torch.randn(1, 1, D) * cfg.init_std) if cfg.pooling == "cls" else None
        if cfg.position == "learned":
            self.positions = nn.Embedding(cfg.max_seq_len, D)
        elif cfg.position == "sinusoidal":
            self.register_buffer("sinusoidal", sinusoidal_table(cfg.max_seq_len, D), persistent=False)
        self.window_norm = (WindowNorm(r.window_norm, num_targets, normalised or [True] * C, affine=r.window_norm_affine)
                            if r.window_norm != "none" else None)
        self.encoder = Encoder(cfg)
        pooled = D * (C if r.channel_independent else 1)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(pooled, num_targets * horizon_steps))
        self.skip = nn.Linear(window * C, num_targets * horizon_steps) if r.linear_skip is not False and C else None
        if self.window_norm is not None or self.skip is not None:
            # start at the skip's least-squares fit (linear_init.py), or at the window's own centre (with ``last``:
            # the last-value forecast); training then fits what a linear forecast misses
            _zero(self.head[-1], self.skip)

    def _tokens(self, x: Tensor, cats: Tensor | None) -> Tensor:
        """``[b, W, C]`` -> ``[b', N, D]`` (``b' = b * C`` with channel independence)."""
        b, W, C = x.shape
        h = 0.0
        if self.input_proj is not None:
            if self.r.channel_independent:  # [b, W, C] -> [b * C, W, 1]
                x = x.transpose(1, 2).reshape(b * C, W, 1)
            p = patches(x, self.patch_len, self.patch_stride) if self.r.patch_len else x[:, :, None, :]  # [b', N, P, c]
            h = self.input_proj(p.flatten(-2))  # [b', N, D]
            if self.channel_embedding is not None:
                h = (h.reshape(b, C, *h.shape[1:]) + self.channel_embedding[None, :, None]).flatten(0, 1)
        if self.categorical is not None and cats is not None and cats.shape[-1]:
            emb = self.categorical(cats).sum(-2)  # [b, W, D]
            if self.r.patch_len:  # the mean over each patch's steps
                emb = patches(emb, self.patch_len, self.patch_stride).mean(-2)
            if self.r.channel_independent and self.input_proj is not None:
                emb = emb.repeat_interleave(C, dim=0)
            h = h + emb
        return h

    def forward(self, x: Tensor, cats: Tensor | None = None, padding_mask: Tensor | None = None, *,
                return_aux: bool = False):
        """``x`` ``[b, W, C]``, ``cats`` ``[b, W, K]``, ``padding_mask`` ``[b, W]`` (1 = real step; steps as tokens
        only) -> ``[b, H * T]`` (with ``return_aux``: also the encoder's MoE load-balancing loss, None without experts)."""
        if padding_mask is not None and (self.r.patch_len or self.r.channel_independent):
            raise ValueError("a padding mask needs one token per step (regressor.patch_len=0, channel_independent=false)")
        b = x.shape[0]
        stats = None
        if self.window_norm is not None:
            x, stats = self.window_norm.normalise(x)
        h = self._tokens(x, cats)
        if self.cls is not None:  # CLS first; it is always a real token
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)
            if padding_mask is not None:
                padding_mask = torch.cat([torch.ones_like(padding_mask[:, :1]), padding_mask], dim=1)
        if self.cfg.position == "learned":
            h = h + self.positions(torch.arange(h.shape[1], device=h.device))
        elif self.cfg.position == "sinusoidal":
            h = h + self.sinusoidal[: h.shape[1]].to(h.dtype)
        out = self.encoder(h, padding_mask)
        pooled = pool(out.hidden, padding_mask, self.cfg.pooling)  # [b', D]
        pred = self.head(pooled.reshape(b, -1))  # [b, H * T]
        if self.skip is not None:
            pred = pred + self.skip(x.flatten(1))
        if stats is not None:
            pred = self.window_norm.denormalise(pred.reshape(b, self.horizon_steps, self.num_targets), stats).reshape(b, -1)
        return (pred, out.aux_loss) if return_aux else pred


class TabularRegressor(nn.Module):
    def __init__(self, cfg: ModelConfig, *, num_features: int, num_targets: int, cardinalities: list[int] | None = None,
                 head_dropout: float = 0.0, regressor: RegressorConfig | None = None) -> None:
        super().__init__()
        r = regressor or RegressorConfig(linear_skip=False)
        self.cfg, self.num_targets, self.horizon_steps = cfg, num_targets, 1
        D = cfg.embed_dim
        tokens = num_features + len(cardinalities or []) + 1
        if cfg.attention.positional != "none" or cfg.position != "none":
            raise ValueError("tabular features are a set, not a sequence: use model.position=none and "
                             "model.attention.positional=none (each feature has its own embedding)")
        tokens += bool(r.retrieval)  # the retrieved context's token
        if tokens > cfg.max_seq_len:
            raise ValueError(f"{tokens} feature tokens exceed model.max_seq_len={cfg.max_seq_len}")
        self.numeric = numeric_embedding(r.numeric_embedding, num_features, D, std=cfg.init_std, frequencies=r.num_frequencies,
                                         frequency_scale=r.frequency_scale, bins=r.ple_bins) if num_features else None
        self.categorical = _CategoricalEmbedding(cardinalities, D, cfg.init_std) if cardinalities else None
        self.cls = nn.Parameter(torch.randn(1, 1, D) * cfg.init_std)
        self.encoder = Encoder(cfg)
        self.norm = make_norm(cfg) if cfg.norm_position == "post" else nn.Identity()
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(D, num_targets))
        self.skip = nn.Linear(num_features, num_targets) if r.linear_skip and num_features else None  # None: off
        self.retrieval = (NeighbourContext(D, num_targets, num_features, len(cardinalities or []), neighbours=r.neighbours,
                                           dropout=cfg.dropout) if r.retrieval else None)
        if self.skip is not None:  # start at the skip's ridge fit (linear_init.py); the transformer learns the rest
            _zero(self.head[-1], self.skip)
        self._register_load_state_dict_pre_hook(_old_tabular_keys)

    def feature_tokens(self, x: Tensor, cats: Tensor | None) -> Tensor:
        """``x`` ``[b, F]``, ``cats`` ``[b, C]`` -> ``[b, F + C, D]``."""
        tokens = []
        if self.numeric is not None:
            tokens.append(self.numeric(x))  # [b, F, D]
        if self.categorical is not None and cats is not None and cats.shape[-1]:
            tokens.append(self.categorical(cats))  # [b, C, D]
        return torch.cat(tokens, dim=1) if tokens else x.new_zeros(x.shape[0], 0, self.cls.shape[-1])

    def forward(self, x: Tensor, cats: Tensor | None = None, padding_mask: Tensor | None = None, *,
                return_aux: bool = False, rows: Tensor | None = None):
        """``x`` ``[b, F]``, ``cats`` ``[b, C]`` -> ``[b, T]`` (with ``return_aux``: also the MoE aux loss); ``rows``
        ``[b]``: in training with ``regressor.retrieval``, each row's index in the training split."""
        features = self.feature_tokens(x, cats)  # [b, R, D]
        tokens = [self.cls.expand(x.shape[0], -1, -1), features]  # CLS [b, 1, D] first
        if self.retrieval is not None:  # the nearest training rows' targets, as one more token
            tokens.insert(1, self.retrieval(features, self.feature_tokens, rows)[:, None])
        out = self.encoder(torch.cat(tokens, dim=1))
        pred = self.head(self.norm(out.hidden[:, 0]))
        if self.skip is not None:
            pred = pred + self.skip(x)
        return (pred, out.aux_loss) if return_aux else pred


def _old_tabular_keys(state_dict, prefix, *args) -> None:
    """Checkpoints from before ``numeric_embeddings.py`` kept the linear embedding as ``weight`` / ``bias``."""
    for name in ("weight", "bias"):
        if prefix + name in state_dict:
            state_dict[f"{prefix}numeric.{name}"] = state_dict.pop(prefix + name)


def build_regressor(cfg: ModelConfig, *, kind: str, num_features: int, num_targets: int, horizon_steps: int = 1,
                    cardinalities: list[int] | None = None, head_dropout: float = 0.0, regressor: RegressorConfig | None = None,
                    window: int | None = None, target_channels: int = 0, normalised: list[bool] | None = None) -> nn.Module:
    if kind == "tabular":
        return TabularRegressor(cfg, num_features=num_features, num_targets=num_targets, cardinalities=cardinalities,
                                head_dropout=head_dropout, regressor=regressor)
    return SequenceRegressor(cfg, num_features=num_features, num_targets=num_targets, horizon_steps=horizon_steps,
                             cardinalities=cardinalities, head_dropout=head_dropout, regressor=regressor, window=window,
                             target_channels=target_channels, normalised=normalised)


def regressor_for_run(cfg, pre) -> nn.Module:
    """The model a regression run config (:class:`regression.config.RegressionRunConfig`) and its fitted
    preprocessing describe: one construction for training and prediction."""
    d = cfg.data
    history = len(pre.targets) if d.kind == "sequence" and d.target_history else 0
    calendar = {f"{d.time_column}:{name}_{part}" for name in pre.time_features for part in ("sin", "cos")}
    return build_regressor(cfg.model, kind=d.kind, num_features=len(pre.features) + history, num_targets=len(pre.targets),
                           horizon_steps=d.horizon_steps, cardinalities=pre.cardinalities, head_dropout=cfg.head.head_dropout,
                           regressor=cfg.regressor, window=d.window, target_channels=history,
                           normalised=[name not in calendar for name in pre.features] + [True] * history)
