"""Sweeps: one command runs a grid of configs into one experiment directory.

    python train.py --config configs/lm/shakespeare_char.yaml --sweep model.attention.type=mha,mqa trainer.max_steps=500
    python train.py --sweep-config configs/sweeps/attention.yaml

``--sweep key=v1,v2`` arguments form a cartesian grid; a sweep YAML may instead list its runs
explicitly (``runs:``), which suits attention comparisons (``num_kv_heads`` only for GQA). Every
combination is validated before anything trains: invalid ones (e.g. ``num_kv_heads`` not dividing
``num_heads``) are listed with the reason and skipped. Runs go one after another into
``<out_dir>/<sweep name>-<timestamp>/<run label>-<timestamp>/`` with the same seed and data order, grouped
in W&B (``group`` = the experiment, tags = the swept values) when W&B is on. A failing run is
recorded and the sweep continues. ``sweep.json`` lists every run with its status; then
``python -m transformer.compare <experiment dir>`` writes the report.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .training.config import ConfigError, read_yaml


@dataclass
class SweepPlan:
    name: str
    base_config: str | None
    overrides: list[str]
    runs: list[dict[str, object]]  # swept key -> value, one dict per run
    swept_keys: list[str] = field(default_factory=list)


def _parse_value(text: str):
    """``"2"`` -> 2, ``"null"`` -> None, ``"gqa"`` -> "gqa" (YAML scalars, as in config overrides)."""
    import yaml

    return yaml.safe_load(text)


def grid_from_args(args: list[str]) -> list[dict[str, object]]:
    """``["a=1,2", "b=x,y"]`` -> the 4 combinations."""
    axes = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"--sweep expects key=v1,v2,...; got {arg!r}")
        key, values = arg.split("=", 1)
        axes.append([(key, _parse_value(v)) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def plan_from_yaml(path: str | Path) -> SweepPlan:
    """A sweep YAML: ``name``, ``base`` (a run config path), ``overrides`` (list), and ``grid`` (key -> list) or
    ``runs`` (list of mappings). Every shape error names the file and the key."""
    path = Path(path)
    data = read_yaml(path, what="sweep config")
    unknown = set(data) - {"name", "base", "overrides", "grid", "runs"}
    if unknown:
        raise ConfigError(f"sweep config {path}: unknown key(s) {sorted(unknown)} (known: name, base, overrides, grid, runs)")
    grid, runs = data.get("grid"), data.get("runs")
    if bool(grid) == bool(runs):
        raise ConfigError(f"sweep config {path}: give exactly one of 'grid' (key -> list of values) or 'runs' (list of settings)")
    if grid is not None and not isinstance(grid, dict):
        raise ConfigError(f"sweep config {path}: 'grid' must map each key to its values (model.attention.type: [mha, gqa]), "
                          f"not a {type(grid).__name__}; for a list of settings use 'runs'")
    if runs is not None and not (isinstance(runs, list) and all(isinstance(r, dict) for r in runs)):
        raise ConfigError(f"sweep config {path}: 'runs' must be a list of mappings (- {{model.attention.type: mqa}})")
    overrides = data.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise ConfigError(f"sweep config {path}: 'overrides' must be a list of key=value strings")
    for name in ("name", "base"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise ConfigError(f"sweep config {path}: '{name}' must be a string, not {data[name]!r}")
    if grid:
        axes = [[(str(k), v) for v in (vals if isinstance(vals, list) else [vals])] for k, vals in grid.items()]
        if any(not axis for axis in axes):
            raise ConfigError(f"sweep config {path}: a grid key has an empty list of values")
        plan_runs = [dict(c) for c in itertools.product(*axes)]
    else:
        plan_runs = [{str(k): v for k, v in r.items()} for r in runs]
    base = data.get("base")
    if base and not Path(base).is_absolute() and not Path(base).is_file() and (path.parent / base).is_file():
        base = str(path.parent / base)
    if base and not Path(base).is_file():
        raise ConfigError(f"sweep config {path}: base config {base!r} does not exist")
    return SweepPlan(data.get("name") or path.stem, base, list(overrides), plan_runs, sorted({k for r in plan_runs for k in r}))


def run_label(settings: dict[str, object]) -> str:
    """``{"model.attention.type": "gqa", "model.attention.num_kv_heads": 2}`` -> ``type=gqa_num_kv_heads=2``."""
    parts = [f"{k.split('.')[-1]}={v}" for k, v in settings.items()]
    label = re.sub(r"[^A-Za-z0-9=._-]+", "-", "_".join(parts)) or "run"
    return label if len(label) <= 80 else label[:71] + "-" + format(abs(hash(label)) % 16**8, "08x")


def _value_text(value) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _prepare_data(configs: list) -> None:
    """Build each distinct data setting's cache once, before any run's clock starts, so the first run's wall
    time is not inflated by tokenisation. A failure here is left to that run to report."""
    from .training.config import to_container
    from .training.tasks import get_task

    seen = set()
    print("preparing the data once, before the timed runs")
    for cfg in configs:
        key = json.dumps([cfg.task, to_container(cfg).get("data"), cfg.init_from, cfg.seed], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            get_task(cfg.task).prepare_data(cfg)
        except Exception:  # noqa: BLE001 - the run with this config reports it in its own words
            pass


def run_sweep(plan: SweepPlan, *, out_dir: str | None = None) -> Path:
    """Validate every combination, run the valid ones in order, return the experiment directory."""
    from .errors import describe
    from .training.checkpoint_io import atomic_write_text
    from .training.run_dir import make_new_dir
    from .training.tasks import dispatch, load_run_config

    validated, skipped = [], []
    for settings in plan.runs:
        overrides = plan.overrides + [f"{k}={_value_text(v)}" for k, v in settings.items()]
        try:
            validated.append((settings, overrides, load_run_config(plan.base_config, overrides)))
        except ConfigError as err:
            skipped.append({"settings": settings, "status": "skipped", "reason": str(err)})
    for s in skipped:
        print(f"skipping {run_label(s['settings'])}: {s['reason']}")
    if not validated:
        raise ConfigError("no valid combination in the sweep; nothing to run")
    if not plan.runs or plan.runs == [{}]:
        raise ConfigError("the sweep has no swept values (give key=v1,v2 or a runs: list)")
    root = Path(out_dir or validated[0][2].out_dir)
    experiment = make_new_dir(root / f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    records = list(skipped)
    manifest = experiment / "sweep.json"

    def save() -> None:
        atomic_write_text(manifest, json.dumps({"name": plan.name, "base": plan.base_config, "overrides": plan.overrides,
                                        "swept_keys": plan.swept_keys, "runs": records}, indent=2, default=str))

    save()
    print(f"sweep {plan.name}: {len(validated)} run(s), {len(skipped)} skipped -> {experiment}")
    data_cfg = validated[0][2].data  # LM corpora are cached per out_dir: share one cache, outside the experiment
    cache = [f"data.cache_dir={root / '.cache'}"] if getattr(data_cfg, "cache_dir", False) is None else []

    def run_config(settings, overrides):
        tags = [f"{k.split('.')[-1]}={v}" for k, v in settings.items()]
        return load_run_config(plan.base_config, overrides + cache + [
            f"out_dir={experiment}", f"name={run_label(settings)}", f"logger.wandb.group={plan.name}-{experiment.name[-15:]}",
            f"logger.wandb.tags={json.dumps(tags)}"])

    _prepare_data([run_config(settings, overrides) for settings, overrides, _ in validated])
    for i, (settings, overrides, _) in enumerate(validated, 1):
        label = run_label(settings)
        cfg = run_config(settings, overrides)
        print(f"\n=== sweep run {i}/{len(validated)}: {label} ===")
        record = {"settings": settings, "label": label, "status": "running", "overrides": overrides}
        records.append(record)
        save()
        started = time.perf_counter()
        try:
            result = dispatch(cfg)
            record.update(status="finished", run_dir=str(result.run_dir) if result else None)
        except Exception as err:  # one failed run never stops the sweep
            record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=5))
            print(f"run {label} failed: {describe(err)}")
        record["seconds"] = round(time.perf_counter() - started, 1)
        save()
    failed = [r for r in records if r["status"] == "failed"]
    print(f"\nsweep done: {sum(r['status'] == 'finished' for r in records)} finished, {len(failed)} failed, "
          f"{len(skipped)} skipped -> {experiment}\nreport: python -m transformer.compare {experiment}")
    return experiment
