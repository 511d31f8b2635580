"""The Lightning Trainer, its loggers and callbacks, built from the run config."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy

from ..layers import TransformerBlock
from .callbacks import SaveOnInterrupt, StopWhenNotImproving
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

import shutil

from .checkpoint_io import CheckpointError, atomic_save, atomic_write_text, is_sharded_checkpoint, read_checkpoint
from .config import MODEL_PARALLEL, RunConfig, parse_devices
from .progress import ProgressReporter, progress_interval


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O through :func:`atomic_save` / :func:`read_checkpoint`: never a half-written
    file under the target name, one-line errors for bad files."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        atomic_save(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        if is_sharded_checkpoint(path):  # its optimizer state is in the shards, which only those strategies read
            raise CheckpointError(f"{path} is a sharded checkpoint (checkpoint.sharded=true): resume it with "
                                  f"trainer.strategy={' | '.join(MODEL_PARALLEL)}, or start from its weights with "
                                  f"init_from={path}")
        return read_checkpoint(path, map_location=map_location or "cpu")


class AppendingCSVLogger(L.pytorch.loggers.CSVLogger):
    """CSVLogger that continues an existing ``metrics.csv`` (a resumed run) and keeps ``hparams.yaml``.

    Lightning's writer deletes an existing ``metrics.csv`` when it is created; this keeps the rows,
    writes them back (atomically) and appends under the same header. Rows logged after the resumed
    step (by a launch that was killed after its last checkpoint) are dropped, since the resumed run
    logs those steps again. The first launch's ``hparams.yaml`` is kept: a resumed run's config goes to
    ``config.resumed-*.yaml``.
    """

    def __init__(self, *args, resume_step: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = os.path.join(self.log_dir, "metrics.csv")
        previous = Path(path).read_text() if os.path.isfile(path) else None
        writer = super().experiment
        if previous is not None and isinstance(getattr(writer, "metrics_file_path", None), str):  # rank 0's real writer
            previous = rows_through_step(previous, self.resume_step)
            atomic_write_text(Path(writer.metrics_file_path), previous)
            header = previous.splitlines()[0].split(",") if previous else []
            writer.metrics_keys = sorted(k for k in header if k)
        return writer

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        if self.resume_step is not None and os.path.isfile(os.path.join(self.log_dir, "hparams.yaml")):
            return
        super().log_hyperparams(params, *args, **kwargs)


def rows_through_step(csv_text: str, step: int | None) -> str:
    """``metrics.csv`` text without the rows whose ``step`` is past what the checkpoint at ``step`` had logged.

    Lightning logs a training step's metrics with the step count *before* it (0 for the first), and
    the validation run after optimizer step N with N - 1; so a checkpoint saved at step N has logged
    exactly the rows with step < N.
    """
    if step is None or not csv_text:
        return csv_text
    import csv
    import io

    rows = list(csv.reader(io.StringIO(csv_text)))
    if not rows or "step" not in rows[0]:
        return csv_text
    col = rows[0].index("step")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows[0])
    for row in rows[1:]:
        try:
            keep = int(float(row[col])) < step
        except (ValueError, IndexError):
            keep = True
        if keep:
            writer.writerow(row)
    return out.getvalue()


def build_loggers(cfg: RunConfig, run_dir: Path, *, resume_step: int | None = None) -> list:
    loggers = []
    if cfg.logger.csv:
        loggers.append(AppendingCSVLogger(save_dir=str(run_dir), name="", version="csv", resume_step=resume_step))
    if cfg.logger.tensorboard:
        loggers.append(L.pytorch.loggers.TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard"))
    wandb = cfg.logger.wandb
    if wandb.enabled:
        offline = wandb.offline or os.environ.get("WANDB_MODE") == "offline"
        loggers.append(L.pytorch.loggers.WandbLogger(
            project=wandb.project, entity=wandb.entity, group=wandb.group, tags=list(wandb.tags) or None,
            name=run_dir.name, save_dir=str(run_dir), offline=offline, id=_wandb_id(run_dir), resume="allow",
        ))
        # Lightning passes anonymous=None, which wandb answers with a deprecation warning on every run.
        getattr(loggers[-1], "_wandb_init", {}).pop("anonymous", None)
    return loggers


def finish_loggers(trainer, *, exit_code: int = 0) -> None:
    """Close a W&B run here rather than at interpreter exit, where wandb prints its closing lines with escape
    codes even into a log file (and cannot record how the run ended)."""
    if not any(type(logger).__name__ == "WandbLogger" for logger in trainer.loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def _wandb_id(run_dir: Path) -> str:
    """A run id kept in the run directory, so a resumed run continues the same W&B run."""
    path = run_dir / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id)
    return run_id


class FSDP2Strategy(ModelParallelStrategy):
    """``trainer.strategy=fsdp2 | tp | fsdp2_tp``: Lightning's strategy for models that parallelise themselves
    (``TrainingModule.configure_model`` calls :func:`parallelize` with this strategy's ``kind``) on its
    ``data_parallel x tensor_parallel`` device mesh. Checkpoints are gathered into one file (the usual format,
    rows in the usual layout) and read as every other strategy here reads them: they hold the run's RNG state
    (numpy arrays), which torch's ``weights_only`` loader refuses."""

    def __init__(self, kind: str = "fsdp2", *, context_parallel_size: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kind, self.context_parallel_size = kind, context_parallel_size

    @property
    def distributed_sampler_kwargs(self) -> dict:
        """Under context parallelism the ``cp`` consecutive data-parallel ranks of a group share each batch."""
        if self.context_parallel_size == 1:
            return super().distributed_sampler_kwargs
        cp, mesh = self.context_parallel_size, self.device_mesh["data_parallel"]  # data and context ranks
        return {"num_replicas": mesh.size() // cp, "rank": mesh.get_local_rank() // cp}

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        return super().load_checkpoint(checkpoint_path, weights_only=False)

    def save_checkpoint(self, checkpoint, filepath, storage_options=None) -> None:
        """Sharded (``checkpoint.sharded``): every rank writes its shards into ``.<name>.tmp-<pid>``, then rank 0
        puts the finished directory in place, so a crash mid-save never leaves a half-written ``<name>`` (the
        temporary directory is removed with the run's other leftovers). Gathered: one atomic file as usual."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        partial = path.with_name(f".{path.name}.tmp-{self.broadcast(os.getpid())}")
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("sharded checkpoint written")
        if self.global_rank == 0:
            old = path.with_name(f".{path.name}.old.tmp-{os.getpid()}")
            if path.exists():
                path.rename(old)
            partial.rename(path)
            shutil.rmtree(old, ignore_errors=True)
            if old.is_file():
                old.unlink()
        self.barrier("sharded checkpoint in place")


def parallelize(model, mesh, kind: str, *, bf16: bool = False, context_parallel_size: int = 1) -> None:
    """Split ``model`` in place for strategy ``kind`` over Lightning's ``(data_parallel, tensor_parallel)`` mesh:
    tensor parallelism inside each tensor-parallel group first, then FSDP2 across the groups. With
    ``context_parallel_size`` > 1 (``fsdp2``, ``fsdp2_tp``): Lightning's data-parallel dimension holds the data x
    context ranks; groups of that many consecutive ones share each sequence (ring attention over the heads a
    rank holds), and FSDP2 spans the whole dimension (its gradient mean is over data and context shards)."""
    from ..parallel.context_parallel import apply_context_parallel
    from ..parallel.fsdp2 import shard_model
    from ..parallel.tensor_parallel import apply_tensor_parallel

    if kind in ("tp", "fsdp2_tp"):
        apply_tensor_parallel(model, mesh["tensor_parallel"])
    if context_parallel_size > 1:
        from torch.distributed.device_mesh import init_device_mesh

        cp, tp = context_parallel_size, mesh["tensor_parallel"].size()
        groups = init_device_mesh(mesh.device_type, (mesh.size() // (cp * tp), cp, tp),
                                  mesh_dim_names=("data_parallel", "context_parallel", "tensor_parallel"))
        apply_context_parallel(model, groups["context_parallel"].get_group(), groups["context_parallel"].get_local_rank(), cp)
    if kind in ("fsdp2", "fsdp2_tp"):
        shard_model(model, mesh["data_parallel"], mixed_precision="bf16" if bf16 else None)


def build_strategy(cfg: RunConfig):
    kind = cfg.trainer.strategy
    if kind in MODEL_PARALLEL:
        world = _world_size(cfg)
        tp = {"fsdp2": 1, "tp": cfg.trainer.tensor_parallel_size or world, "fsdp2_tp": cfg.trainer.tensor_parallel_size}[kind]
        if world % tp or (kind == "tp" and tp != world):
            raise ValueError(f"trainer.tensor_parallel_size={tp} must {'equal' if kind == 'tp' else 'divide'} the "
                             f"number of processes ({world} = trainer.devices x trainer.num_nodes)"
                             + ("; use trainer.strategy=fsdp2_tp to combine it with data parallelism" if kind == "tp" else ""))
        cp = cfg.trainer.context_parallel_size
        if world % (cp * tp):
            raise ValueError(f"trainer.context_parallel_size={cp}" + (f" x trainer.tensor_parallel_size={tp}" if tp > 1 else "")
                             + f" must divide the number of processes ({world} = trainer.devices x trainer.num_nodes)")
        block = getattr(getattr(cfg, "data", None), "block_size", None)
        if cp > 1 and block is not None and block % (2 * cp):
            raise ValueError(f"data.block_size={block} must be divisible by 2 x trainer.context_parallel_size={cp} "
                             f"(each process takes two equal chunks of every sequence)")
        return FSDP2Strategy(kind, context_parallel_size=cp, data_parallel_size=world // tp, tensor_parallel_size=tp,
                             save_distributed_checkpoint=cfg.checkpoint.sharded)
    if kind == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        # Shard per transformer block: each block's parameters are gathered just for its forward/backward.
        return FSDPStrategy(auto_wrap_policy={TransformerBlock}, activation_checkpointing_policy=
                            {TransformerBlock} if getattr(cfg.model, "gradient_checkpointing", False) else None)
    return kind


def _world_size(cfg: RunConfig) -> int:
    """Processes of the run: devices per node (``auto``: every GPU, else 1) x nodes."""
    devices = parse_devices(cfg.trainer.devices)
    if devices in ("auto", -1, "-1"):
        devices = torch.cuda.device_count() if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else 1
    count = len(devices) if isinstance(devices, (list, tuple)) else int(devices)
    return count * cfg.trainer.num_nodes


def build_trainer(cfg: RunConfig, run_dir: Path, *, callbacks: list | tuple = (), monitor: str = "val/loss",
                  resume_step: int | None = None) -> L.Trainer:
    """The Trainer for a run (language model or regression: ``cfg`` needs trainer / logger / checkpoint / optim
    sections); checkpoints keep the best ``save_top_k`` by ``monitor`` (lower is better) plus ``last.ckpt``.
    ``resume_step``: the step a run resumed in its own directory continues from (its logs are trimmed there)."""
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
    if t.early_stopping_patience is not None:
        callbacks.append(StopWhenNotImproving(monitor=monitor, patience=t.early_stopping_patience,
                                              min_delta=t.early_stopping_min_delta))
    loggers = build_loggers(cfg, run_dir, resume_step=resume_step)
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if t.progress_bar:
        callbacks.append(ProgressReporter(progress_interval(t.max_steps, t.log_every_n_steps, t.progress_every_n_steps),
                                          refresh_every=t.log_every_n_steps))
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=build_strategy(cfg),
        precision=t.precision, max_steps=t.max_steps,
        # Lightning counts batches here, not optimizer steps; the DataModule applies limit_val_batches itself
        # (identically for any number of processes), so the Trainer must not cut validation again.
        val_check_interval=t.val_check_interval * t.accumulate_grad_batches, check_val_every_n_epoch=None,
        limit_val_batches=1.0, log_every_n_steps=t.log_every_n_steps,
        accumulate_grad_batches=t.accumulate_grad_batches, gradient_clip_val=cfg.optim.grad_clip or None,
        deterministic=t.deterministic, logger=loggers or False, callbacks=callbacks, enable_progress_bar=False,
        use_distributed_sampler=False, default_root_dir=str(run_dir), num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,
    )

