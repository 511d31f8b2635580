"""A run directory's ``status.json``: what happened to the run, for ``python -m transformer.runs``.

Written by rank 0 at the start of training (``running``) and at its end: ``finished``, ``interrupted``
(Ctrl-C or SIGTERM; its ``last.ckpt`` was saved at ``step``) or ``failed`` (with the one-line error). A
process killed outright (SIGKILL, out of memory, a lost node) cannot write anything: its status stays
``running`` while its ``.lock`` is free, which :func:`effective_status` reports as ``killed``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

STATUS_FILE = "status.json"
STATES = ("running", "finished", "interrupted", "failed", "killed")


def clock(seconds: float | None) -> str:
    """``h:mm:ss`` (``-`` for unknown), as progress lines and ``transformer.runs`` print durations."""
    if seconds is None:
        return "-"
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def write_status(run_dir: Path, status: str, *, launch_seconds: float | None = None, **fields) -> None:
    """Replace ``status.json`` atomically, keeping the fields of earlier writes (start time, resumes);
    ``launch_seconds`` (this launch's time) adds up into ``wall_s`` over a run's launches."""
    from .checkpoint_io import atomic_write_text

    record = read_status(run_dir) or {}
    if status != "failed":
        record.pop("error", None)  # an earlier launch's failure, since resumed
    if launch_seconds is not None:
        record["wall_s"] = round(record.get("wall_s", 0.0) + launch_seconds, 1)
    record.update(fields, status=status, updated=time.strftime("%Y-%m-%d %H:%M:%S"), pid=os.getpid(),
                  host=socket.gethostname())
    atomic_write_text(Path(run_dir) / STATUS_FILE, json.dumps(record, indent=2, default=str))


def read_status(run_dir: Path) -> dict | None:
    try:
        record = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def lock_held(run_dir: Path) -> bool:
    """Whether a live process holds the run directory's ``.lock`` (the kernel drops it when that process dies)."""
    from .run_dir import LOCK_NAME

    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def effective_status(run_dir: Path, record: dict | None) -> str:
    """The recorded status, with ``running`` checked against the lock (``killed`` when nobody holds it)."""
    if record is None:
        return "finished" if (Path(run_dir) / "result.json").is_file() else ("running" if lock_held(run_dir) else "unknown")
    status = record.get("status", "unknown")
    if status == "running" and not lock_held(run_dir):
        return "killed"
    return status
