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


class _CategoricalEmbedding(nn.Module):
    """One table for all categorical columns (code 0 of each column = unseen value): ``[..., C] -> [..., C, D]``."""

    def __init__(self, cardinalities: list[int], dim: int, std: float) -> None:
        super().__init__()
        self.register_buffer("offsets", torch.tensor([0] + cardinalities[:-1]).cumsum(0), persistent=False)
        self.table = nn.Embedding(max(1, sum(cardinalities)), dim)
        nn.init.normal_(self.table.weight, 0.0, std)

    def forward(self, codes: Tensor) -> Tensor:
        return self.table(codes + self.offsets)


class SequenceRegressor(nn.Module):
    def __init__(self, cfg: ModelConfig, *, num_features: int, num_targets: int, horizon_steps: int = 1,
                 cardinalities: list[int] | None = None, head_dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg, self.num_targets, self.horizon_steps = cfg, num_targets, horizon_steps
        D = cfg.embed_dim
        self.input_proj = nn.Linear(num_features, D) if num_features else None
        self.categorical = _CategoricalEmbedding(cardinalities, D, cfg.init_std) if cardinalities else None
        self.cls = nn.Parameter(torch.randn(1, 1, D) * cfg.init_std) if cfg.pooling == "cls" else None
        if cfg.position == "learned":
            self.positions = nn.Embedding(cfg.max_seq_len, D)
        elif cfg.position == "sinusoidal":
            self.register_buffer("sinusoidal", sinusoidal_table(cfg.max_seq_len, D), persistent=False)
        self.encoder = Encoder(cfg)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(D, num_targets * horizon_steps))

    def forward(self, x: Tensor, cats: Tensor | None = None, padding_mask: Tensor | None = None, *,
                return_aux: bool = False):
        """``x`` ``[b, s, F]``, ``cats`` ``[b, s, C]``, ``padding_mask`` ``[b, s]`` (1 = real step) -> ``[b, H * T]``
        (with ``return_aux``: also the encoder's MoE load-balancing loss, None without experts)."""
        h = self.input_proj(x) if self.input_proj is not None else 0.0
        if self.categorical is not None and cats is not None and cats.shape[-1]:
            h = h + self.categorical(cats).sum(-2)
        if self.cls is not None:  # CLS first; it is always a real token
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)
            if padding_mask is not None:
                padding_mask = torch.cat([torch.ones_like(padding_mask[:, :1]), padding_mask], dim=1)
        if self.cfg.position == "learned":
            h = h + self.positions(torch.arange(h.shape[1], device=h.device))
        elif self.cfg.position == "sinusoidal":
            h = h + self.sinusoidal[: h.shape[1]].to(h.dtype)
        out = self.encoder(h, padding_mask)
        pred = self.head(pool(out.hidden, padding_mask, self.cfg.pooling))
        return (pred, out.aux_loss) if return_aux else pred


class TabularRegressor(nn.Module):
    def __init__(self, cfg: ModelConfig, *, num_features: int, num_targets: int, cardinalities: list[int] | None = None,
                 head_dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg, self.num_targets, self.horizon_steps = cfg, num_targets, 1
        D = cfg.embed_dim
        tokens = num_features + len(cardinalities or []) + 1
        if cfg.attention.positional != "none" or cfg.position != "none":
            raise ValueError("tabular features are a set, not a sequence: use model.position=none and "
                             "model.attention.positional=none (each feature has its own embedding)")
        if tokens > cfg.max_seq_len:
            raise ValueError(f"{tokens} feature tokens exceed model.max_seq_len={cfg.max_seq_len}")
        self.weight = nn.Parameter(torch.randn(num_features, D) * cfg.init_std)  # per-feature linear embedding
        self.bias = nn.Parameter(torch.zeros(num_features, D))
        self.categorical = _CategoricalEmbedding(cardinalities, D, cfg.init_std) if cardinalities else None
        self.cls = nn.Parameter(torch.randn(1, 1, D) * cfg.init_std)
        self.encoder = Encoder(cfg)
        self.norm = make_norm(cfg) if cfg.norm_position == "post" else nn.Identity()
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(D, num_targets))

    def forward(self, x: Tensor, cats: Tensor | None = None, padding_mask: Tensor | None = None, *,
                return_aux: bool = False):
        """``x`` ``[b, F]``, ``cats`` ``[b, C]`` -> ``[b, T]`` (with ``return_aux``: also the MoE aux loss)."""
        tokens = [self.cls.expand(x.shape[0], -1, -1), x[..., None] * self.weight + self.bias]  # [b, 1, D], [b, F, D]
        if self.categorical is not None and cats is not None and cats.shape[-1]:
            tokens.append(self.categorical(cats))  # [b, C, D]
        out = self.encoder(torch.cat(tokens, dim=1))
        pred = self.head(self.norm(out.hidden[:, 0]))
        return (pred, out.aux_loss) if return_aux else pred


def build_regressor(cfg: ModelConfig, *, kind: str, num_features: int, num_targets: int, horizon_steps: int = 1,
                    cardinalities: list[int] | None = None, head_dropout: float = 0.0) -> nn.Module:
    if kind == "tabular":
        return TabularRegressor(cfg, num_features=num_features, num_targets=num_targets, cardinalities=cardinalities,
                                head_dropout=head_dropout)
    return SequenceRegressor(cfg, num_features=num_features, num_targets=num_targets, horizon_steps=horizon_steps,
                             cardinalities=cardinalities, head_dropout=head_dropout)
