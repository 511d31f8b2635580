"""The LightningModule for language models: it receives the model config and optimisation settings
from outside (lightning-hydra-template style) and owns the step logic and metrics only.

Losses: each micro-batch contributes ``sum of token losses / nominal tokens`` (b * T), which
Lightning divides by ``accumulate_grad_batches``; so the gradient is the per-token mean over every
target of the accumulation window (packed LM blocks have no ignored targets). Validation
accumulates loss sums and token counts in ``torchmetrics.SumMetric`` s, which reduce across DDP
ranks as sums — never a mean of per-rank means.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from torchmetrics import SumMetric

from ..config import ModelConfig
from ..transformer_model import build_model
from .checkpoint_io import rng_state, set_rng_state
from .config import OptimConfig
from .optim import build_optimizer, build_scheduler

# Dense bf16/fp16 peak FLOP/s per device, for MFU (vendor datasheets, no sparsity).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12, "V100": 125e12}


class NonFiniteLossError(RuntimeError):
    pass


class LanguageModelModule(L.LightningModule):
    def __init__(self, model_cfg: ModelConfig, optim_cfg: OptimConfig, *, max_steps: int, compile: bool = False,
                 peak_flops: float | None = None) -> None:
        super().__init__()
        self.model_cfg, self.optim_cfg, self.max_steps = model_cfg, optim_cfg, max_steps
        self.model = build_model(model_cfg)
        self.compile_model = compile
        self.peak_flops = peak_flops
        self.flops_per_token = self.model.flops_per_token(model_cfg.max_seq_len)
        self.val_loss_sum, self.val_tokens = SumMetric(), SumMetric()
        self._step_started: float | None = None
        self._logging_step = True
        self._elapsed_before = 0.0  # wall seconds of earlier sessions of this run (restored on resume)
        self._train_before = 0.0  # the same without validation
        self._fit_started = time.perf_counter()
        self._val_seconds = 0.0  # validation time in this session
        self._val_started = self._fit_started
        self.checkpoint_extras: dict = {}
        """Saved into every checkpoint (the resolved run config and the tokenizer), so one file rebuilds the run."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint.update(self.checkpoint_extras)
        checkpoint["rng"] = rng_state()  # dropout etc. continue exactly on resume (data order has its own seed)
        checkpoint["elapsed_s"] = self.elapsed()
        checkpoint["train_s"] = self.train_seconds()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng" in checkpoint:
            set_rng_state(checkpoint["rng"])
        self._elapsed_before = float(checkpoint.get("elapsed_s", 0.0))
        self._train_before = float(checkpoint.get("train_s", 0.0))

    def on_train_start(self) -> None:
        self._fit_started = time.perf_counter()

    def elapsed(self) -> float:
        """Wall seconds this run has trained, across resumes (for loss-vs-time comparisons)."""
        return self._elapsed_before + time.perf_counter() - self._fit_started

    def train_seconds(self) -> float:
        """Like :meth:`elapsed` but without time spent validating (time-to-quality comparisons)."""
        now = self._val_started if self.trainer.validating or self.trainer.sanity_checking else time.perf_counter()
        return self._train_before + now - self._fit_started - self._val_seconds

    def on_validation_start(self) -> None:
        self._val_started = time.perf_counter()

    def on_validation_end(self) -> None:
        self._val_seconds += time.perf_counter() - self._val_started

    def configure_model(self) -> None:
        if self.compile_model and not getattr(self, "_compiled", False):
            self.model = torch.compile(self.model)
            self._compiled = True

    def forward(self, input_ids, targets=None):
        return self.model(input_ids, targets)

    # ----------------------------------------------------------------------------- training
    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self._step_started is None:
            self._step_started = time.perf_counter()

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.model(x, y)
        loss = out.loss * (out.num_tokens / y.numel())  # sum of token losses / nominal tokens
        self._logging_step = logging_step = self._is_logging_step()
        if out.aux_loss is not None:
            loss = loss + self.model_cfg.moe_aux_loss_weight * out.aux_loss
            if logging_step:
                self.log("train/aux_loss", out.aux_loss.detach(), on_step=True, on_epoch=False)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step}; stopping. The last checkpoint "
                f"saved before this step is intact. Lower optim.lr, enable optim.grad_clip, or use bf16 instead of fp16."
            )
        if logging_step:  # self.log costs ~0.1 ms a call: only on steps the loggers will write
            self.log("train/loss", out.loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _is_logging_step(self) -> bool:
        """Lightning's own decision whether this step's logs are written (log_every_n_steps)."""
        trainer = self._trainer
        return trainer is None or trainer._logger_connector.should_update_logs

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        accumulate = self.trainer.accumulate_grad_batches
        if (batch_idx + 1) % accumulate:
            return
        now = time.perf_counter()
        elapsed, self._step_started = now - self._step_started, None
        if not self._logging_step:
            return
        tokens = batch[0].numel() * accumulate * self.trainer.world_size
        tokens_per_sec = tokens / max(elapsed, 1e-9)
        self.log("train/tokens_per_sec", tokens_per_sec, on_step=True, on_epoch=False, rank_zero_only=True)
        peak = self._peak_flops()
        if peak:
            mfu = self.flops_per_token * tokens_per_sec / (peak * self.trainer.world_size)
            self.log("train/mfu", mfu, on_step=True, on_epoch=False, rank_zero_only=True)

    def _peak_flops(self) -> float | None:
        if self.peak_flops:
            return self.peak_flops
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            return next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        return None

    # --------------------------------------------------------------------------- validation
    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self.model(x, y)
        self.val_loss_sum.update(out.loss.detach().double() * out.num_tokens)
        self.val_tokens.update(out.num_tokens)

    def on_validation_epoch_end(self) -> None:
        total, count = self.val_loss_sum.compute(), self.val_tokens.compute()
        self.val_loss_sum.reset()
        self.val_tokens.reset()
        loss = (total / count.clamp(min=1)).float()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)  # already a global sum / global count
        self.log("val/ppl", torch.exp(loss.clamp(max=30)), sync_dist=False)
        self.log("val/tokens", count.float(), sync_dist=False)
        self.log("time/elapsed_s", self.elapsed(), sync_dist=False, rank_zero_only=True)
        self.log("time/train_s", self.train_seconds(), sync_dist=False, rank_zero_only=True)

    # ---------------------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optim_cfg, str(self._trainer.precision) if self._trainer else "32-true")
        scheduler = build_scheduler(optimizer, self.optim_cfg, self.optim_cfg.decay_steps or self.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
