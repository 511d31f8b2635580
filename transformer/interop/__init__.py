"""Interoperability with other weight formats (Hugging Face for now)."""

from .hf import export_hf, load_hf_model, read_hf_config

__all__ = ["export_hf", "load_hf_model", "read_hf_config"]
