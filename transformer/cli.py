"""``train.py`` / ``transformer-train``: parse the config + overrides and dispatch to the task's run.

    python train.py                                            # the embedded default (no data, no network)
    python train.py --config configs/lm/shakespeare_char.yaml  # a config file
    python train.py --config X.yaml trainer.max_steps=500 model.attention.type=gqa model.attention.num_kv_heads=2
    python train.py --config X.yaml --print-config             # the resolved config, then exit

The run directory ``<out_dir>/<name>-<timestamp>`` receives ``config.yaml`` (fully resolved),
``tokenizer.json``, ``checkpoints/`` (``last.ckpt`` and the best by validation loss, each holding the
config and tokenizer too), ``result.json`` and the loggers' files (``csv/metrics.csv``,
``tensorboard/``, ``wandb/``). The pipeline itself is ``transformer.training.run``; tasks are
registered in ``transformer.training.tasks``. Errors are one line (``TT_DEBUG=1`` for a traceback).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import guarded
from .training.config import ConfigError, to_yaml
from .training.run_dir import RUN_DIR_ENV  # noqa: F401  (the original import path)
from .training.tasks import dispatch, load_run_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", help="YAML config (default: the embedded default run)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--sweep", nargs="+", metavar="KEY=V1,V2",
                        help="run the grid of these values; single-valued key=value entries apply to every run")
    parser.add_argument("--sweep-config", metavar="YAML", help="run a sweep file such as configs/sweeps/attention.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides applied after the YAML")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.sweep or args.sweep_config:
        return _main_sweep(args)
    cfg = load_run_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    result = dispatch(cfg)
    if result is not None:
        print(result.format())
    return 0


def _main_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepPlan, grid_from_args, plan_from_yaml, run_sweep

    if args.sweep_config and args.sweep:
        raise ConfigError("give either --sweep-config or --sweep, not both")
    if args.sweep_config:
        plan = plan_from_yaml(args.sweep_config)
        plan.overrides += args.overrides
    else:
        bad = [a for a in args.sweep if "=" not in a or a.startswith("=")]
        if bad:
            raise ConfigError(f"--sweep expects key=v1,v2,...; got {bad[0]!r}")
        # key=v1,v2 is a swept axis; a single key=value after --sweep is an ordinary override for every run
        axes = [a for a in args.sweep if "," in a.split("=", 1)[-1]]
        fixed = [a for a in args.sweep if a not in axes]
        runs = grid_from_args(axes)
        name = (Path(args.config).stem if args.config else "default") + "-sweep"
        plan = SweepPlan(name, args.config, list(args.overrides) + fixed, runs, sorted({k for r in runs for k in r}))
    run_sweep(plan)
    return 0


# The original import paths: ``from transformer.cli import run, load_any_config, RunResult``.
def run(cfg):
    """Train one run of ``cfg`` with its task (see ``transformer.training.run.run``)."""
    return dispatch(cfg)


load_any_config = load_run_config


def __getattr__(name: str):
    if name == "RunResult":
        from .training.lm_task import RunResult

        return RunResult
    raise AttributeError(name)
