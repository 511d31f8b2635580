"""The original design's import path for the attention factory: ``from transformer.attention_utils import get_attention``."""

from .attention import available_attention_types, get_attention, register_attention

__all__ = ["available_attention_types", "get_attention", "register_attention"]
