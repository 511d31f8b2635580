"""Tokenised corpora on disk: one flat memory-mapped array of token ids per split.

``prepare_corpus`` turns the configured documents into ``train.bin`` / ``val.bin`` (uint16 when the
vocabulary fits, else uint32), ``tokenizer.json`` and ``meta.json`` in a cache directory keyed by
everything that determines them, written to a temporary directory and renamed into place, so a
crash never leaves a half-written corpus and concurrent processes (DDP ranks) agree. Memory-mapping
means corpora larger than RAM train fine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..training.config import DataConfig
from .corpus import load_documents, python_stdlib_files
from .tokenizer import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer

FORMAT_VERSION = 1


@dataclass
class PreparedCorpus:
    directory: Path
    vocab_size: int
    eos_id: int
    dtype: str
    train_tokens: int
    val_tokens: int

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / "tokenizer.json"

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.tokenizer_path)

    def tokens(self, split: str) -> np.ndarray:
        """Read-only memory map of one split's token ids."""
        return np.memmap(self.directory / f"{split}.bin", dtype=self.dtype, mode="r")


def token_dtype(vocab_size: int) -> str:
    if vocab_size <= 2**16:
        return "uint16"
    if vocab_size <= 2**32:
        return "uint32"
    raise ValueError(f"vocabulary of {vocab_size} ids does not fit a uint32 token store")


def _cache_key(cfg: DataConfig, seed: int) -> str:
    fields = asdict(cfg)
    for irrelevant in ("batch_size", "num_workers", "num_proc", "cache_dir", "block_size"):
        fields.pop(irrelevant)
    identity: dict = {"cfg": fields, "seed": seed if cfg.split_by == "document" else None, "v": FORMAT_VERSION}
    if cfg.source == "python_stdlib":
        identity["python"] = sys.version
        identity["stdlib"] = [str(p) for p in python_stdlib_files()[:5]]
    if cfg.source == "files":
        from .corpus import _resolve_files

        identity["files"] = [(f, os.path.getsize(f), os.path.getmtime(f)) for f in _resolve_files(cfg.path, cfg.format)]
    if cfg.tokenizer.endswith(".json"):
        identity["tokenizer"] = hashlib.sha256(Path(cfg.tokenizer).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _split(ds, cfg: DataConfig, seed: int):
    """-> (train documents, validation documents) as datasets."""
    import datasets

    if cfg.split_by == "document":
        if len(ds) < 2:
            raise ValueError("data.split_by='document' needs at least 2 documents; use data.split_by='position'")
        order = np.random.default_rng(seed).permutation(len(ds))
        n_val = max(1, int(round(cfg.val_fraction * len(ds))))
        return ds.select(sorted(order[n_val:])), ds.select(sorted(order[:n_val]))
    # position: the last val_fraction of the characters, cutting the document that straddles the boundary
    lengths = np.array([len(t) for t in ds["text"]])
    cut = int(lengths.sum() * (1 - cfg.val_fraction))
    ends = np.cumsum(lengths)
    k = int(np.searchsorted(ends, cut, side="right"))  # documents [0, k) lie entirely before the cut
    within = cut - (int(ends[k - 1]) if k else 0)
    parts_train, parts_val = [ds.select(range(k))], []
    if k < len(ds):
        text = ds[k]["text"]
        piece = lambda t: datasets.Dataset.from_dict({"text": [t]}, features=ds.features)  # keep e.g. large_string
        parts_train.append(piece(text[:within]))
        parts_val.append(piece(text[within:]))
        if k + 1 < len(ds):
            parts_val.append(ds.select(range(k + 1, len(ds))))
    train = datasets.concatenate_datasets([p for p in parts_train if len(p)]).filter(lambda t: bool(t), input_columns="text")
    val = datasets.concatenate_datasets(parts_val).filter(lambda t: bool(t), input_columns="text") if parts_val else []
    return train, val


def _write_tokens(ds, tokenizer: Tokenizer, path: Path, dtype: str, num_proc: int) -> int:
    """Tokenise with ``datasets.map`` (EOS after every document) and stream the ids into a memmap."""
    eos = tokenizer.eos_id

    def encode(batch):
        if isinstance(tokenizer, BPETokenizer):
            ids = tokenizer.encode_batch(batch["text"])
        else:
            ids = [tokenizer.encode(t) for t in batch["text"]]
        ids = [x + [eos] for x in ids]
        return {"ids": ids, "n": [len(x) for x in ids]}

    tokenized = ds.map(encode, batched=True, remove_columns=["text"], num_proc=num_proc if num_proc > 1 else None,
                       desc=f"tokenising {path.stem}")
    total = int(np.sum(tokenized["n"]))
    limit = np.iinfo(dtype).max
    out = np.memmap(path, dtype=dtype, mode="w+", shape=(max(total, 1),))
    pos = 0
    for batch in tokenized.iter(batch_size=1024):
        flat = np.fromiter((i for ids in batch["ids"] for i in ids), dtype=np.int64)
        if flat.size and flat.max() > limit:
            raise ValueError(f"token id {int(flat.max())} does not fit the {dtype} token store")
        out[pos : pos + flat.size] = flat
        pos += flat.size
    out.flush()
    del out
    return total


def prepare_corpus(cfg: DataConfig, *, seed: int, cache_root: str | Path) -> PreparedCorpus:
    """Tokenise and pack the configured data once; later calls with the same inputs reuse it."""
    cache_root = Path(cfg.cache_dir or cache_root)
    directory = cache_root / f"corpus-{_cache_key(cfg, seed)}"
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-corpus-", dir=cache_root))
        try:
            ds = load_documents(cfg)
            train_docs, val_docs = _split(ds, cfg, seed)
            if len(val_docs) == 0:
                raise ValueError("the validation split is empty; raise data.val_fraction or add data")
            if cfg.tokenizer == "char":
                tokenizer = CharTokenizer.train(train_docs["text"])
            elif cfg.tokenizer == "bpe":
                tokenizer = BPETokenizer.train((t for t in train_docs["text"]), cfg.vocab_size)
            else:
                tokenizer = load_tokenizer(cfg.tokenizer)
            dtype = token_dtype(tokenizer.vocab_size)
            tokenizer.save(tmp / "tokenizer.json")
            counts = {split: _write_tokens(docs, tokenizer, tmp / f"{split}.bin", dtype, cfg.num_proc)
                      for split, docs in (("train", train_docs), ("val", val_docs))}
            meta = {"vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id, "dtype": dtype,
                    "train_tokens": counts["train"], "val_tokens": counts["val"], "format": FORMAT_VERSION}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            try:
                os.replace(tmp, directory)
            except OSError:  # another process finished first: theirs is identical
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    meta = json.loads(meta_path.read_text())
    corpus = PreparedCorpus(directory, meta["vocab_size"], meta["eos_id"], meta["dtype"], meta["train_tokens"], meta["val_tokens"])
    need = cfg.block_size + 1
    for split in ("train", "val"):
        have = getattr(corpus, f"{split}_tokens")
        if have < need:
            raise ValueError(
                f"the {split} split has {have} tokens, fewer than data.block_size + 1 = {need} needed for one example; "
                f"add data, lower data.block_size, or change data.val_fraction"
            )
    return corpus
