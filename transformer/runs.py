"""List the runs under an output directory: what ran, how it ended, how good it got.

    python -m transformer.runs              # runs/ (and the runs of sweeps inside it)
    python -m transformer.runs runs/attention-20261202-101500 --json

One row per run directory (newest last): name, task, attention type, status, steps reached / planned,
best validation metric (``val/loss`` for language models, ``val/rmse`` for regression, from
``csv/metrics.csv``), wall time and the directory. Status comes from the run's ``status.json``
(see :mod:`transformer.training.run_status`): ``running`` (its process holds the run's lock),
``finished``, ``interrupted`` (Ctrl-C / SIGTERM, resumable), ``failed`` (with the error), ``killed``
(the process died without a word: SIGKILL, out of memory). Reads only small text files: no torch.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import guarded
from .training.run_status import clock, effective_status, read_status

BEST_METRIC = {"lm": "val/loss", "regression": "val/rmse"}


@dataclass
class RunRow:
    name: str
    task: str
    attention: str
    status: str
    steps: int | None
    max_steps: int | None
    best_metric: str
    best_value: float | None
    wall_time_s: float | None
    run_dir: str
    error: str | None = None


def find_run_dirs(root: Path) -> list[Path]:
    """Directories holding a ``config.yaml`` at depth 1 (runs) or 2 (runs of a sweep experiment)."""
    found = [p.parent for pattern in ("*/config.yaml", "*/*/config.yaml") for p in root.glob(pattern)
             if not p.parent.name.startswith(".")]
    return sorted(set(found), key=lambda d: (d.stat().st_mtime if (d / "config.yaml").exists() else 0, str(d)))


def _best(metrics_csv: Path, key: str) -> tuple[float | None, int | None]:
    """(lowest ``key``, highest step + 1 logged) from a ``metrics.csv``."""
    best, last = None, None
    try:
        with open(metrics_csv, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    step = int(float(row.get("step") or "nan"))
                    last = step + 1 if last is None else max(last, step + 1)
                except ValueError:
                    pass
                try:
                    value = float(row.get(key) or "nan")
                except ValueError:
                    continue
                if value == value and (best is None or value < best):
                    best = value
    except OSError:
        pass
    return best, last


def _seconds(text: str | None) -> float | None:
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))
    except (TypeError, ValueError):
        return None


def describe_run(run_dir: Path) -> RunRow:
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    task = str(config.get("task", "lm"))
    model = config.get("model") or {}
    attention = str((model.get("attention") or {}).get("type", "")) if isinstance(model, dict) else ""
    record = read_status(run_dir)
    status = effective_status(run_dir, record)
    try:
        result = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        result = {}
    metric = BEST_METRIC.get(task, "val/loss")
    best, logged = _best(run_dir / "csv" / "metrics.csv", metric)
    record = record or {}
    steps = logged if status == "running" else record.get("step", result.get("steps", logged))
    wall = record.get("wall_s", result.get("wall_time_s"))  # summed over a resumed run's launches
    if wall is None and status == "running":
        start = _seconds(record.get("started"))
        wall = time.time() - start if start else None
    return RunRow(name=str(config.get("name", run_dir.name)), task=task, attention=attention, status=status, steps=steps,
                  max_steps=record.get("max_steps", (config.get("trainer") or {}).get("max_steps")), best_metric=metric,
                  best_value=best, wall_time_s=wall, run_dir=str(run_dir), error=record.get("error"))


def format_table(rows: list[RunRow]) -> str:
    header = ["name", "task", "attention", "status", "steps", "best val", "wall", "run directory"]
    body = [[r.name, r.task, r.attention or "-", r.status,
             f"{r.steps if r.steps is not None else '-'}/{r.max_steps if r.max_steps is not None else '-'}",
             f"{r.best_metric.split('/')[-1]} {r.best_value:.4f}" if r.best_value is not None else "-",
             clock(r.wall_time_s), r.run_dir] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *body]]
    for r in rows:
        if r.status == "failed" and r.error:
            lines.append(f"failed {r.run_dir}: {r.error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transformer.runs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", default="runs", help="an out_dir or a sweep experiment (default: runs)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    root = Path(args.out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory (the out_dir of your runs; default: runs)")
    rows = [describe_run(d) for d in find_run_dirs(root)]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    elif not rows:
        print(f"no runs under {root} (a run directory holds config.yaml)")
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
