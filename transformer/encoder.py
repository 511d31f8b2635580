"""Encoder: a stack of bidirectional blocks; padding is masked with a ``[b, s]`` mask (1 = real token)."""

from __future__ import annotations

from .config import ModelConfig
from .stack import StackOutput, TransformerStack

__all__ = ["Encoder", "StackOutput"]


class Encoder(TransformerStack):
    """``Encoder(cfg)(x [b, s, D], attention_mask [b, s]) -> StackOutput(hidden [b, s, D], aux_loss)``."""

    def __init__(self, cfg: ModelConfig, *, num_layers: int | None = None) -> None:
        super().__init__(cfg, causal=False, cross_attention=False, num_layers=num_layers)
