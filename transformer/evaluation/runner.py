"""Resolve task names, run them through lm-eval with :class:`~.lm.ToolkitLM`, and write the results table.

Task names (``--tasks`` / ``eval.tasks``):

* ``probes`` — every built-in probe at the default lengths (a quarter, half and all of the context) and
  ``length_extrapolation``;
* ``passkey`` / ``assoc_recall`` / ``copying`` — that probe at the default lengths; ``passkey_512`` — at 512 tokens;
* ``length_extrapolation`` — validation loss at 1×, 2× and 4× the trained context (:mod:`.extrapolation`);
* anything else — an lm-eval task: from ``include_path`` (task YAMLs over local files: ``dataset_path: json`` +
  ``dataset_kwargs.data_files``), else lm-eval's built-in tasks (which download their data: offline they fail).

Results are ``{task: {metric: value}}`` (``acc``, ``acc_stderr``, ``acc_norm``, ``exact_match``, ``loss@2x``, ...).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .probes import ALL_PROBES, EXTRAPOLATION, PROBES, default_lengths, parse_probe_name, probe_tasks, write_tasks

LOCAL_DATA_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


@dataclass
class TaskPlan:
    """What one evaluation runs: generated probes ``(probe, length)``, lm-eval task names, and extrapolation."""

    probes: list[tuple[str, int]] = field(default_factory=list)
    lm_eval: list[str] = field(default_factory=list)
    extrapolation: bool = False
    defaulted: set[tuple[str, int]] = field(default_factory=set)  # probes at default lengths: skipped if too short
    include_path: str | None = None  # the user's task YAMLs
    builtin_tasks: bool = False  # some lm-eval task is one of lm-eval's own (index them too)

    @property
    def names(self) -> list[str]:
        return [f"{p}_{n}" for p, n in self.probes] + self.lm_eval + ([EXTRAPOLATION] if self.extrapolation else [])


def _task_manager(include_path: str | None, *, defaults: bool):
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-file index messages are not for our users
    if include_path is not None and not Path(include_path).is_dir():
        raise FileNotFoundError(f"include path {include_path} is not a directory (it should hold lm-eval task YAMLs)")
    return TaskManager(include_path=include_path, include_defaults=defaults)


def plan_tasks(names: list[str], *, max_seq_len: int, context_limit: int | None, include_path: str | None = None,
               probe_lengths: list[int] | None = None) -> TaskPlan:
    """Names -> a :class:`TaskPlan`.

    Unknown names are an error listing what is available; a probe longer than the model's context is refused
    unless ``context_limit`` is None (RoPE scaling configured)."""
    if not names:
        raise ValueError(f"no tasks given; choose from {', '.join(available_builtin())} or an lm-eval task name")
    plan, others = TaskPlan(include_path=include_path), []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        if name == ALL_PROBES:
            plan.probes += [(p, n) for p in PROBES for n in (probe_lengths or default_lengths(max_seq_len))]
            plan.defaulted |= set() if probe_lengths else {(p, n) for p in PROBES for n in default_lengths(max_seq_len)}
            plan.extrapolation = True
        elif name == EXTRAPOLATION:
            plan.extrapolation = True
        elif (parsed := parse_probe_name(name)) is not None:
            probe, length = parsed
            plan.probes += [(probe, n) for n in ([length] if length else probe_lengths or default_lengths(max_seq_len))]
            if not length and not probe_lengths:
                plan.defaulted |= {(probe, n) for n in default_lengths(max_seq_len)}
        else:
            others.append(name)
    plan.probes = list(dict.fromkeys(plan.probes))
    for probe, length in plan.probes:
        if context_limit is not None and length > context_limit:
            raise ValueError(f"task {probe}_{length}: a {length}-token context is longer than the model's context "
                             f"(model.max_seq_len={context_limit}); use a length up to {context_limit}, or evaluate a "
                             f"model with model.attention.rope_scaling configured")
    if others or plan.probes:
        from . import require_lm_eval

        require_lm_eval()
    if others:
        manager = _task_manager(include_path, defaults=False) if include_path else None
        missing = [n for n in others if manager is None or n not in manager.all_tasks]
        if missing:  # lm-eval's own catalogue (indexing it takes seconds: only when needed)
            plan.builtin_tasks = True
            manager = _task_manager(include_path, defaults=True)
            unknown = [n for n in missing if n not in manager.all_tasks]
            if unknown:
                local = sorted(_task_manager(include_path, defaults=False).all_tasks) if include_path else []
                raise ValueError(
                    f"unknown task {', '.join(map(repr, unknown))}; available: {', '.join(available_builtin())}"
                    + (f", the tasks in {include_path}: {', '.join(local) or 'none'}" if include_path else "")
                    + f", and lm-eval's {len(manager.all_tasks)} built-in tasks (lm-eval ls tasks; they download data)")
        for name in others:
            check_data_files(manager, name)
        plan.lm_eval = others
    return plan


def available_builtin() -> list[str]:
    return [ALL_PROBES, *PROBES, *(f"{p}_<tokens>" for p in PROBES), EXTRAPOLATION]


def check_data_files(manager, name: str) -> None:
    """A task over local files names a missing one before anything runs (lm-eval would fail deep in ``datasets``)."""
    entry = manager.task_index.get(name)
    cfg = getattr(entry, "cfg", None) or {}
    if cfg.get("dataset_path") not in LOCAL_DATA_BUILDERS:
        return
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        raise ValueError(f"task {name} ({entry.yaml_path}): dataset_path: {cfg['dataset_path']} needs "
                         f"dataset_kwargs.data_files naming its local file(s)")
    listed = files.values() if isinstance(files, dict) else [files]
    for item in listed:
        for path in ([item] if isinstance(item, str) else list(item)):
            if any(c in path for c in "*?[") or "://" in path:
                continue  # a glob or a URL: left to datasets
            if not Path(path).is_file():
                raise FileNotFoundError(f"task {name} ({entry.yaml_path}): data file {path} does not exist "
                                        f"(dataset_kwargs.data_files; a relative path is read from the current directory, "
                                        f"{os.getcwd()})")


def usable_probes(plan: TaskPlan, tokenizer, *, docs: int, seed: int):
    """The plan's probe tasks, generated; a default length too short for a probe is dropped from the plan (with
    a note), an explicitly named one is an error."""
    tasks = []
    for probe, length in list(plan.probes):
        try:
            tasks += probe_tasks([(probe, length)], tokenizer, docs=docs, seed=seed)
        except ValueError as err:
            if (probe, length) not in plan.defaulted or "longer than" not in str(err):
                raise
            plan.probes.remove((probe, length))
            print(f"note: skipping {probe}_{length}: {err}", file=sys.stderr)
    return tasks


@dataclass
class PreparedTasks:
    """What lm-eval needs to run a plan: its task names and a ``TaskManager`` indexing their YAMLs (the user's
    include path, lm-eval's own where needed, and the generated probe files)."""

    names: list[str]
    manager: object


def prepare_lm_eval(plan: TaskPlan, tokenizer, *, probe_docs: int, seed: int, work_dir: Path) -> PreparedTasks | None:
    """Generate the plan's probe tasks into ``work_dir`` and index every task once (None: nothing for lm-eval).
    The training callback prepares once and runs the same tasks at every evaluation."""
    from lm_eval.tasks import TaskManager

    names = list(plan.lm_eval)
    include = [plan.include_path] if plan.include_path else []
    tasks = usable_probes(plan, tokenizer, docs=probe_docs, seed=seed)
    if tasks:
        include.append(str(write_tasks(tasks, work_dir)))
        names += [t.name for t in tasks]
    if not names:
        return None
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return PreparedTasks(names, TaskManager(include_path=include or None, include_defaults=plan.builtin_tasks))


def run_prepared(lm, prepared: PreparedTasks | None, *, seed: int, limit: int | float | None = None,
                 bootstrap_iters: int = 1000) -> dict[str, dict[str, float]] | None:
    """Prepared tasks through lm-eval's evaluator; ``{task: {metric: value}}`` on rank 0, None on the other ranks
    of a distributed evaluation."""
    if prepared is None:
        return {}
    from lm_eval import evaluator

    loaded = prepared.manager.load(prepared.names)
    for task in loaded["tasks"].values():  # as lm-eval's simple_evaluate: zero-shot unless the task says otherwise
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed)
    with preserved_rng(), quiet_progress():  # the training run's random streams stay exactly as they were
        out = evaluator.evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=bootstrap_iters, log_samples=False,
                                 verbosity="ERROR")
    if out is None:  # not rank 0
        return None
    return {task: clean_metrics(values) for task, values in out["results"].items()}


def run_lm_eval(lm, plan: TaskPlan, *, probe_docs: int, seed: int, work_dir: Path, limit: int | float | None = None,
                bootstrap_iters: int = 1000) -> dict[str, dict[str, float]] | None:
    """Probes and lm-eval tasks of ``plan``: :func:`prepare_lm_eval` then :func:`run_prepared`."""
    if not plan.probes and not plan.lm_eval:
        return {}
    prepared = prepare_lm_eval(plan, lm.tokenizer, probe_docs=probe_docs, seed=seed, work_dir=work_dir)
    return run_prepared(lm, prepared, seed=seed, limit=limit, bootstrap_iters=bootstrap_iters)


@contextlib.contextmanager
def quiet_progress():
    """No lm-eval progress bar per task while requests are built (its module's ``tqdm``, swapped for the duration
    for one that is off; tqdm reads ``TQDM_DISABLE`` only at import): our own lines say what runs."""
    import functools

    from lm_eval.api import task as task_module

    saved = task_module.tqdm
    task_module.tqdm = functools.partial(saved, disable=True)
    try:
        yield
    finally:
        task_module.tqdm = saved


@contextlib.contextmanager
def preserved_rng():
    """Python's, numpy's and torch's global random states (those a checkpoint saves), restored afterwards."""
    from ..training.checkpoint_io import rng_state, set_rng_state

    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def clean_metrics(values: dict) -> dict[str, float]:
    """lm-eval's ``{"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...}`` -> ``{"acc": 0.5, "acc_stderr": 0.1}``."""
    out = {}
    for key, value in values.items():
        metric, _, filt = key.partition(",")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and metric != "sample_len":
            out[metric if filt in ("", "none") else f"{metric}_{filt}"] = float(value)
    return out


# ---------------------------------------------------------------------------------------- results files
def results_markdown(results: dict[str, dict[str, float]], header: dict) -> str:
    lines = [f"# Evaluation of {header.get('source', '?')}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "source"]
    lines += ["", "| task | metric | value | stderr |", "|---|---|---:|---:|"]
    for task in sorted(results):
        for metric, value in sorted(results[task].items()):
            if metric.endswith("_stderr"):
                continue
            stderr = results[task].get(f"{metric}_stderr")
            lines.append(f"| {task} | {metric} | {_fmt(value)} | {_fmt(stderr) if stderr is not None else ''} |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}"


def write_results(results: dict[str, dict[str, float]], header: dict, out_dir: Path) -> tuple[Path, Path]:
    """``eval-<time>.json`` and ``.md`` in ``out_dir``, each written whole (temporary file, then renamed); an
    existing file is never replaced (a second evaluation in the same second gets ``-2``, ``-3``, ...)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while (out_dir / f"{stem}.json").exists() or (out_dir / f"{stem}.md").exists():
        n += 1
        stem = f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    paths = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    payload = json.dumps({"header": header, "results": results}, indent=2, allow_nan=True, default=str)
    for path, text in zip(paths, (payload, results_markdown(results, header))):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return paths


def latest_results(run_dir: Path) -> dict[str, dict[str, float]]:
    """The newest ``<run>/eval/eval-*.json`` results of a run ({} when it has none)."""
    files = sorted((run_dir / "eval").glob("eval-*.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(files):
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("results", {})
        except (OSError, ValueError):
            continue  # a damaged file: the one before it
    return {}


def evaluate(lm, names: list[str], *, work_dir: Path, include_path: str | None = None,
             probe_lengths: list[int] | None = None, probe_docs: int = 200, seed: int = 0, limit: int | float | None = None,
             validation_tokens=None, factors=(1, 2, 4), blocks: int = 8) -> dict[str, dict[str, float]]:
    """Run ``names`` on ``lm`` (a :class:`~.lm.ToolkitLM`): ``{task: {metric: value}}``.

    ``validation_tokens``: a function returning the token array that ``length_extrapolation`` reads (called
    only when that task runs). ``work_dir`` receives the generated probe tasks."""
    from .extrapolation import length_extrapolation
    from .lm import context_limit

    model = lm.model
    plan = plan_tasks(names, max_seq_len=model.cfg.max_seq_len, context_limit=context_limit(model.cfg),
                      include_path=include_path, probe_lengths=probe_lengths)
    if plan.extrapolation and validation_tokens is None:
        raise ValueError("length_extrapolation needs validation text: evaluate a run directory or checkpoint (its "
                         "validation split), or give --text FILE")
    results = run_lm_eval(lm, plan, probe_docs=probe_docs, seed=seed, work_dir=work_dir, limit=limit) or {}
    if plan.extrapolation:
        results[EXTRAPOLATION] = length_extrapolation(model, validation_tokens(), factors=factors, blocks=blocks,
                                                      batch_size=max(1, lm.batch_size // max(factors)))
    return results
