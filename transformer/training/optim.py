"""AdamW with weight decay on matrices only, and the warmup + decay learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig, amp_clips_gradients, check_fused_optimizer


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices of linear layers; never norms, biases or embeddings (nanoGPT, GPT-3)."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))  # tied weights appear once
        (decay if p.dim() >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, precision: str = "32-true") -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`; ``precision`` is the trainer's (it decides whether fused can be used)."""
    check_fused_optimizer(cfg, precision)
    fused = cfg.fused
    if fused is None:  # torch's fused AdamW covers CPU and CUDA tensors
        fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters()) and not amp_clips_gradients(cfg, precision)
    # One fused (or foreach) kernel takes tensors of one kind: under tensor parallelism split DTensors sit beside
    # replicated plain tensors (fsdp2_tp: DTensors on two meshes), so those runs step parameter by parameter.
    uniform = len({getattr(p, "device_mesh", None) for p in model.parameters()}) <= 1
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, fused=(fused and uniform) or None, foreach=None if uniform else False)


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step``: linear warmup, then decay to ``min_lr``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    floor = cfg.min_lr / cfg.lr
    return floor + (1.0 - floor) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, max_steps))
