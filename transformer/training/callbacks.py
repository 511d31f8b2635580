"""Callbacks: periodic text samples during training, and a final sample at the end."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import rank_zero_only

from ..generation import generate
from .config import SampleConfig


class SaveOnInterrupt(L.Callback):
    """SIGTERM (schedulers, SLURM preemption) or Ctrl-C: write ``last.ckpt`` at the step reached, atomically,
    so ``resume_from=auto`` continues from there. Lightning turns SIGTERM into an exception at the end of
    the current batch and calls ``on_exception`` on every rank (saving is collective under DDP/FSDP).

    Ctrl-C is treated the same way: during training the first one only asks the run to stop at the end of the
    current batch, so it never lands inside a checkpoint being written (torch's zip writer would turn it into
    a ``RuntimeError`` about a stream position, and the run would end as a failure); a second Ctrl-C
    interrupts at once."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.path = Path(checkpoint_dir) / "last.ckpt"
        self.saved_at: int | None = None
        self._stop_requested = False
        self._previous_handler = None

    # ---------------------------------------------------------------- Ctrl-C at a safe point
    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._request_stop)

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True
        signal.signal(signal.SIGINT, self._previous_handler or signal.default_int_handler)  # the next one: at once

    def _stop_if_requested(self) -> None:
        if self._stop_requested:
            self._stop_requested = False
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_if_requested()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop_if_requested()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handler()  # training is done: a Ctrl-C from here on interrupts at once

    # ---------------------------------------------------------------- saving
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        self._restore_handler()
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)) or trainer.global_step == 0:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_at = trainer.global_step
        if trainer.is_global_zero:
            what = "SIGTERM" if isinstance(exception, SIGTERMException) else "interrupt"
            print(f"\n{what}: saved {self.path} at step {trainer.global_step}; continue with resume_from=auto", flush=True)


class StopWhenNotImproving(EarlyStopping):
    """Lightning's ``EarlyStopping`` on the validation checks (not epoch ends: runs count steps), lower is better,
    saying once why the run stopped. Its counter is in the checkpoint, so a resumed run keeps counting."""

    def __init__(self, *, monitor: str, patience: int, min_delta: float) -> None:
        super().__init__(monitor=monitor, patience=patience, min_delta=min_delta, mode="min", check_on_train_epoch_end=False,
                         verbose=False)
        self.required_gain = min_delta  # (Lightning stores min_delta negated for mode="min")
        self.stopped_at: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:  # not the best checkpoint's re-evaluation
            return
        super().on_validation_end(trainer, pl_module)
        if trainer.should_stop and self.stopped_at is None:
            self.stopped_at = trainer.global_step
            if trainer.is_global_zero:
                print(f"early stopping at step {trainer.global_step}: {self.monitor} has not improved by more than "
                      f"{self.required_gain:g} for {self.patience} validation check(s) (best {float(self.best_score):.4f})",
                      flush=True)


def shards_parameters(trainer) -> bool:
    """The strategy splits parameters across ranks (``fsdp``, ``fsdp2``, ``tp``, ``fsdp2_tp``): every forward is
    collective, so work that runs the model (samples, evaluation) must run on every rank or not at all."""
    return type(trainer.strategy).__name__ in ("FSDPStrategy", "FSDP2Strategy")


class TextSampleCallback(L.Callback):
    """Generate from ``prompt`` every ``every_n_steps`` (0: only at the end of training) on rank 0,
    print it and log it as text where the logger can (W&B, TensorBoard). Under a sharded strategy (FSDP,
    FSDP2) every rank generates, since each forward gathers parameters from all of them; rank 0 prints."""

    def __init__(self, cfg: SampleConfig, tokenizer) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer
        self.last_sample: str | None = None

    @rank_zero_only
    def sample(self, pl_module: L.LightningModule) -> str:
        return self.generate(pl_module)

    def generate(self, pl_module: L.LightningModule) -> str:
        model = pl_module.model
        model = getattr(model, "_orig_mod", model)  # generate eagerly even when training compiled
        prompt_ids = self.tokenizer.encode(self.cfg.prompt) or [self.tokenizer.eos_id]
        room = model.cfg.max_seq_len - len(prompt_ids)
        if room < 1:
            raise ValueError(f"sample.prompt is {len(prompt_ids)} tokens, no room under model.max_seq_len={model.cfg.max_seq_len}")
        ids = torch.tensor([prompt_ids], device=pl_module.device)
        g = torch.Generator(device=pl_module.device).manual_seed(0)
        out = generate(model, ids, self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                       top_k=self.cfg.top_k, generator=g, slide=True)  # past the context: a sliding window
        text = self.tokenizer.decode(out[0].tolist())
        self.last_sample = text
        return text

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self.cfg.every_n_steps
        if every and trainer.global_step % every == 0 and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self._emit(trainer, pl_module, f"sample at step {trainer.global_step}")

    def on_train_end(self, trainer, pl_module) -> None:
        self._emit(trainer, pl_module, f"sample after {trainer.global_step} steps")

    def _emit(self, trainer, pl_module, title: str) -> None:
        if self.cfg.max_new_tokens == 0:  # samples switched off
            return
        # a sharded forward is collective: every rank generates (the same tokens), rank 0 prints
        text = self.generate(pl_module) if shards_parameters(trainer) else self.sample(pl_module)
        if text is None or not trainer.is_global_zero:  # not rank 0
            return
        print(f"\n----- {title} -----\n{text}\n" + "-" * (12 + len(title)))
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text("sample", text, trainer.global_step)
            elif type(logger).__name__ == "WandbLogger":
                logger.log_text("samples", columns=["step", "text"], data=[[trainer.global_step, text]])
