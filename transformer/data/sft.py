"""Instruction and chat data for fine-tuning: rows -> conversations -> token ids with trained-token
masks -> (optionally packed) batches.

Rows are read per file (JSON / JSONL / Parquet / CSV through ``datasets``), so a bad row is named by its
file and row number. An ``instruction`` row becomes ``[system?], user(instruction + input), assistant(output)``;
a ``chat`` row's ``messages`` are checked (roles, non-empty assistant replies). Each conversation is
rendered with the chat template (``chat.py``) and tokenised once; the examples are cached beside the
token stores (``<cache>/sft-<key>/``, built in a temporary directory and renamed, checksummed) so a
resumed or repeated run reuses them.

Shapes: b batch, T block_size. An unpacked batch is ``(x [b, T'], y [b, T'])`` right-padded to its longest
example (T' <= T; padding targets are -100, and causal attention never looks right, so no mask is needed);
a packed batch adds ``positions [b, T]`` and ``documents [b, T]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..validation import closest
from .chat import ROLES, encode_chat, resolve_template
from .config import DataConfig
from .tokenizer import load_tokenizer

IGNORE = -100
SFT_VERSION = 1


# ----------------------------------------------------------------------------------------- rows
def _read_rows(path: str, fmt: str):
    import datasets

    from .corpus import dataset_read_error

    try:
        return datasets.load_dataset(fmt, data_files=[path], split="train")
    except Exception as err:  # datasets wraps parser errors in several types
        raise ValueError(dataset_read_error([path], fmt, err)) from None


def conversation(row: dict, cfg: DataConfig, where: str) -> list[dict]:
    """One row as a list of ``{role, content}`` messages, or a one-line error naming ``where`` (file, row).
    A field that is null counts as missing: ``datasets`` gives every row every column of the file."""
    present = [k for k, v in row.items() if v is not None]

    def missing(name: str, key: str) -> ValueError:
        near = closest(name, present)
        return ValueError(f"{where}: no field {name!r} (data.{key}){f'; did you mean {near!r}?' if near else ''} "
                          f"(fields: {', '.join(present) or 'none'})")

    if cfg.format == "instruction":
        def column(name: str | None, required: bool) -> str:
            if name is None:
                return ""
            if row.get(name) is None:
                if not required:
                    return ""
                raise missing(name, "instruction_column" if name == cfg.instruction_column else "output_column")
            value = row[name]
            if not isinstance(value, str):
                raise ValueError(f"{where}: column {name!r} holds a {type(value).__name__}, not text")
            return value

        instruction, extra = column(cfg.instruction_column, True), column(cfg.input_column, False)
        output, system = column(cfg.output_column, True), column(cfg.system_column, False)
        if not instruction.strip():
            raise ValueError(f"{where}: field {cfg.instruction_column!r} is empty")
        if not output.strip():
            raise ValueError(f"{where}: field {cfg.output_column!r} (the response) is empty")
        messages = [{"role": "system", "content": system}] if system.strip() else []
        prompt = instruction if not extra.strip() else f"{instruction}\n\n{extra}"
        return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    if row.get(cfg.messages_column) is None:
        raise missing(cfg.messages_column, "messages_column")
    messages = row[cfg.messages_column]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: field {cfg.messages_column!r} must be a non-empty list of {{role, content}} messages")
    out = []
    for i, message in enumerate(messages):
        field_name = f"{cfg.messages_column}[{i}]"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"{where}: field {field_name} must be an object with 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            near = closest(str(role), list(ROLES))
            raise ValueError(f"{where}: field {field_name}.role={role!r} is not one of {', '.join(ROLES)}"
                             f"{f' (did you mean {near!r}?)' if near else ''}")
        if content is None or not isinstance(content, str):
            raise ValueError(f"{where}: field {field_name}.content must be text")
        if role == "assistant" and not content.strip():
            raise ValueError(f"{where}: field {field_name}.content is an empty assistant response")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError(f"{where}: field {cfg.messages_column!r} has no assistant message, so nothing to train on")
    return out


# ------------------------------------------------------------------------------------ examples
@dataclass
class PreparedExamples:
    """Tokenised conversations of both splits in a cache directory (the ``corpus`` of a fine-tuning run)."""

    directory: Path
    vocab_size: int
    eos_id: int
    pad_id: int
    counts: dict = field(default_factory=dict)  # rows, kept, truncated, dropped, train/val examples
    checksums: dict = field(default_factory=dict)
    created: bool = False

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / "tokenizer.json"

    def tokenizer(self):
        return load_tokenizer(self.tokenizer_path)

    @property
    def train_tokens(self) -> int:
        return int(self.counts["train_tokens"])

    @property
    def val_tokens(self) -> int:
        return int(self.counts["val_tokens"])

    @property
    def fingerprint(self) -> dict:
        return {"train_tokens": self.train_tokens, "val_tokens": self.val_tokens, **{k: v for k, v in self.checksums.items()
                                                                                    if k.endswith(".npy")}}

    def examples(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (ids [n], trained mask [n], example start offsets [examples + 1]) of one split."""
        d = self.directory
        return (np.load(d / f"{split}.ids.npy", mmap_mode="r"), np.load(d / f"{split}.trained.npy", mmap_mode="r"),
                np.load(d / f"{split}.offsets.npy"))


def _cache_key(cfg: DataConfig, seed: int) -> str:
    from .corpus import _resolve_files

    fields = asdict(cfg)
    for irrelevant in ("batch_size", "num_workers", "num_proc", "cache_dir", "packing"):
        fields.pop(irrelevant)
    identity = {"cfg": fields, "seed": seed, "v": SFT_VERSION,
                "files": [(f, os.path.getsize(f), os.path.getmtime(f)) for f in _resolve_files(cfg.path, cfg.file_format)]}
    tok = Path(cfg.tokenizer)
    tok_file = tok / "tokenizer.json" if tok.is_dir() else tok
    identity["tokenizer"] = [hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
                             for p in (tok_file, tok_file.with_name("tokenizer_config.json"))]
    if cfg.chat_template and Path(cfg.chat_template).is_file():
        identity["template"] = hashlib.sha256(Path(cfg.chat_template).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokenise_rows(cfg: DataConfig, tokenizer) -> tuple[list[tuple[list[int], list[bool]]], dict]:
    """Every row of every file as (ids, trained), after the overlong policy; and the counts."""
    from .corpus import _EXTENSIONS, check_data_files

    template, template_name = resolve_template(cfg.chat_template, tokenizer)
    files = check_data_files(cfg)
    limit = cfg.block_size + 1  # an example of T + 1 tokens gives T (input, target) pairs
    examples, counts = [], {"rows": 0, "truncated": 0, "dropped_overlong": 0, "dropped_untrained": 0, "template": template_name}
    for path in files:
        fmt = cfg.file_format or _EXTENSIONS.get(Path(path).suffix.lower())
        if fmt == "text":
            raise ValueError(f"data.format={cfg.format} reads rows with columns, but {path} is a text file: give JSON / "
                             f"JSONL / Parquet / CSV, or use data.format=text")
        for i, row in enumerate(_read_rows(path, fmt)):
            counts["rows"] += 1
            ids, trained = encode_chat(tokenizer, template, conversation(row, cfg, f"{path} row {i + 1}"), cfg.train_on)
            if len(ids) > limit:
                if cfg.overlong == "drop":
                    counts["dropped_overlong"] += 1
                    continue
                cut = True
                ids, trained = ids[:limit], trained[:limit]
            else:
                cut = False
            if not any(trained[1:]):  # position 0 is never a target
                counts["dropped_untrained"] += 1
                continue
            counts["truncated"] += cut
            examples.append((ids, trained))
            if cfg.max_documents and len(examples) >= cfg.max_documents:
                break
    return examples, counts


def _write_split(directory: Path, split: str, examples) -> int:
    ids = np.fromiter((t for e, _ in examples for t in e), dtype=np.int64)
    trained = np.fromiter((t for _, m in examples for t in m), dtype=np.bool_)
    offsets = np.cumsum([0] + [len(e) for e, _ in examples]).astype(np.int64)
    dtype = np.uint16 if ids.size == 0 or ids.max() < 2**16 else np.uint32
    np.save(directory / f"{split}.ids.npy", ids.astype(dtype))
    np.save(directory / f"{split}.trained.npy", trained)
    np.save(directory / f"{split}.offsets.npy", offsets)
    return int(trained.sum())


def prepare_examples(cfg: DataConfig, *, seed: int, cache_root: str | Path) -> PreparedExamples:
    """Tokenise the rows once (cached, verified on reuse) and split them by a seeded permutation."""
    from .token_store import _discard, file_checksum, remove_empty_dirs

    cache_root = Path(cfg.cache_dir or cache_root)
    directory = cache_root / f"sft-{_cache_key(cfg, seed)}"
    created = False
    if directory.exists() and _problem(directory) is not None:
        print(f"warning: the example cache is damaged ({_problem(directory)}); rebuilding it", flush=True)
        _discard(directory)
    if not directory.exists():
        new_root = not cache_root.exists()
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-corpus-{socket.gethostname()}-{os.getpid()}-", dir=cache_root))
        try:
            tokenizer = load_tokenizer(cfg.tokenizer, eos_token=cfg.eos_token)
            examples, counts = tokenise_rows(cfg, tokenizer)
            if len(examples) < 2:
                raise ValueError(f"data.path={cfg.path!r} gives {len(examples)} usable example(s) of {counts['rows']} rows "
                                 f"({counts['dropped_overlong']} too long for data.block_size={cfg.block_size}, "
                                 f"{counts['dropped_untrained']} with nothing to train on); at least 2 are needed")
            order = np.random.default_rng(seed).permutation(len(examples))
            n_val = max(1, int(round(cfg.val_fraction * len(examples))))
            splits = {"train": [examples[i] for i in sorted(order[n_val:])], "val": [examples[i] for i in sorted(order[:n_val])]}
            tokenizer.save(tmp / "tokenizer.json")
            for split, rows in splits.items():
                counts[f"{split}_examples"] = len(rows)
                counts[f"{split}_tokens"] = _write_split(tmp, split, rows)
            files = [p.name for p in sorted(tmp.iterdir()) if p.is_file()]
            pad = tokenizer.pad_id if getattr(tokenizer, "pad_id", None) is not None else tokenizer.eos_id
            meta = {"vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id, "pad_id": pad, "counts": counts,
                    "version": SFT_VERSION, "checksums": {n: file_checksum(tmp / n) for n in files}}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            try:
                os.replace(tmp, directory)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
            created = True
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if new_root:
                remove_empty_dirs(cache_root)
            raise
    meta = json.loads((directory / "meta.json").read_text())
    return PreparedExamples(directory, meta["vocab_size"], meta["eos_id"], meta["pad_id"], meta["counts"], meta["checksums"],
                            created)


def _problem(directory: Path) -> str | None:
    from .token_store import file_checksum

    try:
        meta = json.loads((directory / "meta.json").read_text())
        sums = meta["checksums"]
    except (OSError, ValueError, KeyError):
        return f"{directory / 'meta.json'} is missing or unreadable"
    for name, digest in sums.items():
        if not (directory / name).is_file() or file_checksum(directory / name) != digest:
            return f"{directory / name} is missing or changed"
    return None


# ------------------------------------------------------------------------------------- datasets
class ExampleDataset(torch.utils.data.Dataset):
    """Example i: ``(x [n - 1], y [n - 1])`` with ``y`` -100 where the next token is not trained on."""

    def __init__(self, ids: np.ndarray, trained: np.ndarray, offsets: np.ndarray) -> None:
        self.ids, self.trained, self.offsets = ids, trained, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        ids = torch.from_numpy(self.ids[a:b].astype(np.int64))
        labels = ids.masked_fill(~torch.from_numpy(np.array(self.trained[a:b])), IGNORE)
        return ids[:-1], labels[1:]


def pad_batch(examples: list[tuple[torch.Tensor, torch.Tensor]], *, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example: ``x`` with ``pad_id``, ``y`` with -100."""
    length = max(len(x) for x, _ in examples)
    x = torch.full((len(examples), length), pad_id, dtype=torch.long)
    y = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    for row, (ex, ey) in enumerate(examples):
        x[row, : len(ex)], y[row, : len(ey)] = ex, ey
    return x, y


def pack(examples: list[tuple[torch.Tensor, torch.Tensor]], block_size: int, pad_id: int) -> list[tuple[torch.Tensor, ...]]:
    """Greedy first-fit in order: examples laid end to end into blocks of ``block_size`` tokens, each block
    ``(x, y, positions, documents)`` with positions restarting at 0 per example; the tail is padding (its
    own document, never a target)."""
    blocks, current = [], []
    used = 0
    for x, y in examples:
        if used + len(x) > block_size and current:
            blocks.append(current)
            current, used = [], 0
        current.append((x, y))
        used += len(x)
    if current:
        blocks.append(current)
    out = []
    for members in blocks:
        x = torch.full((block_size,), pad_id, dtype=torch.long)
        y = torch.full((block_size,), IGNORE, dtype=torch.long)
        positions = torch.zeros(block_size, dtype=torch.long)
        documents = torch.full((block_size,), len(members), dtype=torch.long)
        start = 0
        for d, (ex, ey) in enumerate(members):
            n = len(ex)
            x[start:start + n], y[start:start + n] = ex, ey
            positions[start:start + n] = torch.arange(n)
            documents[start:start + n] = d
            start += n
        positions[start:] = torch.arange(block_size - start)
        out.append((x, y, positions, documents))
    return out


class PackedDataset(torch.utils.data.Dataset):
    def __init__(self, examples: ExampleDataset, block_size: int, pad_id: int) -> None:
        self.blocks = pack([examples[i] for i in range(len(examples))], block_size, pad_id)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int):
        return self.blocks[i]
