"""Tokenizers: a character-level one, and any Hugging Face ``tokenizers`` tokenizer (byte-level BPE trained
here, or a pretrained model's ``tokenizer.json``) behind one small interface, saved as ``tokenizer.json``
with the run and every checkpoint.

A pretrained tokenizer's special tokens and chat template live beside it in ``tokenizer_config.json``
(the ``transformers`` format, written back the same way), so ``AutoTokenizer`` reads what we write and
we read what it writes. Which token ends a text is decided once, by :func:`find_eos`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, Iterator

EOS = "<|endoftext|>"
TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE = "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"
# End-of-text names of the common families, tried in order when tokenizer_config.json names none:
# GPT-2 / Qwen / SmolLM, Llama-2 / Mistral / TinyLlama, Llama-3, Gemma, BERT.
CHAR_SPLIT = r"[\s\S]"  # the char tokenizer's pre-tokenizer: every character on its own
EOS_CANDIDATES = (EOS, "</s>", "<|end_of_text|>", "<eos>", "[SEP]")
# End-of-turn tokens of the chat templates people use (ChatML, Llama-3, Phi-3, Gemma): generation stops there.
END_OF_TURN_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def _token_text(value) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def special_tokens(tok) -> list[str]:
    return sorted(t.content for t in tok.get_added_tokens_decoder().values() if t.special)


def find_eos(tok, *, eos_token: str | None = None, config: dict | None = None, eos_ids: Iterable[int] = ()) -> int:
    """The end-of-text id: ``eos_token`` (``data.eos_token``), else ``tokenizer_config.json``'s ``eos_token``,
    else the model's ``eos_token_id``, else the first of :data:`EOS_CANDIDATES` in the vocabulary."""
    where = "data.eos_token"
    for name in (eos_token, _token_text((config or {}).get("eos_token"))):
        if name is not None:
            found = tok.token_to_id(name)
            if found is None:
                raise ValueError(f"end-of-text token {name!r} ({where if name == eos_token else 'tokenizer_config.json eos_token'}) "
                                 f"is not in the vocabulary (its special tokens: {special_tokens(tok) or 'none'})")
            return found
    for i in eos_ids:
        if 0 <= i < tok.get_vocab_size(with_added_tokens=True):
            return i
    for name in EOS_CANDIDATES:
        found = tok.token_to_id(name)
        if found is not None:
            return found
    raise ValueError(f"the tokenizer has no end-of-text token (none of {', '.join(EOS_CANDIDATES)}; its special tokens: "
                     f"{special_tokens(tok) or 'none'}); set {where} to the one that ends a document")


class BPETokenizer:
    """A Hugging Face ``tokenizers`` tokenizer: byte-level BPE trained here, or a pretrained one (BPE,
    SentencePiece-style, WordPiece) with its special tokens and chat template."""

    kind = "bpe"

    def __init__(self, tokenizer, *, config: dict | None = None, eos_token: str | None = None,
                 eos_ids: Iterable[int] = ()) -> None:
        self.tok = tokenizer
        self.config = dict(config or {})  # tokenizer_config.json (special tokens, chat_template, ...)
        self.eos_id = find_eos(tokenizer, eos_token=eos_token, config=self.config, eos_ids=eos_ids)
        self.config["eos_token"] = tokenizer.id_to_token(self.eos_id)
        bos = _token_text(self.config.get("bos_token"))
        self.bos_id = tokenizer.token_to_id(bos) if bos else None
        pad = _token_text(self.config.get("pad_token"))
        self.pad_id = tokenizer.token_to_id(pad) if pad else None
        self.stop_ids = sorted({self.eos_id, *(i for i in eos_ids if 0 <= i < self.vocab_size),
                                *(i for i in map(tokenizer.token_to_id, END_OF_TURN_CANDIDATES) if i is not None)})
        """Ids that end a generated answer: end-of-text, the model's other eos ids, end-of-turn tokens."""

    @property
    def chat_template(self) -> str | None:
        template = self.config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return template if isinstance(template, str) else None

    def token(self, name: str) -> str | None:
        """A special token's text from ``tokenizer_config.json`` (``bos_token``, ``eos_token``, ...)."""
        return _token_text(self.config.get(name))

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],  # its bars on a terminal only
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=sys.stderr.isatty())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Ids of ``text``; ``add_special_tokens`` runs the tokenizer's post-processor (e.g. Llama's BOS).
        Text rendered by a chat template already holds its special tokens: pass False."""
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, path: str | Path) -> None:
        """``tokenizer.json`` at ``path`` and ``tokenizer_config.json`` beside it (what ``AutoTokenizer`` reads)."""
        path = Path(path)
        self.tok.save(str(path))
        config_path = path.with_name(TOKENIZER_CONFIG_FILE)
        tmp = config_path.with_name(f".{config_path.name}.tmp")
        tmp.write_text(json.dumps(self.tokenizer_config(), indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.replace(config_path)

    def tokenizer_config(self) -> dict:
        """``tokenizer_config.json`` for this tokenizer: the original's keys, with the tokens we resolved."""
        config = {k: v for k, v in self.config.items() if k not in ("added_tokens_decoder", "auto_map", "tokenizer_file")}
        config.update(tokenizer_class="PreTrainedTokenizerFast", eos_token=self.tok.id_to_token(self.eos_id))
        config.setdefault("clean_up_tokenization_spaces", False)
        if self.bos_id is not None:
            config["bos_token"] = self.tok.id_to_token(self.bos_id)
        if self.pad_id is not None:
            config["pad_token"] = self.tok.id_to_token(self.pad_id)
        return config


class CharTokenizer(BPETokenizer):
    """One id per character seen in the training text (sorted, so ids are deterministic), plus EOS last.

    Saved as a Hugging Face ``tokenizers`` file (a word-level vocabulary of single characters, a
    pre-tokenizer that splits every character, a ``Fuse`` decoder), so ``AutoTokenizer`` loads a char
    model's export like any other. Characters not seen in training map to EOS on encode rather than
    failing mid-run. Encoding here is a dict lookup per character; the one difference from the saved
    ``tokenizer.json`` is that ``transformers`` reads the literal text ``<|endoftext|>`` as the EOS token.
    """

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        self.chars = sorted(set(chars) - {EOS})
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        tok = HFTokenizer(models.WordLevel({**self.stoi, EOS: len(self.chars)}, unk_token=EOS))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(CHAR_SPLIT), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens([AddedToken(EOS, special=True, normalized=False)])
        super().__init__(tok, config={"eos_token": EOS})

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise ValueError("cannot build a char tokenizer: the training text is empty")
        return cls(seen)

    @classmethod
    def from_file_data(cls, data: dict) -> "CharTokenizer | None":
        """The char tokenizer a parsed ``tokenizer.json`` describes (this format, or the toolkit's older
        ``{"type": "char", "chars": [...]}``), else None."""
        if data.get("type") == "char":
            chars = data.get("chars")
            return cls(chars) if isinstance(chars, list) and chars and all(isinstance(c, str) and len(c) == 1 for c in chars) else None
        model, split = data.get("model") or {}, data.get("pre_tokenizer") or {}
        if (model.get("type") != "WordLevel" or (data.get("decoder") or {}).get("type") != "Fuse"
                or split.get("type") != "Split" or split.get("pattern") != {"Regex": CHAR_SPLIT}):
            return None
        vocab = model.get("vocab") or {}
        chars = sorted(vocab, key=vocab.get)
        if chars[-1:] != [EOS] or not all(len(c) == 1 for c in chars[:-1]) or sorted(chars[:-1]) != chars[:-1]:
            return None
        return cls(chars[:-1])

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        eos, stoi = self.eos_id, self.stoi
        return [stoi.get(c, eos) for c in text]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        chars, n = self.chars, len(self.chars)
        return "".join(chars[i] if i < n else ("" if skip_special_tokens else EOS) for i in ids)


Tokenizer = CharTokenizer | BPETokenizer


def tokenizer_identity(text: str):
    """What two ``tokenizer.json`` texts must share to tokenise alike: a char tokenizer's characters (in
    either of its formats), else the parsed JSON (so formatting does not matter)."""
    try:
        data = json.loads(text)
    except ValueError:
        return text
    char = CharTokenizer.from_file_data(data) if isinstance(data, dict) else None
    return ("char", tuple(char.chars)) if char is not None else data


def tokenizer_settings(directory: Path) -> tuple[dict, list[int]]:
    """``tokenizer_config.json`` (with ``chat_template.jinja`` folded in) and the model's eos ids from
    ``generation_config.json`` / ``config.json``, from the directory holding a ``tokenizer.json``."""
    config: dict = {}
    path = directory / TOKENIZER_CONFIG_FILE
    if path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({' '.join(str(err).split())[:120]})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path} holds a JSON {type(config).__name__}, not a tokenizer config")
    if (directory / CHAT_TEMPLATE_FILE).is_file() and not config.get("chat_template"):
        config["chat_template"] = (directory / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    eos_ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        try:
            value = json.loads((directory / name).read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        eos_ids += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int)]
    return config, list(dict.fromkeys(eos_ids))


def load_tokenizer(path: str | Path, *, eos_token: str | None = None) -> Tokenizer:
    """Load a ``tokenizer.json`` written by either tokenizer, or any Hugging Face tokenizers file, or a
    directory holding one (a Hugging Face model directory, an export, a run directory); the special
    tokens and chat template come from the ``tokenizer_config.json`` beside it. ``eos_token`` names the
    end-of-text token when the files do not (``data.eos_token``)."""
    path = Path(path)
    if path.is_dir():
        if not (path / TOKENIZER_FILE).is_file():
            raise FileNotFoundError(f"tokenizer directory {str(path)!r} holds no {TOKENIZER_FILE}")
        path = path / TOKENIZER_FILE
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
    char = CharTokenizer.from_file_data(data)
    if char is not None:
        return char
    if data.get("type") == "char":
        raise ValueError(f"tokenizer file {path}: a char tokenizer needs 'chars', a list of single characters")
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tok = HFTokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception with serde's message
        detail = " ".join(str(err).split())[:200]
        raise ValueError(f"tokenizer file {path} is not a Hugging Face tokenizers file ({detail})") from None
    config, eos_ids = tokenizer_settings(path.parent)
    try:
        return BPETokenizer(tok, config=config, eos_token=eos_token, eos_ids=eos_ids)
    except ValueError as err:
        raise ValueError(f"tokenizer file {path}: {err}") from None
