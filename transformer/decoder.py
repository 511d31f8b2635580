"""Decoder: causal self-attention blocks, optionally with cross-attention to encoder memory."""

from __future__ import annotations

from .config import ModelConfig
from .stack import StackOutput, TransformerStack

__all__ = ["Decoder", "StackOutput"]


class Decoder(TransformerStack):
    """``Decoder(cfg, cross_attention=...)(x [b, s, D], attention_mask, memory=[b, m, D], memory_mask=[b, m])``."""

    def __init__(self, cfg: ModelConfig, *, cross_attention: bool = False, num_layers: int | None = None) -> None:
        super().__init__(cfg, causal=True, cross_attention=cross_attention, num_layers=num_layers)
