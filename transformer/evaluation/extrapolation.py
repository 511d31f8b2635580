"""Validation loss past the trained context: the same validation tokens cut into blocks of 1×, 2× and 4× the
model's ``max_seq_len``, so the figures differ only in how far the model must reach.

For each factor k the result holds ``loss@kx`` (mean next-token loss over every position of the k×L blocks) and
``tail_loss@kx`` (over the last L positions of each block only: the positions the model never saw in training,
where a positional scheme that does not extrapolate shows it most). Every factor reads the same
``blocks × max(factors) × L`` tokens.

Learned absolute positions have no embedding past ``max_seq_len``: their figures beyond 1× are NaN (reported
as n/a). Sinusoidal positions are recomputed for the longer table. RoPE (with its scaling, where configured),
ALiBi, T5 buckets and no positions run as they are.

Shape legend: b blocks in a batch, T = k × L tokens.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn

from ..attention import sinusoidal_table


@contextlib.contextmanager
def longer_context(model: nn.Module, length: int):
    """Let ``model`` take ``length``-token inputs for the duration (positions computed for that length)."""
    embed, cfg = model.embed, model.cfg
    saved = embed.max_seq_len, getattr(embed, "sinusoidal", None)
    embed.max_seq_len = max(length, embed.max_seq_len)
    if saved[1] is not None and length > saved[1].shape[0]:
        embed.sinusoidal = sinusoidal_table(length, cfg.embed_dim).to(saved[1].device, saved[1].dtype)
    try:
        yield model
    finally:
        embed.max_seq_len = saved[0]
        if saved[1] is not None:
            embed.sinusoidal = saved[1]


def extrapolates(model: nn.Module) -> bool:
    return model.cfg.position != "learned"


@torch.inference_mode()
def extrapolation_sums(model: nn.Module, tokens: np.ndarray, *, factors=(1, 2, 4), blocks: int = 8, batch_size: int = 4,
                       rank: int = 0, world_size: int = 1) -> dict[str, list[float]]:
    """``{f"loss@{k}x": [sum, count], f"tail_loss@{k}x": [sum, count]}`` over this rank's share of the blocks
    (block i goes to rank ``i % world_size``): sums, so ranks add up exactly before the one division."""
    L = model.cfg.max_seq_len
    longest = max(factors) * L
    available = (len(tokens) - 1) // longest
    if available < 1:
        raise ValueError(f"length_extrapolation needs at least {longest + 1} validation tokens ({max(factors)} x the "
                         f"{L}-token context, plus one); the split has {len(tokens)}: use more validation data (or "
                         f"--text FILE with more text), or smaller factors")
    blocks = min(blocks, available)
    span = torch.from_numpy(np.asarray(tokens[: blocks * longest + 1], dtype=np.int64))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    try:
        for k in factors:
            T = k * L
            n = blocks * longest // T
            key, tail = f"loss@{k}x", f"tail_loss@{k}x"
            sums[key], sums[tail] = [0.0, 0], [0.0, 0]
            if k > 1 and not extrapolates(model):
                sums[key] = sums[tail] = [math.nan, 1]
                continue
            mine = [i for i in range(n) if i % world_size == rank]
            with longer_context(model, T):
                for begin in range(0, len(mine), batch_size):
                    idx = mine[begin:begin + batch_size]
                    x = torch.stack([span[i * T:(i + 1) * T] for i in idx]).to(device)  # [b, T]
                    y = torch.stack([span[i * T + 1:(i + 1) * T + 1] for i in idx]).to(device)
                    logits = model(x).logits.float()  # [b, T, V]
                    loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(len(idx), T)
                    sums[key][0] += float(loss.double().sum())
                    sums[key][1] += loss.numel()
                    sums[tail][0] += float(loss[:, -L:].double().sum())
                    sums[tail][1] += loss[:, -L:].numel()
    finally:
        model.train(was_training)
    return sums


def finish(sums: dict[str, list[float]]) -> dict[str, float]:
    """Sums (added over ranks) -> mean losses."""
    return {key: (s / c if c else math.nan) for key, (s, c) in sums.items()}


def length_extrapolation(model: nn.Module, tokens: np.ndarray, **options) -> dict[str, float]:
    """``{"loss@1x": ..., "loss@2x": ..., "tail_loss@4x": ...}`` on one process (see :func:`extrapolation_sums`)."""
    return finish(extrapolation_sums(model, tokens, **options))
