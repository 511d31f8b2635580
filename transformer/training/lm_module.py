"""The LightningModule for language models: it receives the model config and optimisation settings
from outside (lightning-hydra-template style) and owns the step logic and metrics only.

Losses: each micro-batch contributes ``sum of token losses / nominal tokens`` (b * T), which
Lightning divides by ``accumulate_grad_batches``; so the gradient is the per-token mean over every
target of the accumulation window (packed LM blocks have no ignored targets). Instruction / chat data
(``token_mean``), where most targets are -100 and their share varies by batch, use each micro-batch's
mean over its trained tokens instead (as ``transformers``' Trainer and ``trl`` do). Validation
accumulates loss sums and token counts in ``torchmetrics.SumMetric`` s, which reduce across DDP
ranks as sums — never a mean of per-rank means.
"""

from __future__ import annotations

import time

import torch
from torchmetrics import SumMetric

from ..config import ModelConfig
from ..data.datamodule import data_parallel_rank_world
from ..parallel.context_parallel import shard_batch
from ..transformer_model import build_model
from .base_module import NonFiniteError, TrainingModule
from .config import OptimConfig
from .memory import peak_bytes, reset_peak

# Dense bf16/fp16 peak FLOP/s per device, for MFU (vendor datasheets, no sparsity).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12, "V100": 125e12}

NonFiniteLossError = NonFiniteError  # the original name


class LanguageModelModule(TrainingModule):
    def __init__(self, model_cfg: ModelConfig, optim_cfg: OptimConfig, *, max_steps: int, compile: bool = False,
                 peak_flops: float | None = None, token_mean: bool = False) -> None:
        super().__init__(build_model(model_cfg), optim_cfg, max_steps=max_steps, compile=compile)
        self.model_cfg = model_cfg
        self.peak_flops = peak_flops
        self.flops_per_token = self.model.flops_per_token(model_cfg.max_seq_len)
        # nan_strategy="disable": a NaN loss must reach the non-finite check, not be dropped with a warning
        self.val_loss_sum, self.val_tokens = SumMetric(nan_strategy="disable"), SumMetric(nan_strategy="disable")
        self._step_started: float | None = None
        self._logging_step = True
        self.token_mean = token_mean
        """Fine-tuning data (most targets -100): the loss is the mean over the micro-batch's trained tokens."""

    def forward(self, input_ids, targets=None):
        return self.model(input_ids, targets)

    @staticmethod
    def batch_tokens(batch) -> int:
        """Input positions in a micro-batch (``x`` is ``[b, s]``), for tokens/s."""
        return batch[0].numel()

    def _run(self, batch):
        """A batch is ``(x, y)``, or ``(x, y, positions, documents)`` when packed with document masks.
        Fine-tuning data skip the head at positions without a target (the same loss; ``bench/finetune.py``
        measures the saving) — not under torch.compile, where the data-dependent shape would recompile."""
        sparse = {"logits_for_targets": True} if self.token_mean and not self.compile_model else {}
        shard = getattr(self.model, "context_shard", None)
        if shard is not None:  # context parallelism: this rank's share of every sequence, attention by ring
            if len(batch) == 4 or self.token_mean:
                raise ValueError("trainer.context_parallel_size > 1 needs plain token windows: packed documents with "
                                 "document masks and fine-tuning data (tokens without loss) are not supported")
            x, y = batch
            with shard.sharded(x.shape[1], x.device):
                x, y, positions = shard_batch(shard, x, y)
                return self.model(x, y, position_ids=positions), y
        if len(batch) == 4:
            x, y, positions, documents = batch
            return self.model(x, y, position_ids=positions, document_ids=documents, **sparse), y
        x, y = batch
        return self.model(x, y, **sparse), y

    # ----------------------------------------------------------------------------- training
    def on_train_start(self) -> None:
        super().on_train_start()
        reset_peak(self.device)  # the peak of this run only (a sweep trains several in one process)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self._step_started is None:
            self._step_started = time.perf_counter()

    def training_step(self, batch, batch_idx):
        out, y = self._run(batch)
        loss = out.loss if self.token_mean else out.loss * (out.num_tokens / y.numel())  # sum of token losses / nominal tokens
        self._logging_step = logging_step = self._is_logging_step()
        if out.aux_loss is not None:
            loss = loss + self.model_cfg.moe_aux_loss_weight * out.aux_loss
            if logging_step:
                self.log("train/aux_loss", out.aux_loss.detach(), on_step=True, on_epoch=False)
        self.check_finite(loss, "training loss")
        if logging_step:  # self.log costs ~0.1 ms a call: only on steps the loggers will write
            shard = getattr(self.model, "context_shard", None)  # context parallel: the whole sequences' loss
            logged = out.loss.detach() if shard is None else shard.mean(out.loss)
            self.log("train/loss", logged, on_step=True, on_epoch=False, prog_bar=True)
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
        tokens = self.batch_tokens(batch) * accumulate * data_parallel_rank_world(self.trainer)[1]
        tokens_per_sec = tokens / max(elapsed, 1e-9)
        self.log("train/tokens_per_sec", tokens_per_sec, on_step=True, on_epoch=False, rank_zero_only=True)
        peak_memory = peak_bytes(self.device)
        if peak_memory is not None:
            self.log("train/peak_memory_mb", peak_memory / 2**20, on_step=True, on_epoch=False, rank_zero_only=True)
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
        out, _ = self._run(batch)
        self.val_loss_sum.update(out.loss.detach().double() * out.num_tokens)
        self.val_tokens.update(out.num_tokens)

    def on_validation_epoch_end(self) -> None:
        total, count = self.val_loss_sum.compute(), self.val_tokens.compute()
        shards = getattr(getattr(self.model, "context_shard", None), "size", 1)  # context-parallel ranks: distinct tokens
        replicas = self.trainer.world_size // (data_parallel_rank_world(self.trainer)[1] * shards)
        total, count = total / replicas, count / replicas  # the ranks of a tensor-parallel group summed one batch each
        self.val_loss_sum.reset()
        self.val_tokens.reset()
        loss = (total / count.clamp(min=1)).float()
        self.check_finite(loss, "validation loss")  # before ModelCheckpoint (a callback) can save this step
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)  # already a global sum / global count
        self.log("val/ppl", torch.exp(loss.clamp(max=30)), sync_dist=False)
        self.log("val/tokens", count.float(), sync_dist=False)
        self.log("time/elapsed_s", self.elapsed(), sync_dist=False, rank_zero_only=True)
        self.log("time/train_s", self.train_seconds(), sync_dist=False, rank_zero_only=True)
