"""Interoperability with other weight formats: Hugging Face directories (in and out) and GGUF files (in)."""

from .gguf import gguf_tokenizer, load_gguf
from .hf import export_hf, load_hf_model, read_hf_config

__all__ = ["export_hf", "gguf_tokenizer", "load_gguf", "load_hf_model", "read_hf_config"]
