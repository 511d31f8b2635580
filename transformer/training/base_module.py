"""What every task's LightningModule shares, written once: the optimizer and schedule from
:class:`~transformer.training.config.OptimConfig`, RNG state and training time in checkpoints, the
run's extras (config, tokenizer, ...) in every checkpoint, ``torch.compile``, and the guard that
keeps non-finite values out of checkpoints.

Why the guard lives here: Lightning saves ``last.ckpt`` and the top-k checkpoints in callbacks that
run after the module's ``on_validation_epoch_end``. A task module calls :meth:`check_finite` on its
training loss (in ``training_step``) and on its validation figures (in ``on_validation_epoch_end``),
so a NaN step raises before any callback writes its weights; :meth:`on_save_checkpoint` also refuses
non-finite weights for every other save path (SIGTERM saves, manual saves).
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch

from . import checkpoint_keys as K
from .checkpoint_io import rng_state, set_rng_state
from .config import OptimConfig
from .optim import build_optimizer, build_scheduler


class NonFiniteError(RuntimeError):
    """A NaN / inf loss, validation figure or weight; nothing was saved from that step."""


class TrainingModule(L.LightningModule):
    """Base of the task modules (``LanguageModelModule``, ``RegressionModule``): ``self.model`` is the network."""

    def __init__(self, model: torch.nn.Module, optim_cfg: OptimConfig, *, max_steps: int, compile: bool = False) -> None:
        super().__init__()
        self.model, self.optim_cfg, self.max_steps = model, optim_cfg, max_steps
        self.compile_model = compile
        self.checkpoint_extras: dict = {}
        """Saved into every checkpoint (the resolved run config, the tokenizer, ...), so one file rebuilds the run."""
        self._saved_step: int | None = None  # the step of the newest checkpoint this run wrote or resumed from
        self._elapsed_before = 0.0  # wall seconds of earlier sessions of this run (restored on resume)
        self._train_before = 0.0  # the same without validation
        self._fit_started = time.perf_counter()
        self._val_seconds = 0.0  # validation time in this session
        self._val_started = self._fit_started
        self.adapter_only = False
        """Checkpoints hold only the trainable parameters (adapters); the frozen base is recorded by reference."""

    def keep_only_trainable(self) -> None:
        """From now on checkpoints hold only parameters that train (an adapter run: a small file), and
        loading one restores exactly those (checked in :meth:`on_load_checkpoint`)."""
        self.adapter_only = True
        self.strict_loading = False  # Lightning then loads the partial state dict; the keys are checked here

    def _trainable_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.adapter_only:
            keep = self._trainable_keys()
            checkpoint[K.STATE_DICT] = {k: v for k, v in checkpoint[K.STATE_DICT].items() if k in keep}
        bad = next((k for k, v in checkpoint.get(K.STATE_DICT, {}).items()
                    if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            self._raise_non_finite(f"weight {bad}", "nan/inf")
        checkpoint.update(self.checkpoint_extras)
        checkpoint[K.RNG] = rng_state()  # dropout etc. continue exactly on resume (data order has its own seed)
        checkpoint[K.ELAPSED_S] = self.elapsed()
        checkpoint[K.TRAIN_S] = self.train_seconds()
        self._saved_step = int(checkpoint.get(K.GLOBAL_STEP, self.global_step))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.adapter_only:
            have, want = set(checkpoint.get(K.STATE_DICT, {})), self._trainable_keys()
            if have != want:
                extra = sorted(have - want)[:3] or sorted(want - have)[:3]
                raise ValueError(f"the checkpoint's adapters do not match this run's (finetune settings differ: {extra})")
        if K.RNG in checkpoint:
            set_rng_state(checkpoint[K.RNG])
        self._elapsed_before = float(checkpoint.get(K.ELAPSED_S, 0.0))
        self._train_before = float(checkpoint.get(K.TRAIN_S, 0.0))
        self._saved_step = int(checkpoint.get(K.GLOBAL_STEP, 0))

    # ----------------------------------------------------------------------- non-finite
    def check_finite(self, value: torch.Tensor, what: str) -> None:
        """Raise :class:`NonFiniteError` if ``value`` holds a NaN / inf (``what``: "training loss", ...)."""
        if not torch.isfinite(value).all():
            self._raise_non_finite(what, value.detach().float().flatten()[:1].item())

    def _raise_non_finite(self, what: str, value) -> None:
        raise NonFiniteError(
            f"non-finite {what} ({value}) at step {self.global_step}; stopped without checkpointing it. "
            f"{self._newest_checkpoint_text()} Lower optim.lr, enable optim.grad_clip, or use bf16 instead of fp16")

    def _newest_checkpoint_text(self) -> str:
        """A true sentence about the newest checkpoint on disk (for the non-finite message)."""
        trainer = self._trainer
        callback = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
        directory = Path(callback.dirpath) if callback is not None and callback.dirpath else None
        files = sorted(directory.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if directory and directory.is_dir() else []
        if not files:
            return "No checkpoint had been saved yet."
        step = f" (step {self._saved_step})" if self._saved_step is not None else ""
        return f"The newest checkpoint, {files[-1]}{step}, was written before the problem and is intact."

    # ----------------------------------------------------------------------------- timing
    def on_train_start(self) -> None:
        self._fit_started = time.perf_counter()

    def elapsed(self) -> float:
        """Wall seconds this run has trained, across resumes (for loss-vs-time comparisons)."""
        return self._elapsed_before + time.perf_counter() - self._fit_started

    def train_seconds(self) -> float:
        """Like :meth:`elapsed` but without time spent validating (time-to-quality comparisons)."""
        trainer = self._trainer
        validating = trainer is not None and (trainer.validating or trainer.sanity_checking)
        now = self._val_started if validating else time.perf_counter()
        return self._train_before + now - self._fit_started - self._val_seconds

    def on_validation_start(self) -> None:
        self._val_started = time.perf_counter()

    def on_validation_end(self) -> None:
        self._val_seconds += time.perf_counter() - self._val_started

    # -------------------------------------------------------------------- model, optimiser
    def configure_model(self) -> None:
        from .trainer import FSDP2Strategy, parallelize

        strategy = getattr(self._trainer, "strategy", None)
        if isinstance(strategy, FSDP2Strategy) and not getattr(self, "_sharded", False):
            parallelize(self.model, self.device_mesh, strategy.kind, bf16=str(self._trainer.precision).startswith("bf16"),
                        context_parallel_size=strategy.context_parallel_size)
            if strategy.context_parallel_size > 1 and self._trainer.is_global_zero:
                print(f"context parallel: every sequence split over {strategy.context_parallel_size} processes "
                      f"(zig-zag shards, ring attention)", flush=True)
            self._sharded = True
        if self.compile_model and not getattr(self, "_compiled", False):
            self.model = torch.compile(self.model)
            self._compiled = True

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Under tensor parallelism the gradients live on different meshes (and plain tensors), which torch's
        fused clipping refuses: clip by the same total norm group by group (:mod:`transformer.parallel.clip`)."""
        if gradient_clip_val and getattr(self, "_sharded", False) and gradient_clip_algorithm in (None, "norm"):
            from ..parallel.clip import clip_grad_norm

            clip_grad_norm(self.model.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optim_cfg, str(self._trainer.precision) if self._trainer else "32-true")
        if getattr(self, "_sharded", False):  # tensor-parallel rows: the optimizer's state dict in the usual layout
            from ..parallel.tensor_parallel import register_optimizer_hooks

            register_optimizer_hooks(optimizer, self.model)
        scheduler = build_scheduler(optimizer, self.optim_cfg, self.optim_cfg.decay_steps or self.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
