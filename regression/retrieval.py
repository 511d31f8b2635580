"""Retrieval of similar training rows for tabular regressors (TabR: Gorishniy et al. 2024, "TabR: Tabular Deep
Learning Meets Nearest Neighbors").

Why: on real tables a row's nearest training rows, and what their targets were, often say more than any smooth
function of the features — most plainly in panels, where the same unit appears in several rows with the same
covariates (randhie: 20,190 rows, 2,760 distinct feature rows). Gradient boosting exploits that by memorising
repeated rows; a transformer fitting one smooth function cannot. TabR lets the model look them up, and learn how
much to trust them.

For a row with key ``k`` (its feature tokens, summed -> linear -> LayerNorm -> linear), the ``m`` training rows
whose keys are nearest in squared Euclidean distance are its context. With weights ``p = softmax(-|k - k_j|²)`` and
values ``v_j = W_y y_j + T(k - k_j)`` (``T``: linear -> ReLU -> dropout -> linear without bias), the context vector
``Σ_j p_j v_j`` ``[D]`` is what the module returns; the regressor reads it as one more token.

The candidates are the training rows, kept as buffers (so a checkpoint predicts on new data without the training
table; its size grows with the training split). In training a row never retrieves itself (``rows``: its index among
the candidates), or it would read its own target. The search runs without gradients over all candidates in chunks
(memory bounded for large tables); the keys of the rows it picked are computed again with gradients (TabR's
memory-efficient mode), so distances, weights and the key encoder's gradients are exact for the rows used.

The search keys of all candidates are cached while the model's parameters are unchanged (evaluation: exact). In
training they are recomputed every ``SEARCH_REFRESH`` forward passes, so *which* rows are picked may lag the latest
weights by a few optimizer steps (like TabR's context freeze, less coarse). At randhie's size (14k candidates) this
takes a training step from 123.2 to 88.0 ms (``python bench/retrieval_step.py``; 41.1 ms without retrieval).

Shapes: b batch, R feature tokens per row, D embed dim, N candidate rows, m neighbours, F numeric features,
C categorical features, T targets.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

REPEATED_ROWS = 0.5  # retrieval auto: on from this share of training rows that repeat another's features
SEARCH_CHUNK = 65536  # candidate rows scored at once: [b, chunk] distances
SEARCH_REFRESH = 10  # training forward passes between recomputations of the candidates' search keys


def repeated_share(x: np.ndarray, cats: np.ndarray) -> float:
    """The share of rows ``x`` ``[N, F]`` / ``cats`` ``[N, C]`` whose features equal another row's exactly: near 1 in a
    panel (randhie 0.975), lower in a survey of few distinct answers (fair 0.32), 0 with continuous features."""
    rows = np.concatenate([np.asarray(x, dtype=np.float64), np.asarray(cats, dtype=np.float64)], axis=1)
    if len(rows) == 0:
        return 0.0
    _, inverse, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.reshape(-1)] > 1).mean())


class NeighbourContext(nn.Module):
    def __init__(self, dim: int, num_targets: int, num_features: int, num_categoricals: int, *, neighbours: int,
                 dropout: float) -> None:
        super().__init__()
        self.neighbours, self.dropout = neighbours, dropout
        # the sum of the feature tokens, not their concatenation as in TabR: each token already has its feature's own
        # embedding, so a linear map of either is a sum of per-feature functions, and the sum is R times cheaper
        self.encode = nn.Linear(dim, dim)  # [b, D] -> [b, D]
        self.norm = nn.LayerNorm(dim)
        self.key = nn.Linear(dim, dim)
        self.label = nn.Linear(num_targets, dim)
        self.transfer = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim, bias=False))
        # the values start at zero, so the model starts as the plain FT-Transformer (plus a constant token) and
        # reads the neighbours' targets as far as training finds them useful (measured: within seed noise of a random
        # start on fair, bench/RESULTS.md)
        for weight in (self.label.weight, self.label.bias, self.transfer[-1].weight):
            nn.init.zeros_(weight)
        # the training rows, set by fit_candidates (or a checkpoint: the load hook takes the stored sizes)
        self.register_buffer("candidate_x", torch.zeros(0, num_features))  # [N, F]
        self.register_buffer("candidate_cats", torch.zeros(0, num_categoricals, dtype=torch.long))  # [N, C]
        self.register_buffer("candidate_y", torch.zeros(0, num_targets))  # [N, T]
        self._register_load_state_dict_pre_hook(self._resize_candidates)
        self._cache: tuple[tuple, Tensor, Tensor] | None = None  # (source, weight fingerprint, search keys [N, D])
        self._stale_steps = 0

    def fit_candidates(self, x: np.ndarray, cats: np.ndarray, y: np.ndarray) -> None:
        """The training split's scaled features ``[N, F]``, category codes ``[N, C]`` and scaled targets ``[N, T]``."""
        device = self.candidate_x.device
        self.candidate_x = torch.as_tensor(x, dtype=torch.float32, device=device).clone()
        self.candidate_cats = torch.as_tensor(cats, dtype=torch.long, device=device).clone()
        self.candidate_y = torch.as_tensor(y, dtype=torch.float32, device=device).clone()
        self._cache = None

    def _resize_candidates(self, state_dict, prefix, *args) -> None:
        self._cache = None  # loaded weights or candidates: the cached search keys are of others
        for name in ("candidate_x", "candidate_cats", "candidate_y"):
            stored = state_dict.get(prefix + name)
            if stored is not None and stored.shape != getattr(self, name).shape and stored.shape[1:] == getattr(self, name).shape[1:]:
                setattr(self, name, torch.empty_like(stored, device=getattr(self, name).device))

    def keys(self, tokens: Tensor) -> Tensor:
        """``[b, R, D] -> [b, D]``."""
        return self.key(self.norm(self.encode(tokens.sum(1))))

    def _source(self, tokens_of: Callable) -> tuple:
        """What the cached keys are of: the token model, the candidates, autocast."""
        return id(getattr(tokens_of, "__self__", self)), self.candidate_x.device, self.candidate_x.data_ptr(), torch.is_autocast_enabled()

    @torch.no_grad()
    def _fingerprint(self, tokens_of: Callable) -> Tensor:
        """The sum of every parameter of the model that makes the tokens, and of this module: changes with any weight
        update. Parameter version counters would be cheaper, but fused optimizers update weights without bumping them."""
        owner = getattr(tokens_of, "__self__", self)
        params = {id(p): p for p in (*owner.parameters(), *self.parameters())}.values()
        return torch.stack([p.detach().sum(dtype=torch.float64) for p in params])

    @torch.no_grad()
    def _candidate_keys(self, tokens_of: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """All candidates' search keys ``[N, D]``: cached (see the module docstring)."""
        source = self._source(tokens_of)
        if self._cache is not None and self._cache[0] == source:
            if self.training and self._stale_steps < SEARCH_REFRESH:  # a training step needs no fingerprint
                self._stale_steps += 1
                return self._cache[2]
            fingerprint = self._fingerprint(tokens_of)
            if torch.equal(self._cache[1], fingerprint):
                self._stale_steps += self.training
                return self._cache[2]
        else:
            fingerprint = self._fingerprint(tokens_of)
        keys = torch.cat([self.keys(tokens_of(self.candidate_x[s:s + SEARCH_CHUNK], self.candidate_cats[s:s + SEARCH_CHUNK]))
                          for s in range(0, len(self.candidate_x), SEARCH_CHUNK)])
        self._cache, self._stale_steps = (source, fingerprint, keys), 1
        return keys

    @torch.no_grad()
    def _search(self, k: Tensor, tokens_of: Callable[[Tensor, Tensor], Tensor], rows: Tensor | None, m: int) -> tuple[Tensor, Tensor]:
        """-> the ``[b, m]`` indices of the nearest candidates and all candidates' keys ``[N, D]``."""
        keys = self._candidate_keys(tokens_of)
        best_d, best_i = [], []
        for start in range(0, len(keys), SEARCH_CHUNK):
            ck = keys[start:start + SEARCH_CHUNK]
            d = torch.addmm(ck.pow(2).sum(-1)[None], k, ck.T, alpha=-2).float() + k.pow(2).sum(-1, keepdim=True)  # [b, chunk]
            if rows is not None:  # a training row is not its own neighbour
                own = rows - start
                inside = (own >= 0) & (own < ck.shape[0])
                d[inside.nonzero().squeeze(-1), own[inside]] = float("inf")
            top = d.topk(min(m, d.shape[1]), dim=-1, largest=False)
            best_d.append(top.values)
            best_i.append(top.indices + start)
        d, i = torch.cat(best_d, dim=1), torch.cat(best_i, dim=1)
        return i.gather(1, d.topk(m, dim=-1, largest=False).indices), keys

    def forward(self, tokens: Tensor, tokens_of: Callable[[Tensor, Tensor], Tensor], rows: Tensor | None = None) -> Tensor:
        """``tokens`` ``[b, R, D]``: the rows' feature tokens; ``tokens_of(x, cats)``: the same tokens for candidate
        rows; ``rows`` ``[b]``: in training, each row's index among the candidates -> the context vector ``[b, D]``."""
        N = len(self.candidate_x)
        if N == 0:
            raise RuntimeError("regressor.neighbours: the model has no candidate rows; call fit_candidates with the "
                               "training split (the run does) or load a checkpoint that holds them")
        if self.training and rows is None:
            raise RuntimeError("regressor.neighbours in training needs each row's index among the candidates (rows), "
                               "or a row would retrieve its own target")
        m = min(self.neighbours, N - (rows is not None))
        k = self.keys(tokens)  # [b, D]
        idx, candidate_keys = self._search(k.detach(), tokens_of, rows, m)  # [b, m], [N, D]
        if torch.is_grad_enabled():  # the chosen rows' keys again, with gradients (each distinct row once)
            unique, inverse = idx.unique(return_inverse=True)
            context = self.keys(tokens_of(self.candidate_x[unique], self.candidate_cats[unique]))[inverse]  # [b, m, D]
        else:
            context = candidate_keys[idx]
        diff = k[:, None] - context  # [b, m, D]
        p = torch.softmax(-diff.pow(2).sum(-1), dim=-1)  # [b, m]
        p = nn.functional.dropout(p, self.dropout, self.training)
        values = self.label(self.candidate_y[idx]) + self.transfer(diff)  # [b, m, D]
        return (p[..., None] * values).sum(1)
