"""Tokenizers: a character-level one, and byte-level BPE from the Hugging Face ``tokenizers`` library,
behind one small interface, saved as ``tokenizer.json`` with the run and every checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

EOS = "<|endoftext|>"


class CharTokenizer:
    """One id per character seen in the training text (sorted, so ids are deterministic), plus EOS.

    Characters not seen in training map to EOS on encode rather than failing mid-run.
    """

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.eos_id = len(self.chars)

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise ValueError("cannot build a char tokenizer: the training text is empty")
        return cls(seen)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        eos, stoi = self.eos_id, self.stoi
        return [stoi.get(c, eos) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] if i < len(self.chars) else "" for i in ids)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False))


class BPETokenizer:
    """Byte-level BPE (GPT-2 style): any text encodes, nothing is out of vocabulary."""

    kind = "bpe"

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        eos = tokenizer.token_to_id(EOS)
        if eos is None:
            special = sorted(t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special)
            raise ValueError(f"the tokenizer has no {EOS} end-of-text token (its special tokens: {special or 'none'})")
        self.eos_id = eos

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids))

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))


Tokenizer = CharTokenizer | BPETokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json`` written by either tokenizer (or any Hugging Face tokenizers file with EOS)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"tokenizer file {str(path)!r} is a directory; give its tokenizer.json")
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"tokenizer file {path} is not UTF-8 JSON (is it a binary file?)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"tokenizer file {path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"tokenizer file {path} holds a JSON {type(data).__name__}, not a tokenizer")
    if data.get("type") == "char":
        chars = data.get("chars")
        if not isinstance(chars, list) or not chars or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise ValueError(f"tokenizer file {path}: a char tokenizer needs 'chars', a list of single characters")
        return CharTokenizer(chars)
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tok = HFTokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception with serde's message
        detail = " ".join(str(err).split())[:200]
        raise ValueError(f"tokenizer file {path} is not a Hugging Face tokenizers file ({detail})") from None
    try:
        return BPETokenizer(tok)
    except ValueError as err:
        raise ValueError(f"tokenizer file {path}: {err}") from None
