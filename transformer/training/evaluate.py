"""Validation loss of a model on a run's data, without Lightning (used by conversion and reports)."""

from __future__ import annotations

import torch
from torch import nn

from ..data import LMDataModule
from .config import RunConfig


@torch.inference_mode()
def validation_loss(model: nn.Module, cfg: RunConfig, *, max_batches: int | None = None, cache_root: str | None = None) -> float:
    """Mean next-token cross-entropy over the run's validation blocks (token-weighted, as in training)."""
    datamodule = LMDataModule(cfg.data, seed=cfg.seed, cache_root=cache_root or f"{cfg.out_dir}/.cache",
                              max_val_batches=max_batches if max_batches is not None else cfg.trainer.limit_val_batches)
    datamodule.setup()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in datamodule.val_dataloader():
        out = model(x.to(device), y.to(device))
        total += out.loss.double().item() * int(out.num_tokens)
        count += int(out.num_tokens)
    model.train(was_training)
    return total / max(count, 1)
