"""The base model of an adapter run, by reference: its path and a content hash.

An adapter checkpoint holds only the adapters, so resuming, exporting and sampling must find exactly the
base they were trained on again; :func:`check_base` refuses a base whose files changed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def base_fingerprint(source: str | Path) -> dict:
    """Path + content hash of the model an adapter run starts from: an adapter checkpoint holds only the
    adapters, so resuming and exporting must find exactly this base again."""
    path = Path(source)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".ckpt")
                   and not p.name.startswith(".")) if path.is_dir() else [path]
    digest = hashlib.blake2b(digest_size=16)
    for file in files:
        if file.name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "run_config.json"):
            continue  # the weights and architecture identify the base, not its tokenizer files
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return {"path": str(path.resolve()), "blake2b": digest.hexdigest()}


def check_base(recorded: dict, source: str | Path, what: str) -> dict:
    """``source`` must still be the base ``recorded`` (its content hash), or the adapters mean nothing;
    returns its fingerprint."""
    if not Path(source).exists():
        raise FileNotFoundError(f"{what} needs its base model {source} (recorded in the checkpoint), which is gone; "
                                f"put it back or pass init_from=<the same model elsewhere>")
    current = base_fingerprint(source)
    if current["blake2b"] != recorded.get("blake2b"):
        raise ValueError(f"{what}: the base model at {source} is not the one the adapters were trained on (content hash "
                         f"{current['blake2b']} != {recorded.get('blake2b')}); point init_from at the original base")
    return current

