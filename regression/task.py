"""The regression task: a table -> leak-free splits -> :class:`RegressionModule`, through the run skeleton.

What differs from the language-model task (see :class:`transformer.training.run.Task`): the best
checkpoint is chosen by validation RMSE, the final figures are the best checkpoint's validation
and test metrics in original units next to the baselines of ``baselines.py`` fitted on the same training
split and scored on the same examples (and, for the synthetic default, the known noise floor).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from transformer.training import checkpoint_keys as K
from transformer.training.config import flat_dict, to_container
from transformer.training.run import Resume, Task, warn

from .config import RegressionRunConfig


@dataclass
class RegressionResult:
    run_dir: Path
    val: dict[str, float]
    test: dict[str, float]
    baselines: dict[str, dict[str, dict[str, float]]]  # name -> split ("val" / "test") -> metrics
    noise_floor: float | None
    steps: int
    wall_time: float
    attention: str = ""
    notes: list[str] = field(default_factory=list)  # what the baselines detected or skipped
    model_notes: list[str] = field(default_factory=list)  # what the run chose (window_norm auto, the skip's alpha)
    extra: dict = field(default_factory=dict)

    def best_baseline(self, split: str) -> tuple[str, float] | None:
        scored = [(name, by_split[split]["rmse"]) for name, by_split in self.baselines.items() if split in by_split]
        return min(scored, key=lambda item: item[1]) if scored else None

    def format(self) -> str:
        lines = [f"\nbest checkpoint by validation RMSE; metrics in original units ({self.attention}); baselines fitted "
                 f"on the training split, scored on the same examples",
                 "| split | model | RMSE | MAE | R² | RMSE / best baseline |", "|---|---|---:|---:|---:|---:|"]
        for split, label, ours in (("val", "validation", self.val), ("test", "test", self.test)):
            if not ours:
                continue
            best = self.best_baseline(split)
            ratio = f"{ours['rmse'] / best[1]:.3f}" if best and best[1] > 0 else ""
            lines.append(f"| {label} | transformer | {ours['rmse']:.4f} | {ours['mae']:.4f} | {ours['r2']:.4f} | {ratio} |")
            for name, by_split in self.baselines.items():
                if split in by_split:
                    m = by_split[split]
                    lines.append(f"| {label} | {name} | {m['rmse']:.4f} | {m['mae']:.4f} | {m['r2']:.4f} | |")
        lines += [f"model: {note}" for note in self.model_notes] + [f"baselines: {note}" for note in self.notes]
        if self.noise_floor is not None:
            lines.append(f"noise floor (irreducible RMSE of the synthetic data): {self.noise_floor:.4f}; "
                         f"test RMSE / floor = {self.test.get('rmse', self.val['rmse']) / self.noise_floor:.3f}")
        from transformer.training.run_dir import outputs_summary

        lines.append(f"run directory: {self.run_dir}")
        lines.append(outputs_summary(self.run_dir))
        return "\n".join(lines)

    def to_json(self) -> dict:
        best = {split: self.best_baseline(split) for split in ("val", "test")}
        return {"val": self.val, "test": self.test, "baselines": self.baselines, "baseline_notes": self.notes, "model_notes": self.model_notes,
                "best_baseline": {k: {"name": v[0], "rmse": v[1]} for k, v in best.items() if v},
                "noise_floor": self.noise_floor, "steps": self.steps, "wall_time_s": self.wall_time, "finished": True}


SMALL_DATA_RATIO = 100  # parameters per training example above which a run is warned that it will overfit


class RegressionTask(Task):
    name = "regression"
    monitor = "val/rmse"

    def schema(self) -> type:
        return RegressionRunConfig

    def check_inputs(self, cfg: RegressionRunConfig) -> None:
        from .data import table_files

        if cfg.data.source == "files":
            table_files(cfg.data.path, cfg.data.format)

    def build_data(self, cfg: RegressionRunConfig, rank: int):
        from .data import build_data

        return build_data(cfg.data, cfg.seed)

    def check_resume(self, cfg: RegressionRunConfig, data, resume: Resume) -> None:
        saved = resume.extras.get(K.DATA_FINGERPRINT)
        if saved is not None and saved != data.fingerprint and not cfg.resume_allow_data_change:
            raise ValueError(f"cannot resume from {resume.path}: the data table differs from the one it was trained on "
                             f"({saved.get('rows')} -> {data.fingerprint['rows']} rows). Point data.path at the original "
                             f"data, or set resume_allow_data_change=true to continue on the new data")

    def settle_config(self, cfg: RegressionRunConfig, data, rank: int) -> None:
        """``regressor.window_norm: auto`` becomes the frame it picks and ``regressor.retrieval: auto`` on or off, before
        a resumed run's config is compared (the checkpoint records the choices)."""
        self.notes = []
        if cfg.data.kind == "sequence" and cfg.regressor.window_norm == "auto":
            self.notes.append(self._choose_window_norm(cfg, data))
        if cfg.regressor.retrieval is None:  # auto
            if cfg.data.kind == "sequence":
                cfg.regressor.retrieval = False
            else:
                from .retrieval import REPEATED_ROWS, repeated_share

                share = repeated_share(data.train.x, data.train.cats)
                cfg.regressor.retrieval = share >= REPEATED_ROWS
                self.notes.append(f"retrieval auto: {'on' if cfg.regressor.retrieval else 'off'} ({share:.0%} of the training rows repeat "
                                  f"another's features; on from {REPEATED_ROWS:.0%})")

    def build_module(self, cfg: RegressionRunConfig, data):
        from .h_transformer import regressor_for_run
        from .module import RegressionModule
        from .numeric_embeddings import PiecewiseLinearEmbedding

        pre = data.pre
        if not hasattr(self, "notes"):
            self.notes = []
        model = regressor_for_run(cfg, pre)
        if isinstance(getattr(model, "numeric", None), PiecewiseLinearEmbedding):  # bins from the training split
            model.numeric.fit_edges(data.train.x)
        if getattr(model, "retrieval", None) is not None:  # the rows it retrieves: the training split
            model.retrieval.fit_candidates(data.train.x, data.train.cats, data.train.y)
            self.notes.append(f"each row retrieves its {cfg.regressor.neighbours} nearest of {len(data.train):,} "
                              f"training rows (regressor.retrieval, regressor.neighbours)")
            self._candidates = data.train
        module = RegressionModule(model, pre, cfg.head, cfg.optim, max_steps=cfg.trainer.max_steps,
                                  horizon_steps=cfg.data.horizon_steps, compile=cfg.trainer.compile,
                                  moe_aux_loss_weight=cfg.model.moe_aux_loss_weight)
        if getattr(model, "skip", None) is not None:  # the linear part starts at its least-squares fit
            from .linear_init import fit_linear_skip

            alpha, _ = fit_linear_skip(model, data.train, data.val, pre, cfg.seed)
            model.skip.requires_grad_(cfg.regressor.linear_skip_trainable)
            self.notes.append(f"linear skip fitted by ridge on the training windows (alpha {alpha:g})"
                              + ("" if cfg.regressor.linear_skip_trainable else ", kept fixed"))
        return module

    def _choose_window_norm(self, cfg: RegressionRunConfig, data) -> str:
        """``regressor.window_norm: auto`` -> the frame whose least-squares linear forecast has the lowest validation
        RMSE (``cfg`` is updated, so the checkpoint records the choice)."""
        from dataclasses import replace

        from .h_transformer import regressor_for_run
        from .linear_init import fit_linear_skip

        if not cfg.data.target_history:
            cfg.regressor.window_norm = "none"
            return "window_norm auto: none (no target history to normalise)"
        errors = {}
        for frame in ("none", "mean", "last"):
            trial = replace(cfg, regressor=replace(cfg.regressor, window_norm=frame, linear_skip=True))
            errors[frame] = fit_linear_skip(regressor_for_run(trial, data.pre), data.train, data.val, data.pre, cfg.seed)[1]
        best = min(errors, key=errors.get)
        cfg.regressor.window_norm = best
        scores = ", ".join(f"{k} {v:.4g}" for k, v in errors.items())
        return f"window_norm auto: {best} (validation RMSE of the linear fit in each frame: {scores})"

    def init_weights(self, module, cfg: RegressionRunConfig, resume=None):
        from transformer.training.weights import load_weights

        report = load_weights(module.model, cfg.init_from, key_map={"decoder.": "encoder."}, strict=cfg.init_strict,
                              freeze=cfg.init_freeze)
        if getattr(module.model, "retrieval", None) is not None:  # this run's training rows, not the source run's
            train = self._candidates
            module.model.retrieval.fit_candidates(train.x, train.cats, train.y)
        return report

    def checkpoint_extras(self, cfg: RegressionRunConfig, data) -> dict:
        return {K.RUN_CONFIG: to_container(cfg), K.DATA_FINGERPRINT: data.fingerprint}

    def hparams(self, cfg: RegressionRunConfig, data, module) -> dict:
        return {**flat_dict(to_container(cfg)), "model.parameters": sum(p.numel() for p in module.model.parameters())}

    def describe(self, cfg: RegressionRunConfig, data, module) -> str:
        test = len(data.test) if data.test is not None else 0
        parameters = sum(p.numel() for p in module.model.parameters())
        if parameters > SMALL_DATA_RATIO * len(data.train):
            warn(f"{len(data.train):,} training examples for {parameters:,} parameters ({parameters / len(data.train):,.0f} "
                 f"per example): expect overfitting. Validate often with trainer.early_stopping_patience set (the best "
                 f"checkpoint is kept), or use a smaller model (model.embed_dim, model.num_layers)")
        return (f"model: {parameters:,} parameters, attention "
                f"{cfg.model.attention.type}; data: {len(data.train):,} train / {len(data.val):,} val / {test:,} test examples"
                + "".join(f"\nmodel: {note}" for note in getattr(self, "notes", [])))

    def fit(self, cfg: RegressionRunConfig, trainer, module, data, ckpt_path: str | None) -> None:
        self._loaders = _loaders(data, cfg, trainer.global_rank, trainer.world_size)
        train, val, _ = self._loaders
        trainer.fit(module, train, val, ckpt_path=ckpt_path)

    def result(self, cfg: RegressionRunConfig, trainer, module, data, run_dir: Path, seconds: float) -> RegressionResult | None:
        from .baselines import baselines

        _, val, test = self._loaders
        best = trainer.checkpoint_callback.best_model_path or None
        val_metrics = trainer.validate(module, val, ckpt_path=best, verbose=False)[0]
        test_metrics = trainer.test(module, test, ckpt_path=best, verbose=False)[0] if test is not None else {}
        if not trainer.is_global_zero:
            return None
        scores, notes = baselines(data, cfg)
        for logger in trainer.loggers:  # beside the model's metrics in CSV / TensorBoard / W&B
            logger.log_metrics({f"baseline/{re.sub(r'[^a-z0-9]+', '_', name)}/{split}_{metric}": value  # last_value, ...
                                for name, by_split in scores.items()
                                for split, metrics in by_split.items() for metric, value in metrics.items()},
                               step=trainer.global_step)
            logger.save()
        pick = lambda m, prefix: {k.split("/")[1]: float(v) for k, v in m.items() if k.startswith(prefix) and k != f"{prefix}/loss"}
        noise = cfg.data.synthetic_noise if cfg.data.source == "synthetic" else None
        return RegressionResult(run_dir, pick(val_metrics, "val"), pick(test_metrics, "test"), scores, noise,
                                trainer.global_step, seconds, cfg.model.attention.type, notes, list(getattr(self, "notes", [])))


def _loaders(data, cfg: RegressionRunConfig, rank: int, world: int):
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    from transformer.data.datamodule import ShardSampler

    from .data import IndexedRows

    g = torch.Generator().manual_seed(cfg.seed)
    if world > 1:
        train_sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    else:
        train_sampler = RandomSampler(data.train, generator=g)
    make = lambda ds, sampler: DataLoader(ds, batch_size=cfg.data.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                                          generator=torch.Generator().manual_seed(cfg.seed))
    # a model that retrieves training rows needs each training row's index, so it does not retrieve itself
    indexed = cfg.data.kind == "tabular" and bool(cfg.regressor.retrieval)
    train = make(IndexedRows(data.train) if indexed else data.train, train_sampler)
    val = make(data.val, ShardSampler(len(data.val), rank=rank, world_size=world))
    test = make(data.test, ShardSampler(len(data.test), rank=rank, world_size=world)) if data.test is not None else None
    return train, val, test
