"""The run skeleton, written once for every task (language model, regression, ...).

:func:`run` is the whole pipeline, in this order, each step one call a reader can find:

1. ``check_run_inputs`` — every shared path, device and optional package is checked before anything
   heavy is imported or any file is written;
2. ``resolve_resume``, ``task.resolve_init`` + ``check_resume_config`` — the checkpoint to continue (read
   once, checked: task, finished runs, model and optimizer settings) and what it or ``init_from`` decides
   (a pretrained model's architecture and tokenizer); then ``task.check_inputs`` checks the task's files;
3. ``resolve_run_dir`` — where the run writes; a run resumed in place is locked now, so a second
   writer is refused before it does any work;
4. seed, then ``task.build_data`` (may write only the token cache) and ``task.settle_config``
   (values derived from the data, e.g. the vocabulary size);
5. ``check_resume_config`` + ``task.check_resume`` — a resumed run's model, optimizer settings,
   tokenizer and data must match its checkpoint;
6. ``task.build_module`` and ``task.init_weights`` (``init_from``);
7. the run directory is created (atomically) and locked, leftovers of killed processes are removed,
   the trainer is built, the run files are written (never overwriting the original run's);
8. ``task.fit``, then ``task.result`` -> ``result.json``; ``status.json`` says ``running`` from the start of
   ``fit`` and then ``finished``, ``interrupted`` or ``failed`` (``run_status.py``; ``python -m transformer.runs``).

A failure before ``fit`` removes a run directory this call created, so a failed start leaves nothing
behind. A task (:class:`Task`) only supplies the pieces; registration is in ``tasks.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import checkpoint_keys as K
from .config import ConfigError, flat_dict, to_container, to_yaml
from .quiet import silence_known_noise
from .run_dir import (RUN_DIR_ENV, RunLock, clean_leftovers, is_last_checkpoint_of_its_run, make_new_dir,
                      resolve_run_dir)
from .run_status import write_status

# Optimizer hyper-parameters that the restored optimizer state carries: a new value would be ignored.
OPTIMIZER_STATE_KEYS = ("lr", "beta1", "beta2", "eps", "weight_decay")


class Task:
    """One kind of run. Subclasses supply the schema, data, module and summary; :func:`run` orders them."""

    name = "?"
    monitor = "val/loss"
    """The validation metric that picks the best checkpoints (lower is better)."""

    def schema(self) -> type:
        raise NotImplementedError

    def resolve_init(self, cfg, resume: "Resume | None") -> None:
        """Settle what ``init_from`` (the model to start from) or the resumed checkpoint decides: e.g. the
        architecture and tokenizer of a pretrained model. Reads configs only, writes nothing."""

    def check_inputs(self, cfg) -> None:
        """Check the task's files (data, tokenizer, ...) with one-line errors; no side effects."""

    def build_data(self, cfg, rank: int) -> Any:
        raise NotImplementedError

    def abandon_data(self, data) -> None:
        """The start failed: remove what ``build_data`` wrote (a cache it created), so no file changed."""

    def prepare_data(self, cfg) -> None:
        """Build what the data keeps on disk (a token cache) without training, so that a sweep's first timed run
        does not pay for it; a task whose data live in memory has nothing to do."""

    def settle_config(self, cfg, data, rank: int) -> None:
        """Fill in config values that the data decides (e.g. ``model.vocab_size``)."""

    def check_resume(self, cfg, data, resume: "Resume") -> None:
        """Refuse resuming ``resume`` with data or tokenizer other than the checkpoint's."""

    def build_module(self, cfg, data):
        raise NotImplementedError

    def init_weights(self, module, cfg, resume: "Resume | None" = None):
        """Load ``cfg.init_from`` into ``module.model``; returns a report with ``format(source)`` (or None when
        there is nothing to say, e.g. a resumed run whose checkpoint holds every weight)."""
        raise NotImplementedError

    def checkpoint_extras(self, cfg, data) -> dict:
        return {K.RUN_CONFIG: to_container(cfg)}

    def run_files(self, cfg, data) -> dict[str, str]:
        """Files the run directory gets besides ``config.yaml`` (written once, never overwritten)."""
        return {}

    def hparams(self, cfg, data, module) -> dict:
        return flat_dict(to_container(cfg))

    def describe(self, cfg, data, module) -> str:
        return ""

    def callbacks(self, cfg, data) -> list:
        return []

    def fit(self, cfg, trainer, module, data, ckpt_path: str | None) -> None:
        raise NotImplementedError

    def result(self, cfg, trainer, module, data, run_dir: Path, seconds: float):
        """The run's figures (rank 0; None elsewhere): an object with ``format()`` and ``to_json()``."""
        raise NotImplementedError


@dataclass
class Resume:
    """The checkpoint a run continues from, read once (Lightning reads it again to restore the state)."""

    path: Path
    step: int
    run_config: dict
    in_place: bool  # the run's own last.ckpt: continue in that directory
    extras: dict = field(default_factory=dict)  # the toolkit's keys of the checkpoint (tokenizer, fingerprint, ...)
    tracked: set[str] = field(default_factory=set)  # top-k file names its ModelCheckpoint state tracks


def _rank() -> int:
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


# ----------------------------------------------------------------------------- 1. inputs
def check_run_inputs(cfg) -> None:
    """Checks every task shares: ``init_from`` and ``out_dir`` paths, the accelerator, optional packages."""
    if cfg.init_from and not Path(cfg.init_from).exists():
        raise FileNotFoundError(f"init_from={cfg.init_from!r} does not exist (a checkpoint, an export directory "
                                f"or a Hugging Face directory)")
    out = Path(cfg.out_dir)
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"out_dir={cfg.out_dir!r}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK):
                raise PermissionError(f"out_dir={cfg.out_dir!r}: {parent} is not writable")
            break
    check_accelerator(cfg.trainer)
    if cfg.logger.wandb.enabled:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError("logger.wandb.enabled=true needs the wandb package: pip install 'transformer-toolkit[wandb]'") from None
    if cfg.logger.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            try:
                import tensorboardX  # noqa: F401
            except ImportError:
                raise ValueError("logger.tensorboard=true needs the tensorboard package: pip install tensorboard") from None


def check_accelerator(t) -> None:
    """``trainer.accelerator`` / ``trainer.devices`` against what this machine has (Lightning would raise later)."""
    import torch

    accelerator = t.accelerator
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"trainer.accelerator={accelerator} but no CUDA GPU is available here; "
                             f"use trainer.accelerator=cpu (or auto)")
        have = torch.cuda.device_count()
        wanted = t.devices if isinstance(t.devices, int) and t.devices > 0 else None
        indices = t.devices if isinstance(t.devices, list) else []
        if (wanted and wanted > have) or any(i >= have for i in indices):
            raise ValueError(f"trainer.devices={t.devices} but this machine has {have} GPU(s)")
    elif accelerator == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("trainer.accelerator=mps but Apple's MPS backend is not available here; use cpu or auto")
    elif accelerator == "tpu":
        raise ValueError("trainer.accelerator=tpu is not supported by this toolkit; use gpu, cpu or auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and isinstance(t.devices, list):
        raise ValueError(f"trainer.devices={t.devices}: CPU training takes a process count (e.g. trainer.devices=2), "
                         f"not device indices")


# ----------------------------------------------------------------------------- 2. resume
def resolve_resume(cfg) -> Resume | None:
    """The checkpoint ``resume_from`` points at (``auto``: the newest run of this name), validated."""
    from .checkpoint_io import read_checkpoint

    if not cfg.resume_from:
        return None
    if cfg.resume_from == "auto":
        path = auto_resume_run(cfg) / "checkpoints" / "last.ckpt"
    else:
        path = Path(cfg.resume_from)
    saved = read_checkpoint(path)  # one-line error for missing / corrupt / foreign files, before any work
    run_config = saved.get(K.RUN_CONFIG) or {}
    saved_task = run_config.get("task", "lm")
    if saved_task != cfg.task:
        raise ValueError(f"cannot resume from {path}: it is a {saved_task!r} checkpoint and this config is task={cfg.task!r}")
    step = int(saved.get(K.GLOBAL_STEP, 0))
    if step >= cfg.trainer.max_steps:
        raise ValueError(f"{path} is already at step {step}, and trainer.max_steps={cfg.trainer.max_steps}: nothing to "
                         f"train. Raise trainer.max_steps to train it further (with optim.decay_steps to keep its schedule)")
    tracked = set()
    for name, state in (saved.get(K.CALLBACKS) or {}).items():
        if name.startswith("ModelCheckpoint") and isinstance(state, dict):
            tracked |= {Path(p).name for p in (state.get("best_k_models") or {})}
    extras = {k: saved[k] for k in (K.TOKENIZER, K.TOKENIZER_CONFIG, K.DATA_FINGERPRINT, K.PREPROCESSING, K.BASE_MODEL)
              if k in saved}
    return Resume(path, step, run_config, is_last_checkpoint_of_its_run(path), extras, tracked)


def auto_resume_run(cfg) -> Path:
    """``resume_from=auto``: the newest ``<out_dir>/<name>-*`` run with a ``last.ckpt`` whose task, model and
    ``init_from`` agree with every such setting this config makes (a run of the same name started from another
    model or with another attention type is passed over). None agreeing is an error listing each candidate
    and how it differs."""
    from .checkpoint_io import find_runs

    runs = find_runs(cfg.out_dir, cfg.name)
    if not runs:
        raise FileNotFoundError(f"resume_from=auto: no run named {cfg.name!r} with checkpoints/last.ckpt under "
                                f"{cfg.out_dir}; check name= and out_dir=, or give the checkpoint path")
    rejected = []
    for run_dir in runs:
        diffs = _run_differences(cfg, run_dir)
        if not diffs:
            if len(runs) > 1:
                passed = f" (passed over, another model: {', '.join(str(r) for r, _ in rejected)})" if rejected else ""
                print(f"resume_from=auto: {run_dir}, the newest of the {len(runs)} runs named {cfg.name!r} whose model "
                      f"matches the config{passed}")
            return run_dir
        rejected.append((run_dir, diffs))
    listed = "; ".join(f"{run_dir} ({', '.join(diffs[:3])}{', ...' if len(diffs) > 3 else ''})" for run_dir, diffs in rejected)
    raise ValueError(f"resume_from=auto: none of the {len(runs)} run(s) named {cfg.name!r} under {cfg.out_dir} has this "
                     f"config's model: {listed}. Give resume_from=<path to last.ckpt>, or start a new run (another name=)")


def _run_differences(cfg, run_dir: Path) -> list[str]:
    """``key: run's -> config's`` for the task, ``init_from`` and each ``model.*`` key the config sets (every
    model key when the config's explicit keys are unknown), against the run's ``config.yaml``."""
    from .config import explicit_keys

    try:
        import yaml

        saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, ValueError):
        from .checkpoint_io import read_checkpoint

        saved = read_checkpoint(run_dir / "checkpoints" / "last.ckpt").get(K.RUN_CONFIG) or {}
    current = to_container(cfg)
    diffs = []
    if saved.get("task", "lm") != cfg.task:
        diffs.append(f"task: {saved.get('task', 'lm')!r} -> {cfg.task!r}")
    if cfg.init_from and saved.get("init_from") and Path(saved["init_from"]).resolve() != Path(cfg.init_from).resolve():
        diffs.append(f"init_from: {saved['init_from']!r} -> {cfg.init_from!r}")
    ours, theirs = flat_dict(current.get("model") or {}), flat_dict(saved.get("model") or {})
    keys = explicit_keys(cfg, "model")
    for key in sorted(ours):
        chosen = keys is None or "" in keys or any(key == k or key.startswith(k + ".") for k in keys)
        if chosen and key != "vocab_size" and key in theirs and theirs[key] != ours[key]:
            diffs.append(f"model.{key}: {theirs[key]!r} -> {ours[key]!r}")
    return diffs


def check_resume_config(cfg, resume: Resume, *, before_data: bool = False) -> None:
    """The model must be the checkpoint's; so must the optimizer settings its restored state carries.
    ``before_data``: skip ``model.vocab_size``, which the data may still set."""
    from .checkpoint_io import model_config_differences

    current = to_container(cfg)
    saved_model = dict(resume.run_config.get("model", {}))
    if before_data:
        saved_model.pop("vocab_size", None)
        current["model"].pop("vocab_size", None)
    diffs = model_config_differences(saved_model, current["model"])
    if diffs:
        raise ValueError(f"cannot resume from {resume.path}: the model differs from the checkpoint's — {'; '.join(diffs)}")
    saved_optim = resume.run_config.get("optim", {})
    changed = [f"optim.{k}: {saved_optim[k]!r} -> {current['optim'][k]!r}" for k in OPTIMIZER_STATE_KEYS
               if k in saved_optim and saved_optim[k] != current["optim"][k]]
    if changed:
        raise ValueError(f"cannot resume from {resume.path} with other optimizer settings ({'; '.join(changed)}): the "
                         f"restored optimizer state would override them. Keep the checkpoint's values, or start a new "
                         f"run from its weights with init_from={resume.path}")


# -------------------------------------------------------------------------------- the run
def run(cfg, task: Task):
    """Train one run of ``cfg`` with ``task`` end to end; returns the task's result (on rank 0; None on other
    ranks). ``tasks.dispatch(cfg)`` picks the task that ``cfg.task`` names."""
    started = time.perf_counter()
    silence_known_noise()
    check_run_inputs(cfg)
    resume = resolve_resume(cfg)
    task.resolve_init(cfg, resume)
    task.check_inputs(cfg)
    if resume is not None:
        check_resume_config(cfg, resume, before_data=True)  # fail before the data is read
    place = resolve_run_dir(cfg, resume.path if resume else None, resume_in_place=resume.in_place if resume else True)
    rank = _rank()
    lock: RunLock | None = None
    created: Path | None = None
    data = None
    fitting = False
    set_env = False
    out_dir_existed = Path(cfg.out_dir).exists()
    try:
        if place.kind == "resume" and rank == 0:
            lock = RunLock(place.path)
            lock.acquire()  # refuse a second writer before doing any work
        import lightning as L

        L.seed_everything(cfg.seed, workers=True, verbose=False)
        data = task.build_data(cfg, rank)
        task.settle_config(cfg, data, rank)
        if resume is not None:
            task.check_resume(cfg, data, resume)  # tokenizer / data first: they explain a vocabulary change
            check_resume_config(cfg, resume)
        module = task.build_module(cfg, data)
        if cfg.init_from:
            report = task.init_weights(module, cfg, resume)
            if rank == 0 and report is not None:
                print(report.format(cfg.init_from))
        module.checkpoint_extras = task.checkpoint_extras(cfg, data)

        # ---- from here on the run directory is written
        run_dir, created, new_lock = open_run_dir(place, rank)
        lock = new_lock or lock
        if RUN_DIR_ENV not in os.environ:
            os.environ[RUN_DIR_ENV] = str(run_dir)  # for processes that Lightning's launcher starts
            set_env = True
        if rank == 0 and place.kind != "peer":
            removed = clean_leftovers(run_dir, keep_checkpoints=(resume.tracked | {"last.ckpt"}) if resume and resume.in_place else None)
            if removed:
                print(f"removed {len(removed)} file(s) left by interrupted processes of this run: {', '.join(removed)}")
        from .trainer import build_trainer, finish_loggers

        trainer = build_trainer(cfg, run_dir, callbacks=task.callbacks(cfg, data), monitor=task.monitor,
                                resume_step=resume.step if resume and resume.in_place else None)
        if rank == 0:
            write_run_files(run_dir, cfg, task.run_files(cfg, data))
        hparams = task.hparams(cfg, data, module)
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)
        if rank == 0:
            print(f"run directory: {run_dir}" + (f" (resuming step {resume.step} of {resume.path})" if resume else ""))
            description = task.describe(cfg, data, module)
            if description:
                print(description)
        fitting = True
        if rank == 0:
            write_status(run_dir, "running", task=cfg.task, name=cfg.name, max_steps=cfg.trainer.max_steps,
                         **({"started": time.strftime("%Y-%m-%d %H:%M:%S")} if not resume else {"resumed_from": str(resume.path)}))
        try:
            task.fit(cfg, trainer, module, data, str(resume.path) if resume else None)
        except SystemExit as err:
            # Lightning ends a Ctrl-C with sys.exit(1) after its callbacks ran (SaveOnInterrupt saved last.ckpt):
            # report it as the interrupt it was (exit status 130), not as a failure.
            if type(err).__name__ != "SIGTERMException" and trainer.state.status.value == "interrupted":
                raise KeyboardInterrupt from None
            raise
        result = task.result(cfg, trainer, module, data, run_dir, time.perf_counter() - started)
        if result is not None and trainer.is_global_zero:
            from .checkpoint_io import atomic_write_text

            atomic_write_text(run_dir / "result.json", json.dumps(result.to_json(), indent=2, default=float))
            write_status(run_dir, "finished", step=trainer.global_step, launch_seconds=time.perf_counter() - started)
        finish_loggers(trainer)
        return result
    except BaseException as err:
        if fitting:  # (build_trainer and finish_loggers were imported before fitting began)
            try:
                finish_loggers(trainer, exit_code=1)
            except Exception:  # never hide the run's own error behind a logger's
                pass
        if fitting and rank == 0:
            from ..errors import describe

            stopped = isinstance(err, (KeyboardInterrupt, SystemExit))
            write_status(run_dir, "interrupted" if stopped else "failed", step=trainer.global_step,
                         launch_seconds=time.perf_counter() - started, **({} if stopped else {"error": describe(err)}))
        if not fitting and place.kind != "peer":  # a failed start leaves no run directory, cache or out_dir behind
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            if data is not None and rank == 0:
                task.abandon_data(data)
            if not out_dir_existed:
                _remove_empty_tree(Path(cfg.out_dir))
        raise
    finally:
        if set_env:
            os.environ.pop(RUN_DIR_ENV, None)
        if lock is not None:
            lock.release()


def open_run_dir(place, rank: int) -> tuple[Path, Path | None, RunLock | None]:
    """-> (run directory, itself if this call created it, the lock this call took). A new directory is
    created atomically and locked; a job's shared directory is created if missing and locked by rank 0;
    a resumed directory was locked before the data was read; a launcher peer's belongs to its owner."""
    if place.kind == "new":
        run_dir = make_new_dir(place.path)
        lock = RunLock(run_dir)
        lock.acquire()
        return run_dir, run_dir, lock
    if place.kind == "job":
        place.path.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            lock = RunLock(place.path)
            lock.acquire()
            return place.path, None, lock
    return place.path, None, None


def _remove_empty_tree(path: Path) -> None:
    """Remove ``path`` if nothing but empty directories are under it."""
    if not path.is_dir():
        return
    for sub in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if sub.is_dir():
            try:
                sub.rmdir()
            except OSError:
                return
        else:
            return
    try:
        path.rmdir()
    except OSError:
        pass


def write_run_files(run_dir: Path, cfg, files: dict[str, str]) -> None:
    """``config.yaml`` (a resumed run adds ``config.resumed-<time>.yaml``) and the task's files; an existing file
    is never overwritten (a resumed run's were checked to match)."""
    from .checkpoint_io import atomic_write_text

    name = "config.yaml"
    if (run_dir / name).exists():
        stamp, n = time.strftime("%Y%m%d-%H%M%S"), 1
        name = f"config.resumed-{stamp}.yaml"
        while (run_dir / name).exists():
            n += 1
            name = f"config.resumed-{stamp}-{n}.yaml"
    atomic_write_text(run_dir / name, to_yaml(cfg))
    for file_name, text in files.items():
        if not (run_dir / file_name).exists():
            atomic_write_text(run_dir / file_name, text)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


__all__ = ["Task", "Resume", "run", "open_run_dir", "check_run_inputs", "check_accelerator", "resolve_resume", "check_resume_config",
           "write_run_files", "ConfigError"]
