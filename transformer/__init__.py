"""Transformer toolkit: attention library, models, training system."""

__version__ = "0.1.0"
