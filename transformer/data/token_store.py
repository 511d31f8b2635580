"""Tokenised corpora on disk: one flat memory-mapped array of token ids per split.

``prepare_corpus`` turns the configured documents into ``train.bin`` / ``val.bin`` (uint16 when the
vocabulary fits, else uint32), ``tokenizer.json`` and ``meta.json`` in a cache directory keyed by
everything that determines them, written to a temporary directory and renamed into place, so a
crash never leaves a half-written corpus and concurrent processes (DDP ranks) agree. Memory-mapping
means corpora larger than RAM train fine.

The cache is not trusted blindly: ``meta.json`` records each file's size and a BLAKE2b checksum
(about 1 s per GB to verify, against hours of training on it), and a cache whose files do not match
(truncated, zeroed, edited, ``meta.json`` lost) is reported by file name and rebuilt from the data.
The checksums are also the run's *data fingerprint*: a resumed run compares them with the ones in
its checkpoint. Temporary directories of interrupted builds are named after their process and
removed by the next build once that process is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import DataConfig
from .corpus import load_documents, python_stdlib_files
from .tokenizer import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer

FORMAT_VERSION = 2  # 2: sizes and checksums in meta.json
CACHE_FILES = ("train.bin", "val.bin", "tokenizer.json")


@dataclass
class PreparedCorpus:
    directory: Path
    vocab_size: int
    eos_id: int
    dtype: str
    train_tokens: int
    val_tokens: int
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> blake2b hex
    created: bool = False  # built by this call (not reused): a failed start removes it again

    @property
    def fingerprint(self) -> dict[str, object]:
        """What identifies the training data of a run: token counts and the token stores' checksums."""
        return {"train_tokens": self.train_tokens, "val_tokens": self.val_tokens,
                "train.bin": self.checksums.get("train.bin"), "val.bin": self.checksums.get("val.bin")}

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

        identity["files"] = [(f, os.path.getsize(f), os.path.getmtime(f)) for f in _resolve_files(cfg.path, cfg.file_format)]
    if cfg.tokenizer not in ("char", "bpe"):
        tok_path = Path(cfg.tokenizer)
        tok_file = tok_path / "tokenizer.json" if tok_path.is_dir() else tok_path
        identity["tokenizer"] = [hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
                                 for p in (tok_file, tok_file.with_name("tokenizer_config.json"))]
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


PIECE_CHARS = 1 << 22  # documents longer than this are tokenised in pieces (when that gives the same ids)
PROGRESS_CHARS = 1 << 24  # splits with more text than this report progress as they go
_CUT = re.compile(r"(?<=\S)\n(?=\S)")  # a newline between two non-blank characters


def splits_safely(tokenizer: Tokenizer) -> bool:
    """Whether a text tokenised in pieces cut just after a newline between two non-blank characters gets the
    ids it gets in one go: yes for the char tokenizer (one id per character) and for a byte-level BPE with
    GPT-2's pre-tokenizer and nothing around it (as trained here): no pre-token spans such a newline, no
    normaliser sees the whole text, no special tokens are added. (A cut after a newline that follows a blank
    would not do: GPT-2's pattern joins trailing blanks with the newline only at the end of a text.) Others
    (SentencePiece-style prefixes, normalisers, ...) are tokenised whole."""
    if tokenizer.kind == "char":
        return True
    config = json.loads(tokenizer.tok.to_str())
    pre, post = config.get("pre_tokenizer") or {}, config.get("post_processor") or {"type": "ByteLevel"}
    return (config.get("normalizer") is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space") and post.get("type") == "ByteLevel")


def _pieces(texts: list[str]) -> tuple[list[str], list[bool]]:
    """Texts cut into pieces of about :data:`PIECE_CHARS` at :data:`_CUT` points; ``last`` marks a document's end."""
    pieces, last = [], []
    for text in texts:
        start = 0
        while len(text) - start > PIECE_CHARS:
            found = _CUT.search(text, start + PIECE_CHARS)
            if found is None:
                break
            pieces.append(text[start:found.end()])
            last.append(False)
            start = found.end()
        pieces.append(text[start:])
        last.append(True)
    return pieces, last


def _write_tokens(ds, tokenizer: Tokenizer, path: Path, dtype: str, num_proc: int) -> int:
    """Tokenise with ``datasets.map`` (EOS after every document) and stream the ids into a memmap. Long
    documents are cut into pieces where that changes no id (:func:`splits_safely`), and a large split is
    tokenised in stretches with a progress line after each, so one big file does not sit silent."""
    import datasets
    import pyarrow.compute as pc

    eos = tokenizer.eos_id

    def encode(batch):
        ids = tokenizer.encode_batch(batch["text"])
        ends = batch["last"] if "last" in batch else [True] * len(ids)
        ids = [x + [eos] if end else x for x, end in zip(ids, ends)]
        return {"ids": ids, "n": [len(x) for x in ids]}

    started = time.perf_counter()
    lengths = pc.utf8_length(ds.with_format("arrow")["text"]).to_numpy().astype(np.int64)  # (after any filter)
    chars = int(lengths.sum())
    table = ds
    if len(lengths) and lengths.max() > PIECE_CHARS and splits_safely(tokenizer):  # a few huge documents: cut them
        pieces, last = _pieces(ds["text"])
        table = datasets.Dataset.from_dict({"text": pieces, "last": last})
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    print(f"tokenising {path.stem}: {len(ds):,} document(s), {chars / 1e6:,.1f} M characters ...", end="", flush=True)
    stretches = min(len(table), 20) if chars > PROGRESS_CHARS else 1
    bounds = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(len(table)), stretches)])
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        part = table.select(range(start, end)) if stretches > 1 else table
        parts.append(part.map(encode, batched=True, remove_columns=part.column_names,
                              num_proc=num_proc if num_proc > 1 and len(part) >= num_proc else None))
        if stretches > 1:
            print(f"\ntokenising {path.stem}: {lengths[:end].sum() / chars:.0%} ({time.perf_counter() - started:.0f} s)",
                  end="", flush=True)
    tokenized = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    total = int(np.sum(tokenized["n"]))
    print(f"{' ...' if stretches > 1 else ''} {total:,} tokens in {time.perf_counter() - started:.1f} s", flush=True)
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


def file_checksum(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def cache_problem(directory: Path) -> str | None:
    """Why the cached corpus in ``directory`` cannot be used (None: it is intact)."""
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        return f"{meta_path} is missing"
    try:
        meta = json.loads(meta_path.read_text())
        files, sums = meta["files"], meta["checksums"]
        for key in ("vocab_size", "eos_id", "dtype", "train_tokens", "val_tokens"):
            meta[key]
    except (ValueError, KeyError, TypeError):
        return f"{meta_path} is unreadable or from an older format"
    for name in dict.fromkeys((*CACHE_FILES, *files)):  # the fixed files and any the build recorded
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != files.get(name):
            return f"{path} has {path.stat().st_size} bytes, {files.get(name)} when it was written (truncated or replaced)"
        if file_checksum(path) != sums.get(name):
            return f"{path} does not match its checksum (its contents changed after it was written)"
    return None


def _clean_stale_builds(cache_root: Path) -> None:
    """Remove ``.tmp-corpus-<host>-<pid>-*`` directories whose process on this host is gone."""
    host = socket.gethostname()
    for tmp in cache_root.glob(".tmp-corpus-*"):
        parts = tmp.name[len(".tmp-corpus-"):].rsplit("-", 2)
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _alive(int(parts[1])):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _build(cfg: DataConfig, seed: int, cache_root: Path, directory: Path) -> None:
    """Tokenise into a private temporary directory, then rename it to ``directory``. A build that fails
    leaves nothing behind (nor the cache directory, if this call created it)."""
    new_root = not cache_root.exists()
    cache_root.mkdir(parents=True, exist_ok=True)
    _clean_stale_builds(cache_root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-corpus-{socket.gethostname()}-{os.getpid()}-", dir=cache_root))
    try:
        ds = load_documents(cfg)
        train_docs, val_docs = _split(ds, cfg, seed)
        if len(val_docs) == 0:
            raise ValueError("the validation split is empty; raise data.val_fraction or add data")
        if cfg.tokenizer == "char":
            tokenizer = CharTokenizer.train(train_docs["text"])
        elif cfg.tokenizer == "bpe":
            started = time.perf_counter()
            print(f"training a byte-level BPE tokenizer (data.vocab_size={cfg.vocab_size}) on {len(train_docs):,} "
                  f"training document(s) ...", end="", flush=True)
            tokenizer = BPETokenizer.train((t for t in train_docs["text"]), cfg.vocab_size)
            print(f" done in {time.perf_counter() - started:.1f} s", flush=True)
        else:
            tokenizer = load_tokenizer(cfg.tokenizer, eos_token=cfg.eos_token)
        dtype = token_dtype(tokenizer.vocab_size)
        tokenizer.save(tmp / "tokenizer.json")  # + tokenizer_config.json for a pretrained tokenizer
        counts = {split: _write_tokens(docs, tokenizer, tmp / f"{split}.bin", dtype, cfg.num_proc)
                  for split, docs in (("train", train_docs), ("val", val_docs))}
        _check_counts(counts["train"], counts["val"], cfg)  # before anything lands in the cache
        files = [n for n in (*CACHE_FILES, "tokenizer_config.json") if (tmp / n).is_file()]
        meta = {"vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id, "dtype": dtype,
                "train_tokens": counts["train"], "val_tokens": counts["val"], "format": FORMAT_VERSION,
                "files": {n: (tmp / n).stat().st_size for n in files},
                "checksums": {n: file_checksum(tmp / n) for n in files}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, directory)
        except OSError:  # another process finished first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if new_root:
            remove_empty_dirs(cache_root)
        raise


def remove_empty_dirs(path: Path) -> None:
    """``rmdir`` ``path`` if it is empty (nothing else: never a directory with files)."""
    try:
        path.rmdir()
    except OSError:
        pass


def _check_counts(train_tokens: int, val_tokens: int, cfg: DataConfig) -> None:
    need = cfg.block_size + 1
    for split, have in (("train", train_tokens), ("val", val_tokens)):
        if have < need:
            raise ValueError(
                f"the {split} split has {have} tokens, fewer than data.block_size + 1 = {need} needed for one example; "
                f"add data, lower data.block_size, or change data.val_fraction"
            )


def discard_corpus(corpus: PreparedCorpus) -> None:
    """Remove a corpus this run built, when the run's start failed (so a failed start changes no files)."""
    if corpus.created:
        _discard(corpus.directory)
        remove_empty_dirs(corpus.directory.parent)


def _discard(directory: Path) -> None:
    """Move a damaged cache directory out of the way atomically, then delete it."""
    trash = directory.with_name(f".tmp-corpus-{socket.gethostname()}-{os.getpid()}-discard{time.time_ns()}")
    try:
        os.replace(directory, trash)
    except OSError:
        return  # another process moved or rebuilt it already
    shutil.rmtree(trash, ignore_errors=True)


def prepare_corpus(cfg: DataConfig, *, seed: int, cache_root: str | Path) -> PreparedCorpus:
    """Tokenise and pack the configured data once; later calls with the same inputs reuse it after
    verifying it (a damaged cache is reported and rebuilt)."""
    cache_root = Path(cfg.cache_dir or cache_root)
    directory = cache_root / f"corpus-{_cache_key(cfg, seed)}"
    if directory.exists():
        problem = cache_problem(directory)
        if problem is not None:
            print(f"warning: the token cache is damaged ({problem}); rebuilding it from the data", file=sys.stderr)
            _discard(directory)
    created = False
    if not directory.exists():
        _build(cfg, seed, cache_root, directory)  # its checksums were just computed from the files written
        created = True
    meta = json.loads((directory / "meta.json").read_text())
    corpus = PreparedCorpus(directory, meta["vocab_size"], meta["eos_id"], meta["dtype"], meta["train_tokens"],
                            meta["val_tokens"], meta["checksums"], created)
    _check_counts(corpus.train_tokens, corpus.val_tokens, cfg)
    return corpus
