"""Data: raw documents -> tokenizer -> packed memory-mapped token store -> Lightning DataModule."""

from .datamodule import LMDataModule
from .token_store import PreparedCorpus, prepare_corpus
from .tokenizer import BPETokenizer, CharTokenizer, load_tokenizer

__all__ = ["BPETokenizer", "CharTokenizer", "LMDataModule", "PreparedCorpus", "load_tokenizer", "prepare_corpus"]
