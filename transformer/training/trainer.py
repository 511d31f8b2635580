"""The Lightning Trainer, its loggers and callbacks, built from the run config."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar, TQDMProgressBar

from ..layers import TransformerBlock
from .callbacks import SaveOnInterrupt
from .checkpoint_io import AtomicCheckpointIO, atomic_write_text
from .config import RunConfig


class AppendingCSVLogger(L.pytorch.loggers.CSVLogger):
    """CSVLogger that continues an existing ``metrics.csv`` (a resumed run).

    Lightning's writer deletes an existing ``metrics.csv`` when it is created; this keeps the rows,
    writes them back (atomically) and appends under the same header.
    """

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = os.path.join(self.log_dir, "metrics.csv")
        previous = Path(path).read_text() if os.path.isfile(path) else None
        writer = super().experiment
        if previous is not None and isinstance(getattr(writer, "metrics_file_path", None), str):  # rank 0's real writer
            atomic_write_text(Path(writer.metrics_file_path), previous)
            header = previous.splitlines()[0].split(",") if previous else []
            writer.metrics_keys = sorted(k for k in header if k)
        return writer


def build_loggers(cfg: RunConfig, run_dir: Path) -> list:
    loggers = []
    if cfg.logger.csv:
        loggers.append(AppendingCSVLogger(save_dir=str(run_dir), name="", version="csv"))
    if cfg.logger.tensorboard:
        loggers.append(L.pytorch.loggers.TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard"))
    wandb = cfg.logger.wandb
    if wandb.enabled:
        try:
            import wandb as _  # noqa: F401
        except ImportError:
            raise ValueError("logger.wandb.enabled=true needs the wandb package: pip install 'transformer-toolkit[wandb]'") from None
        offline = wandb.offline or os.environ.get("WANDB_MODE") == "offline"
        loggers.append(L.pytorch.loggers.WandbLogger(
            project=wandb.project, entity=wandb.entity, group=wandb.group, tags=list(wandb.tags) or None,
            name=run_dir.name, save_dir=str(run_dir), offline=offline, id=_wandb_id(run_dir), resume="allow",
        ))
    return loggers


def _wandb_id(run_dir: Path) -> str:
    """A run id kept in the run directory, so a resumed run continues the same W&B run."""
    path = run_dir / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id)
    return run_id


def build_strategy(cfg: RunConfig):
    if cfg.trainer.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        # Shard per transformer block: each block's parameters are gathered just for its forward/backward.
        return FSDPStrategy(auto_wrap_policy={TransformerBlock}, activation_checkpointing_policy=
                            {TransformerBlock} if getattr(cfg.model, "gradient_checkpointing", False) else None)
    return cfg.trainer.strategy


def build_trainer(cfg: RunConfig, run_dir: Path, *, callbacks: list | tuple = (), monitor: str = "val/loss") -> L.Trainer:
    """The Trainer for a run (language model or regression: ``cfg`` needs trainer / logger / checkpoint / optim
    sections); checkpoints keep the best ``save_top_k`` by ``monitor`` (lower is better) plus ``last.ckpt``."""
    t = cfg.trainer
    torch.set_float32_matmul_precision("high" if t.tf32 else "highest")  # TF32 tensor cores for fp32 work on GPU
    metric = monitor.split("/")[-1]
    callbacks = [
        ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename=f"step{{step:07d}}-{metric}{{{monitor}:.4f}}",
                        auto_insert_metric_name=False, monitor=monitor, mode="min", save_top_k=cfg.checkpoint.save_top_k,
                        save_last=cfg.checkpoint.save_last),
        SaveOnInterrupt(run_dir / "checkpoints"),
        *callbacks,
    ]
    loggers = build_loggers(cfg, run_dir)
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if t.progress_bar:
        callbacks.append(_progress_bar())
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=build_strategy(cfg),
        precision=t.precision, max_steps=t.max_steps,
        # Lightning counts batches here, not optimizer steps; the DataModule applies limit_val_batches itself
        # (identically for any number of processes), so the Trainer must not cut validation again.
        val_check_interval=t.val_check_interval * t.accumulate_grad_batches, check_val_every_n_epoch=None,
        limit_val_batches=1.0, log_every_n_steps=t.log_every_n_steps,
        accumulate_grad_batches=t.accumulate_grad_batches, gradient_clip_val=cfg.optim.grad_clip or None,
        deterministic=t.deterministic, logger=loggers or False, callbacks=callbacks, enable_progress_bar=t.progress_bar,
        use_distributed_sampler=False, default_root_dir=str(run_dir), num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,
    )


def _progress_bar():
    try:
        import rich  # noqa: F401

        return RichProgressBar(leave=True)
    except ImportError:
        return TQDMProgressBar()
