"""The run directory: where it is, creating it without races, one live writer at a time, and
cleaning what killed processes left behind.

A run directory belongs to one process tree at a time. :class:`RunLock` holds an ``fcntl`` lock on
``<run>/.lock`` for the life of the writing process (the file also names its pid, host and start
time, for the message a second writer gets). The kernel drops the lock when the process dies, so a
lock left by a killed run is stale by construction and is taken over. Processes that Lightning's
launcher starts for the same run (``TT_RUN_DIR`` set) are the owner's peers and do not lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

RUN_DIR_ENV = "TT_RUN_DIR"
LOCK_NAME = ".lock"
CHECKPOINT_NAME = re.compile(r"^step(\d{7})-.*\.ckpt$")  # the top-k file names trainer.build_trainer gives
TMP_CHECKPOINT = re.compile(r"^\..*\.tmp-\d+$")  # checkpoint_io.atomic_save's temporary names


class RunDirError(RuntimeError):
    """The run directory cannot be used (another live writer, not a directory, ...)."""


@dataclass
class RunPlace:
    path: Path
    kind: str  # "new" (create it), "resume" (continue it in place), "job" (shared by a job's ranks), "peer" (launcher child)


def resolve_run_dir(cfg, resume: Path | None = None, *, resume_in_place: bool = True) -> RunPlace:
    """Where this process writes; nothing is created here.

    Processes of one distributed run must agree on the directory: Lightning's DDP launcher passes it
    to its children in ``TT_RUN_DIR``; torchrun / SLURM launches derive it from the job id. A resumed
    run continues in its own directory when it resumes that run's ``last.ckpt`` (``resume_in_place``);
    resuming any other checkpoint starts a new directory, so the original run's files stay as they are.
    """
    if os.environ.get(RUN_DIR_ENV):
        return RunPlace(Path(os.environ[RUN_DIR_ENV]), "peer")
    if resume is not None and resume_in_place:
        return RunPlace(resume.parent.parent, "resume")
    if os.environ.get("TORCHELASTIC_RUN_ID") and os.environ.get("WORLD_SIZE", "1") != "1":
        return RunPlace(Path(cfg.out_dir) / f"{cfg.name}-job{os.environ['TORCHELASTIC_RUN_ID']}", "job")
    if os.environ.get("SLURM_JOB_ID"):  # shared by all tasks, and kept when SLURM requeues the job
        return RunPlace(Path(cfg.out_dir) / f"{cfg.name}-slurm{os.environ['SLURM_JOB_ID']}", "job")
    return RunPlace(Path(cfg.out_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}", "new")


def is_last_checkpoint_of_its_run(path: Path) -> bool:
    """``<run>/checkpoints/last.ckpt``: the only checkpoint a run continues from in place."""
    return path.name == "last.ckpt" and path.parent.name == "checkpoints"


def make_new_dir(base: Path) -> Path:
    """Create ``base`` (or ``base-2``, ``base-3``, ... if taken) atomically: ``mkdir`` either creates the
    directory or fails, so two runs started in the same second never share one."""
    base.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")


class RunLock:
    """An exclusive lock on a run directory for this process's lifetime (see the module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = _read_owner(fd)
                os.close(fd)
                raise RunDirError(
                    f"run directory {self.path.parent} is in use by {owner}; wait for that run to finish "
                    f"(or stop it) before resuming it, or start a new run without resume_from") from None
            # The file may have been unlinked by its previous owner between our open and our lock: retry on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # unlink while still holding it: a waiter re-checks the inode
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (started {info.get('started', '?')})"
    except (OSError, ValueError):
        return "another process"


def clean_leftovers(run_dir: Path, *, keep_checkpoints: set[str] | None = None) -> list[str]:
    """Remove what interrupted processes of this run left behind; returns the removed names.

    Always: temporary files of interrupted checkpoint saves. With ``keep_checkpoints`` (on resume:
    the top-k file names the resumed checkpoint's ModelCheckpoint state tracks, plus ``last.ckpt``):
    top-k files written by killed launches after that state, which no later save would ever prune.
    Only the toolkit's own file names are touched. Call it holding the run's :class:`RunLock`.
    """
    removed = []
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        orphan = keep_checkpoints is not None and CHECKPOINT_NAME.match(path.name) and path.name not in keep_checkpoints
        if path.is_dir() and (TMP_CHECKPOINT.match(path.name) or orphan):  # a sharded save's directory
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        elif path.is_file() and (TMP_CHECKPOINT.match(path.name) or orphan):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return sorted(removed)


def best_checkpoint(run_dir: Path) -> Path | None:
    """The run's top-k checkpoint with the lowest monitored value (``step<N>-<metric><value>.ckpt``, as
    ``trainer.build_trainer`` names them: loss for language models, rmse for regression), None without one."""
    def score(path: Path) -> float:
        found = re.search(r"-[a-z]+([0-9.]+)\.ckpt$", path.name)
        return float(found.group(1)) if found else float("inf")

    return min((p for p in (Path(run_dir) / "checkpoints").glob("step*.ckpt")), key=score, default=None)


def best_or_last_checkpoint(run_dir: Path) -> Path | None:
    """The run's best top-k checkpoint, else its ``last.ckpt``, else None: the model a finished run stands for."""
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    return best_checkpoint(run_dir) or (last if last.exists() else None)  # a file, or a sharded directory


def outputs_summary(run_dir: Path) -> str:
    """One line naming what a finished run wrote: its checkpoints (best first) and its logs."""
    run_dir = Path(run_dir)
    best = best_checkpoint(run_dir)
    saved = ([f"best {best.name}"] if best else []) + (["last.ckpt"] if (run_dir / "checkpoints" / "last.ckpt").exists() else [])
    logs = [name for name, path in (("csv/metrics.csv", "csv/metrics.csv"), ("tensorboard/", "tensorboard"),
                                    ("wandb/", "wandb")) if (run_dir / path).exists()]
    parts = ([f"checkpoints/ ({', '.join(saved)})"] if saved else []) + logs + ["config.yaml", "result.json"]
    return f"outputs in {run_dir}: " + ", ".join(parts)
