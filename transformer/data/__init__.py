"""Data: raw documents -> tokenizer -> packed memory-mapped token store -> Lightning DataModule.

Names are imported on first use, so reading the data schema (``transformer.data.config``) for a
config error does not load Lightning or ``datasets``.
"""

from importlib import import_module

_EXPORTS = {"LMDataModule": ".datamodule", "ExampleDataModule": ".datamodule", "PreparedCorpus": ".token_store", "prepare_corpus": ".token_store",
            "BPETokenizer": ".tokenizer", "CharTokenizer": ".tokenizer", "load_tokenizer": ".tokenizer",
            "DataConfig": ".config"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
