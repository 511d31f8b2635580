"""The task registry: which pipeline runs a config (``task:`` key), and loading a config with its task's schema.

A task is a :class:`transformer.training.run.Task` subclass; :func:`transformer.training.run.run`
drives every one through the same skeleton. Entries are ``"module:Class"`` strings imported on first
use, so a config error is reported before any task code (or Lightning) loads, and so the
``transformer`` package names the regression package without importing it at import time (the
regression package imports ``transformer``; this is the one place the other direction is written).
Register another task with :func:`register_task`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError, load_config, read_yaml

_TASKS: dict[str, str] = {
    "lm": "transformer.training.lm_task:LanguageModelTask",
    "regression": "regression.task:RegressionTask",
}


def register_task(name: str, target: str) -> None:
    """Add a task: ``target`` is ``"package.module:TaskClass"``."""
    if name in _TASKS and _TASKS[name] != target:
        raise ValueError(f"task {name!r} is already registered as {_TASKS[name]}")
    _TASKS[name] = target


def task_names() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str):
    """An instance of the task registered as ``name`` (entries: ``_TASKS`` above)."""
    if name not in _TASKS:
        raise ConfigError(f"task={name!r} is not one of {tuple(task_names())}")
    module, _, cls = _TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def task_of(path: str | Path | None, overrides: Sequence[str]) -> str:
    """The ``task`` a YAML file (or a ``task=`` override, which wins) names; ``lm`` when neither does."""
    task: Any = "lm"
    if path is not None:
        task = read_yaml(path).get("task", "lm")
    for override in overrides:
        if override.startswith("task="):
            task = override.split("=", 1)[1]
    return str(task)


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()):
    """The validated run config of the task the YAML or overrides name, with that task's schema."""
    task = get_task(task_of(path, overrides))
    return load_config(path, overrides, schema=task.schema())


def dispatch(cfg):
    """Run ``cfg`` through the run skeleton with its task (what ``train.py`` and sweeps call)."""
    from .run import run

    return run(cfg, get_task(cfg.task))
