"""Checkpoint files: atomic writes, readable errors, RNG state, and finding what to resume from.

A checkpoint is written to a temporary file in the same directory, fsynced, and renamed over the
target, so a run killed mid-save leaves the previous ``last.ckpt`` intact (a full disk too: the
temporary file is removed and the error names the file). Reading one that is corrupt, truncated or
not ours raises :class:`CheckpointError` with a one-line message. No Lightning import here: export,
sample and the interop code read checkpoints without it.
"""

from __future__ import annotations

import os
import pickle
import random
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint_keys as K


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which file and why, in one line."""


def atomic_save(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) or "PytorchStreamWriter failed" in str(err):  # full disk, quota, file too large
            previous = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
            raise CheckpointError(f"could not write checkpoint {path} ({_os_reason(err)}); {previous}. "
                                  f"Free disk space, then continue with resume_from=auto") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _os_reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err).splitlines()[0][:160] if str(err) else type(err).__name__


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` under a temporary name in the same directory, then rename: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(path, *, map_location="cpu") -> dict[str, Any]:
    """``torch.load`` with one-line errors for missing, empty, truncated, corrupt or foreign files."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        return read_sharded_checkpoint(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file (for an export or a Hugging Face "
                              f"directory use init_from, which accepts directories)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    size = path.stat().st_size
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except MemoryError:
        if size >= 1 << 30:  # a big checkpoint may really need more memory than this machine has
            raise
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (reading its {size:,} bytes asked for more "
                              f"memory than the machine has)") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError,
            # what arbitrary bytes make the unpickler raise
            KeyError, IndexError, TypeError, AttributeError, OverflowError, struct.error) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {detail[:160]})") from None
    except ModuleNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} is corrupt, or was written with code that is not installed here "
                              f"({err})") from None
    if not isinstance(checkpoint, dict) or K.STATE_DICT not in checkpoint:
        kind = type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a training checkpoint of this toolkit (a {kind} without 'state_dict')")
    return checkpoint


SHARDED_META = "meta.pt"  # Lightning's file for the non-tensor part of a sharded checkpoint


def is_sharded_checkpoint(path) -> bool:
    """A ``torch.distributed.checkpoint`` directory (``checkpoint.sharded=true``): one shard file per rank."""
    path = Path(path)
    return path.is_dir() and (path / ".metadata").is_file()


def read_sharded_checkpoint(path) -> dict[str, Any]:
    """A sharded checkpoint as the dict a single-file one holds (weights gathered, in the usual layout; without
    the optimizer state, which only a model-parallel resume reads, from the shards themselves). No process group
    needed: this is how ``transformer.export`` / ``sample`` / ``evaluate`` consolidate one."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    path = Path(path)
    if not (path / SHARDED_META).is_file():
        raise CheckpointError(f"sharded checkpoint {path} has no {SHARDED_META} (its save did not finish); use an "
                              f"earlier checkpoint")
    try:
        checkpoint = torch.load(path / SHARDED_META, map_location="cpu", weights_only=False)
        tensors: dict[str, Any] = {}
        _load_state_dict(tensors, storage_reader=FileSystemReader(path), no_dist=True,
                         planner=_EmptyStateDictLoadPlanner(keys={K.STATE_DICT}))
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError, KeyError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"sharded checkpoint {path} is corrupt or incomplete ({type(err).__name__}: "
                              f"{detail[:160]})") from None
    checkpoint[K.STATE_DICT] = tensors[K.STATE_DICT]
    return checkpoint


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_runs(out_dir: str | Path, name: str) -> list[Path]:
    """The ``<out_dir>/<name>-*`` run directories holding ``checkpoints/last.ckpt``, newest checkpoint first."""
    candidates = [p for p in Path(out_dir).glob(f"{name}-*") if (p / "checkpoints" / "last.ckpt").exists()]
    return sorted(candidates, key=lambda p: (p / "checkpoints" / "last.ckpt").stat().st_mtime, reverse=True)


def model_config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "model") -> list[str]:
    """``key: saved -> current`` for every model setting that differs (the shape must match to resume)."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += model_config_differences(a, b, f"{prefix}.{key}")
        elif a != b:
            diffs.append(f"{prefix}.{key}: {a!r} -> {b!r}")
    return diffs
