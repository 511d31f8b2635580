"""Running a regression config: ``python train.py --config configs/regression/<name>.yaml [key=value ...]``.

Trains with the toolkit's trainer, loggers and checkpoints; keeps the best checkpoint by validation
RMSE; evaluates it on the test split; and compares with a least-squares baseline fitted on the same
training split (and, for the synthetic default, with the known noise floor).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from transformer.data.datamodule import ShardSampler

from .config import RegressionRunConfig


@dataclass
class RegressionResult:
    run_dir: Path
    val: dict[str, float]
    test: dict[str, float]
    baseline_val: dict[str, float]
    baseline_test: dict[str, float]
    noise_floor: float | None
    steps: int
    wall_time: float
    extra: dict = field(default_factory=dict)


def _loaders(data, cfg: RegressionRunConfig, rank: int, world: int):
    g = torch.Generator().manual_seed(cfg.seed)
    if world > 1:
        train_sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    else:
        train_sampler = RandomSampler(data.train, generator=g)
    make = lambda ds, sampler: DataLoader(ds, batch_size=cfg.data.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                                          generator=torch.Generator().manual_seed(cfg.seed))
    train = make(data.train, train_sampler)
    val = make(data.val, ShardSampler(len(data.val), rank=rank, world_size=world))
    test = make(data.test, ShardSampler(len(data.test), rank=rank, world_size=world)) if data.test is not None else None
    return train, val, test


def run(cfg: RegressionRunConfig) -> RegressionResult | None:
    import lightning as L

    from transformer.cli import RUN_DIR_ENV, resolve_resume, resolve_run_dir
    from transformer.training.config import to_container, to_yaml
    from transformer.training.trainer import build_trainer
    from transformer.training.weights import load_weights

    from .data import build_data
    from .h_transformer import build_regressor
    from .module import RegressionModule, linear_baseline

    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    resume, _ = resolve_resume(cfg)
    run_dir, shared = resolve_run_dir(cfg, resume)
    run_dir.mkdir(parents=True, exist_ok=shared)
    rank = int(os.environ.get("RANK", "0"))
    set_env = RUN_DIR_ENV not in os.environ
    if set_env:
        os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        data = build_data(cfg.data, cfg.seed)
        pre = data.pre
        model = build_regressor(cfg.model, kind=cfg.data.kind, num_features=len(pre.features), num_targets=len(pre.targets),
                                horizon_steps=cfg.data.horizon_steps, cardinalities=pre.cardinalities,
                                head_dropout=cfg.head.head_dropout)
        if cfg.init_from:
            report = load_weights(model, cfg.init_from, key_map={"decoder.": "encoder."}, freeze=cfg.init_freeze)
            if rank == 0:
                print(report.format(cfg.init_from))
        module = RegressionModule(model, pre, cfg.head, cfg.optim, max_steps=cfg.trainer.max_steps,
                                  horizon_steps=cfg.data.horizon_steps)
        module.checkpoint_extras = {"run_config": to_container(cfg)}
        if rank == 0:
            name = "config.yaml" if not (run_dir / "config.yaml").exists() else f"config.resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
            (run_dir / name).write_text(to_yaml(cfg))
            print(f"run directory: {run_dir}\nmodel: {sum(p.numel() for p in model.parameters()):,} parameters, attention "
                  f"{cfg.model.attention.type}; data: {len(data.train):,} train / {len(data.val):,} val / "
                  f"{len(data.test) if data.test is not None else 0:,} test examples")
        trainer = build_trainer(cfg, run_dir, monitor="val/rmse")
        for logger in trainer.loggers:
            from transformer.training.config import flat_dict

            logger.log_hyperparams({**flat_dict(to_container(cfg)), "model.parameters": sum(p.numel() for p in model.parameters())})
        train, val, test = _loaders(data, cfg, trainer.global_rank, trainer.world_size)
        trainer.fit(module, train, val, ckpt_path=str(resume) if resume else None)
        best = trainer.checkpoint_callback.best_model_path or None
        val_metrics = trainer.validate(module, val, ckpt_path=best, verbose=False)[0]
        test_metrics = trainer.test(module, test, ckpt_path=best, verbose=False)[0] if test is not None else {}
        if not trainer.is_global_zero:
            return None
        baseline_val = linear_baseline(data.train, data.val, pre, cfg.data.horizon_steps)
        baseline_test = linear_baseline(data.train, data.test, pre, cfg.data.horizon_steps) if data.test is not None else {}
        pick = lambda m, prefix: {k.split("/")[1]: float(v) for k, v in m.items() if k.startswith(prefix) and k != f"{prefix}/loss"}
        result = RegressionResult(run_dir, pick(val_metrics, "val"), pick(test_metrics, "test"), baseline_val, baseline_test,
                                  cfg.data.synthetic_noise if cfg.data.source == "synthetic" else None, trainer.global_step,
                                  time.perf_counter() - started)
        print(format_result(result, cfg))
        return result
    finally:
        if set_env:
            os.environ.pop(RUN_DIR_ENV, None)


def format_result(r: RegressionResult, cfg: RegressionRunConfig) -> str:
    lines = [f"\nbest checkpoint by validation RMSE; metrics in original units ({cfg.model.attention.type})",
             "| split | model | RMSE | MAE | R² |", "|---|---|---:|---:|---:|"]
    for split, ours, base in (("validation", r.val, r.baseline_val), ("test", r.test, r.baseline_test)):
        if ours:
            lines.append(f"| {split} | transformer | {ours['rmse']:.4f} | {ours['mae']:.4f} | {ours['r2']:.4f} |")
            lines.append(f"| {split} | linear least squares | {base['rmse']:.4f} | {base['mae']:.4f} | {base['r2']:.4f} |")
    if r.noise_floor is not None:
        lines.append(f"noise floor (irreducible RMSE of the synthetic data): {r.noise_floor:.4f}; "
                     f"test RMSE / floor = {r.test.get('rmse', r.val['rmse']) / r.noise_floor:.3f}")
    return "\n".join(lines)
