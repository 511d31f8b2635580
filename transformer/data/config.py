"""The data section of a language-model run (``data:`` in a training YAML): where the text comes from,
how it is tokenised, packed and split. Lives with the data code that reads it; the run schema
(``transformer.training.config.RunConfig``) embeds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..validation import choice, in_range, positive_fields

DATA_SOURCES = ("python_stdlib", "files", "hub")
TOKENIZERS = ("char", "bpe")
FILE_FORMATS = ("text", "json", "csv", "parquet")
DATA_FORMATS = ("text", "instruction", "chat")
TRAIN_ON = ("assistant", "completion", "all")
OVERLONG = ("truncate", "drop")


@dataclass
class DataConfig:
    """Where the text comes from, how it is tokenised, packed and split."""

    source: str = "python_stdlib"
    """``python_stdlib`` (the installed Python's standard-library source: on every machine, no download),
    ``files`` (local text / JSON / CSV / Parquet at ``path``) or ``hub`` (a Hugging Face dataset ``name``)."""
    path: str | None = None
    """``files``: a file, directory or glob (several comma-separated allowed)."""
    format: str = "text"
    """What a row is: ``text`` (documents for language modelling), ``instruction`` (Alpaca-style columns
    ``instruction`` / ``input`` / ``output``) or ``chat`` (a ``messages`` list of ``{role, content}``)."""
    file_format: str | None = None
    """``files``: text | json | csv | parquet (``None``: from the file extension; ``.jsonl`` is json)."""
    name: str | None = None
    """``hub``: dataset name, e.g. ``wikitext``."""
    subset: str | None = None
    """``hub``: dataset configuration, e.g. ``wikitext-103-raw-v1``."""
    split: str = "train"
    """``hub``: which split to read."""
    text_column: str = "text"
    """Column holding the text (JSON / CSV / Parquet / hub)."""
    instruction_column: str = "instruction"
    """``instruction`` format: the column with the task."""
    input_column: str = "input"
    """``instruction`` format: the optional column with the task's input (appended to the instruction)."""
    output_column: str = "output"
    """``instruction`` format: the column with the answer that is trained on."""
    system_column: str | None = None
    """``instruction`` format: an optional column with a system prompt."""
    messages_column: str = "messages"
    """``chat`` format: the column holding the list of ``{role, content}`` messages."""
    chat_template: str | None = None
    """``instruction`` / ``chat``: ``None`` (the tokenizer's own ``chat_template``, else ``alpaca``), a named
    template (``chatml``, ``llama3``, ``alpaca``) or a path to a Jinja file."""
    train_on: str = "assistant"
    """Which tokens carry loss: ``assistant`` (every assistant reply), ``completion`` (the last reply only),
    ``all`` (every token). The others get the label -100."""
    overlong: str = "truncate"
    """An example longer than ``block_size``: ``truncate`` it (examples left with nothing to train on are
    dropped) or ``drop`` it. The counts are printed."""
    packing: bool = False
    """Pack examples (or documents, for ``text``) into full blocks with a block-diagonal mask and positions
    restarting per document: no token attends across examples, so packed loss equals unpacked loss."""
    max_documents: int | None = None
    """Use at most this many documents (after sorting, for ``python_stdlib``)."""
    max_chars: int | None = 2_000_000
    """Stop reading once this many characters are collected (``None``: all). Keeps the default quick."""
    tokenizer: str = "char"
    """``char`` (one id per character seen in training text, plus EOS), ``bpe`` (byte-level BPE trained
    on the training text), or a saved tokenizer to reuse: a ``tokenizer.json``, or a directory holding one
    (a Hugging Face model, an export, a run). With ``init_from`` and no ``data.tokenizer``, the tokenizer
    of the ``init_from`` model is used."""
    eos_token: str | None = None
    """The token that ends a document (and a generated text), for tokenizers whose files do not name one
    (``None``: ``tokenizer_config.json``'s ``eos_token``, then ``<|endoftext|>``, ``</s>``, ...)."""
    vocab_size: int = 4096
    """``bpe``: vocabulary size to train."""
    block_size: int = 128
    """Tokens per training example (configs usually write ``${model.max_seq_len}``)."""
    val_fraction: float = 0.1
    """Share of the data held out for validation."""
    split_by: str = "position"
    """``position``: the last ``val_fraction`` of the token stream is validation (Tiny Shakespeare's
    standard split); ``document``: a seeded random ``val_fraction`` of documents."""
    batch_size: int = 32
    """Examples per device per step."""
    num_workers: int = 0
    """DataLoader worker processes."""
    num_proc: int = 1
    """Processes for tokenisation (``datasets.map``)."""
    cache_dir: str | None = None
    """Where tokenised corpora are kept (``None``: ``<out_dir>/.cache``); reused when data + tokenizer match."""

    def __post_init__(self) -> None:
        choice("data.source", self.source, DATA_SOURCES)
        choice("data.split_by", self.split_by, ("position", "document"))
        if self.format in ("json", "csv", "parquet"):  # the key's meaning before fine-tuning formats existed
            import warnings

            warnings.warn(f"data.format={self.format} names a file format: use data.file_format={self.format} "
                          f"(data.format is now text | instruction | chat)", stacklevel=2)
            self.format, self.file_format = "text", self.file_format or self.format
        choice("data.format", self.format, DATA_FORMATS)
        if self.file_format is not None:
            choice("data.file_format", self.file_format, FILE_FORMATS)
        choice("data.train_on", self.train_on, TRAIN_ON)
        choice("data.overlong", self.overlong, OVERLONG)
        if self.format != "text" and self.source == "python_stdlib":
            raise ValueError(f"data.format={self.format} reads rows from data.path (JSON / JSONL / Parquet): set "
                             f"data.source=files and data.path")
        if self.source == "files" and not self.path:
            raise ValueError("data.path is required when data.source='files' (a file, directory or glob)")
        if self.source == "hub" and not self.name:
            raise ValueError("data.name is required when data.source='hub' (e.g. wikitext)")
        if not self.tokenizer:
            raise ValueError("data.tokenizer must be 'char', 'bpe', a tokenizer.json or a directory holding one")
        if not self.text_column:
            raise ValueError("data.text_column must name a column")
        in_range("data.val_fraction", self.val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        positive_fields("data", self, ("block_size", "batch_size", "vocab_size", "num_proc"))
        positive_fields("data", self, ("max_documents", "max_chars"), optional=True)
        in_range("data.num_workers", self.num_workers, 0)
