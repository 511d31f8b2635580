"""``train.py`` / ``transformer-train``: parse config + overrides, build data + model + trainer, fit.

    python train.py                                            # the embedded default (no data, no network)
    python train.py --config configs/lm/shakespeare_char.yaml  # a config file
    python train.py --config X.yaml trainer.max_steps=500 model.attention.type=gqa model.attention.num_kv_heads=2
    python train.py --config X.yaml --print-config             # the resolved config, then exit

The run directory ``<out_dir>/<name>-<timestamp>`` receives ``config.yaml`` (fully resolved),
``tokenizer.json``, ``checkpoints/`` (``last.ckpt`` and the best by validation loss, each holding the
config and tokenizer too) and the loggers' files (``csv/metrics.csv``, ``tensorboard/``, ``wandb/``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .training.config import ConfigError, RunConfig, flat_dict, load_config, to_container, to_yaml

RUN_DIR_ENV = "TT_RUN_DIR"


@dataclass
class RunResult:
    run_dir: Path
    val_loss: float
    steps: int
    wall_time: float
    sample: str | None


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
    args = parse_args(argv)
    if args.sweep or args.sweep_config:
        return _main_sweep(args)
    try:
        cfg = load_any_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    runner = run
    if getattr(cfg, "task", "lm") == "regression":
        from regression.cli import run as runner
    try:
        result = runner(cfg)
    except SIGTERMException:  # the checkpoint was saved by SaveOnInterrupt; 143 = terminated, not finished
        print("stopped by SIGTERM before max_steps; resume with resume_from=auto", file=sys.stderr)
        return 143
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        if os.environ.get("TT_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    if isinstance(result, RunResult):
        print(f"\nrun directory: {result.run_dir}\nfinal validation loss: {result.val_loss:.4f} "
              f"after {result.steps} steps in {result.wall_time:.1f} s")
    return 0


def _main_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepPlan, grid_from_args, plan_from_yaml, run_sweep

    try:
        if args.sweep_config:
            plan = plan_from_yaml(args.sweep_config)
            plan.overrides += args.overrides
            if args.sweep:
                raise ConfigError("give either --sweep-config or --sweep, not both")
        else:
            # key=v1,v2 is a swept axis; a single key=value after --sweep is an ordinary override for every run
            axes = [a for a in args.sweep if "," in a.split("=", 1)[-1]]
            fixed = [a for a in args.sweep if a not in axes]
            runs = grid_from_args(axes)
            name = (Path(args.config).stem if args.config else "default") + "-sweep"
            plan = SweepPlan(name, args.config, list(args.overrides) + fixed, runs, sorted({k for r in runs for k in r}))
        run_sweep(plan)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def load_any_config(path: str | None, overrides: list[str]):
    """The run config for the task the YAML (or a ``task=`` override) names: ``lm`` (default) or ``regression``."""
    from omegaconf import OmegaConf

    task = "lm"
    if path and Path(path).is_file():
        task = (OmegaConf.load(path) or {}).get("task", "lm")
    for override in overrides:
        if override.startswith("task="):
            task = override.split("=", 1)[1]
    if task == "regression":
        from regression.config import RegressionRunConfig

        return load_config(path, overrides, schema=RegressionRunConfig)
    if task != "lm":
        raise ConfigError(f"config key task: {task!r} is not one of ('lm', 'regression')")
    return load_config(path, [o for o in overrides if not o.startswith("task=")])


def resolve_resume(cfg: RunConfig) -> tuple[Path | None, dict]:
    """The checkpoint ``resume_from`` points at (``auto``: the newest run of this name), validated, and the
    run config saved in it (read once here; Lightning reads the file again to restore the state)."""
    from .training.checkpoint_io import find_latest_run, read_checkpoint

    if not cfg.resume_from:
        return None, {}
    if cfg.resume_from == "auto":
        run_dir = find_latest_run(cfg.out_dir, cfg.name)
        if run_dir is None:
            raise FileNotFoundError(f"resume_from=auto: no run named {cfg.name!r} with checkpoints/last.ckpt under {cfg.out_dir}")
        path = run_dir / "checkpoints" / "last.ckpt"
    else:
        path = Path(cfg.resume_from)
    saved = read_checkpoint(path)  # one-line error for missing / corrupt / foreign files, before any work
    return path, saved.get("run_config", {})


def resolve_run_dir(cfg: RunConfig, resume: Path | None = None) -> tuple[Path, bool]:
    """-> (run directory, whether this process shares it with launcher-started peers).

    Processes of one distributed run must agree on the directory: Lightning's DDP launcher passes it
    to its children in ``TT_RUN_DIR``; torchrun / SLURM launches derive it from the job id.
    """
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV]), True
    if resume is not None and resume.parent.name == "checkpoints":
        return resume.parent.parent, True  # a resumed run continues in its own directory and logs
    if os.environ.get("TORCHELASTIC_RUN_ID") and os.environ.get("WORLD_SIZE", "1") != "1":
        return Path(cfg.out_dir) / f"{cfg.name}-job{os.environ['TORCHELASTIC_RUN_ID']}", True
    if os.environ.get("SLURM_JOB_ID"):  # shared by all tasks, and kept when SLURM requeues the job
        return Path(cfg.out_dir) / f"{cfg.name}-slurm{os.environ['SLURM_JOB_ID']}", True
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.out_dir) / f"{cfg.name}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():  # never reuse (and so never overwrite) an existing run directory
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate, False


def run(cfg: RunConfig) -> RunResult | None:
    """Train one run end to end; returns its final figures (on rank 0; None on other ranks)."""
    import lightning as L

    from .data import LMDataModule
    from .training.callbacks import TextSampleCallback
    from .training.lm_module import LanguageModelModule
    from .training.trainer import build_trainer

    from .training.checkpoint_io import model_config_differences
    from .training.weights import load_weights

    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    resume, saved = resolve_resume(cfg)
    run_dir, shared = resolve_run_dir(cfg, resume)
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    run_dir.mkdir(parents=True, exist_ok=shared)
    set_env = RUN_DIR_ENV not in os.environ
    if set_env:
        os.environ[RUN_DIR_ENV] = str(run_dir)  # for processes that Lightning's launcher starts
    try:
        datamodule = LMDataModule(cfg.data, seed=cfg.seed, cache_root=Path(cfg.out_dir) / ".cache",
                                  max_val_batches=cfg.trainer.limit_val_batches)
        corpus = datamodule.prepare()
        if cfg.model.vocab_size != corpus.vocab_size:
            if rank == 0:
                print(f"model.vocab_size set to {corpus.vocab_size} from the tokenizer (config said {cfg.model.vocab_size})")
            cfg.model.vocab_size = corpus.vocab_size
        tokenizer = corpus.tokenizer()
        config_dict = to_container(cfg)
        if resume is not None:
            diffs = model_config_differences(saved.get("model", {}), config_dict["model"])
            if diffs:
                raise ValueError(f"cannot resume from {resume}: the model differs from the checkpoint's — {'; '.join(diffs)}")
            if rank == 0 and (saved.get("data") != config_dict["data"] or saved.get("seed") != cfg.seed):
                print("warning: data or seed settings differ from the checkpoint's run; the data order will not continue exactly")
        if rank == 0:
            name = "config.yaml" if not (run_dir / "config.yaml").exists() else f"config.resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
            (run_dir / name).write_text(to_yaml(cfg))  # never overwrite the original run's config
            (run_dir / "tokenizer.json").write_text(corpus.tokenizer_path.read_text())
        module = LanguageModelModule(cfg.model, cfg.optim, max_steps=cfg.trainer.max_steps, compile=cfg.trainer.compile,
                                     peak_flops=cfg.trainer.peak_flops)
        if cfg.init_from:
            report = load_weights(module.model, cfg.init_from, strict=cfg.init_strict, freeze=cfg.init_freeze)
            if rank == 0:
                print(report.format(cfg.init_from))
        module.checkpoint_extras = {"run_config": config_dict, "tokenizer": corpus.tokenizer_path.read_text()}
        trainer = build_trainer(cfg, run_dir, callbacks=[TextSampleCallback(cfg.sample, tokenizer)])
        model = module.model
        hparams = flat_dict(config_dict)
        hparams.update({"model.parameters": model.num_parameters(),
                        "model.kv_cache_bytes_per_token": model.kv_cache_bytes_per_token(),
                        "data.train_tokens": corpus.train_tokens, "data.val_tokens": corpus.val_tokens})
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)
        if rank == 0:
            print(f"run directory: {run_dir}\nmodel: {model.num_parameters():,} parameters, attention "
                  f"{cfg.model.attention.type}; data: {corpus.train_tokens:,} train / {corpus.val_tokens:,} val tokens")
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
        if trainer.global_step % cfg.trainer.val_check_interval:
            trainer.validate(module, datamodule=datamodule, verbose=False)  # the final figure is always fresh
        val_loss = float(trainer.callback_metrics["val/loss"])
        if not trainer.is_global_zero:
            return None
        sample = next((c.last_sample for c in trainer.callbacks if hasattr(c, "last_sample")), None)
        result = RunResult(run_dir, val_loss, trainer.global_step, time.perf_counter() - started, sample)
        (run_dir / "result.json").write_text(json.dumps({"val_loss": val_loss, "steps": result.steps, "wall_time_s": result.wall_time,
                                                         "train_time_s": module.elapsed(), "finished": True}, indent=2))
        return result
    finally:
        if set_env:
            os.environ.pop(RUN_DIR_ENV, None)
