"""Validation loss of a model on a run's data, without Lightning (used by conversion and reports)."""

from __future__ import annotations

import torch
from torch import nn

from ..data import LMDataModule
from .config import RunConfig


@torch.inference_mode()
def validation_loss(model: nn.Module, cfg: RunConfig, *, max_batches: int | None = None, cache_root: str | None = None,
                    cache: str | None = None, chunk: int = 16, cache_options: dict | None = None) -> float:
    """Mean next-token cross-entropy over the run's validation blocks (token-weighted, as in training).

    With ``cache`` (a KV cache kind: contiguous, paged, int8, int4), each block is fed through a cache of that
    kind ``chunk`` tokens at a time, as generation reads it: every query attends to the cached (for int8 /
    int4: quantized, except the newest ``residual``) keys of the tokens before its chunk. ``contiguous`` gives
    the plain loss (within float rounding); the difference to it is what the cache kind costs in quality."""
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")
    datamodule = LMDataModule(cfg.data, seed=cfg.seed, cache_root=cache_root or f"{cfg.out_dir}/.cache",
                              max_val_batches=max_batches if max_batches is not None else cfg.trainer.limit_val_batches)
    datamodule.setup()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in datamodule.val_dataloader():
        x, y = x.to(device), y.to(device)
        if cache is None:
            pieces = [model(x, y)]
        else:
            caches = model.new_caches(x.shape[0], x.shape[1], kind=cache, **(cache_options or {}))
            pieces = [model(x[:, i : i + chunk], y[:, i : i + chunk], caches=caches) for i in range(0, x.shape[1], chunk)]
        for out in pieces:
            total += out.loss.double().item() * int(out.num_tokens)
            count += int(out.num_tokens)
    model.train(was_training)
    return total / max(count, 1)
