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

from omegaconf import OmegaConf

from .training.config import ConfigError


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
    """A sweep YAML: ``name``, ``base`` (a run config path), ``overrides`` (list), and ``grid`` (key -> list) or ``runs`` (list of dicts)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep config {str(path)!r} does not exist")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    unknown = set(data) - {"name", "base", "overrides", "grid", "runs"}
    if unknown:
        raise ConfigError(f"sweep config {path}: unknown key(s) {sorted(unknown)} (known: name, base, overrides, grid, runs)")
    if bool(data.get("grid")) == bool(data.get("runs")):
        raise ConfigError(f"sweep config {path}: give exactly one of 'grid' (key -> list of values) or 'runs' (list of settings)")
    if data.get("grid"):
        axes = [[(k, v) for v in (vals if isinstance(vals, list) else [vals])] for k, vals in data["grid"].items()]
        runs = [dict(c) for c in itertools.product(*axes)]
    else:
        runs = [dict(r) for r in data["runs"]]
    base = data.get("base")
    if base and not Path(base).is_absolute() and not Path(base).is_file() and (path.parent / base).is_file():
        base = str(path.parent / base)
    return SweepPlan(data.get("name") or path.stem, base, [str(o) for o in data.get("overrides") or []], runs,
                     sorted({k for r in runs for k in r}))


def run_label(settings: dict[str, object]) -> str:
    """``{"model.attention.type": "gqa", "model.attention.num_kv_heads": 2}`` -> ``type=gqa_num_kv_heads=2``."""
    parts = [f"{k.split('.')[-1]}={v}" for k, v in settings.items()]
    label = re.sub(r"[^A-Za-z0-9=._-]+", "-", "_".join(parts)) or "run"
    return label if len(label) <= 80 else label[:71] + "-" + format(abs(hash(label)) % 16**8, "08x")


def _value_text(value) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def run_sweep(plan: SweepPlan, *, out_dir: str | None = None) -> Path:
    """Validate every combination, run the valid ones in order, return the experiment directory."""
    from .cli import load_any_config, run

    validated, skipped = [], []
    for settings in plan.runs:
        overrides = plan.overrides + [f"{k}={_value_text(v)}" for k, v in settings.items()]
        try:
            validated.append((settings, overrides, load_any_config(plan.base_config, overrides)))
        except ConfigError as err:
            skipped.append({"settings": settings, "status": "skipped", "reason": str(err)})
    for s in skipped:
        print(f"skipping {run_label(s['settings'])}: {s['reason']}")
    if not validated:
        raise ConfigError("no valid combination in the sweep; nothing to run")
    if not plan.runs or plan.runs == [{}]:
        raise ConfigError("the sweep has no swept values (give key=v1,v2 or a runs: list)")
    root = Path(out_dir or validated[0][2].out_dir)
    experiment = root / f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while experiment.exists():
        n += 1
        experiment = root / f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    experiment.mkdir(parents=True)
    records = list(skipped)
    manifest = experiment / "sweep.json"

    def save() -> None:
        manifest.write_text(json.dumps({"name": plan.name, "base": plan.base_config, "overrides": plan.overrides,
                                        "swept_keys": plan.swept_keys, "runs": records}, indent=2, default=str))

    save()
    print(f"sweep {plan.name}: {len(validated)} run(s), {len(skipped)} skipped -> {experiment}")
    for i, (settings, overrides, _) in enumerate(validated, 1):
        label = run_label(settings)
        tags = [f"{k.split('.')[-1]}={v}" for k, v in settings.items()]
        data_cfg = validated[0][2].data  # LM corpora are cached per out_dir: share one cache, outside the experiment
        cache = [f"data.cache_dir={root / '.cache'}"] if getattr(data_cfg, "cache_dir", False) is None else []
        cfg = load_any_config(plan.base_config, overrides + cache + [
            f"out_dir={experiment}", f"name={label}", f"logger.wandb.group={plan.name}-{experiment.name[-15:]}",
            f"logger.wandb.tags={json.dumps(tags)}"])
        print(f"\n=== sweep run {i}/{len(validated)}: {label} ===")
        record = {"settings": settings, "label": label, "status": "running", "overrides": overrides}
        records.append(record)
        save()
        started = time.perf_counter()
        try:
            result = run(cfg)
            record.update(status="finished", run_dir=str(result.run_dir) if result else None)
        except Exception as err:  # one failed run never stops the sweep
            record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=5))
            print(f"run {label} failed: {type(err).__name__}: {err}")
        record["seconds"] = round(time.perf_counter() - started, 1)
        save()
    failed = [r for r in records if r["status"] == "failed"]
    print(f"\nsweep done: {sum(r['status'] == 'finished' for r in records)} finished, {len(failed)} failed, "
          f"{len(skipped)} skipped -> {experiment}\nreport: python -m transformer.compare {experiment}")
    return experiment
