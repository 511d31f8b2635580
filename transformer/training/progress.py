"""Training progress that a person at a terminal and a log file (``nohup``, SLURM) can both read.

On a terminal: one ``rich`` bar counting optimizer steps ``step/max_steps`` (a resumed run starts where
it left off), with the latest loss, tokens/s and learning rate, and one printed line per validation.
When stdout is not a terminal: no bar and no escape codes, a plain line every ``every`` steps instead::

    step 200/500 (40%) | loss 1.8123 | 41.2k tok/s | lr 8.1e-04 | elapsed 0:00:52 | eta 0:01:18
    validation at step 200: val/loss 1.8544 | val/ppl 6.388

Throughput is measured here over the steps since the previous line, validation time excluded: tokens/s
where the Lightning module says how many tokens a batch holds (``batch_tokens(batch)``), else steps/s.
Only rank 0 prints.
"""

from __future__ import annotations

import sys
import time

import lightning as L

from ..data.datamodule import data_parallel_rank_world
from .run_status import clock

# Metrics shown on a progress line, in this order, with how to print them; others are left to the loggers.
_TRAIN_FIELDS = (("train/loss", "loss", "{:.4f}"), ("train/mfu", "mfu", "{:.1%}"))


def progress_interval(max_steps: int, log_every: int, every: int | None) -> int:
    """Steps between plain progress lines: ``every`` if set, else about 50 lines per run; always a
    multiple of ``log_every`` so the loss shown is the one just logged."""
    if every is None:
        every = max(1, round(max_steps / 50))
    return max(log_every, -(-every // log_every) * log_every)


def _rate(value: float) -> str:
    return f"{value / 1e3:.1f}k tok/s" if value >= 1e3 else f"{value:.0f} tok/s"


def _metric(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class ProgressReporter(L.Callback):
    """The run's progress display (see the module docstring). ``tty`` defaults to ``sys.stdout.isatty()``."""

    def __init__(self, every: int, *, refresh_every: int = 1, tty: bool | None = None) -> None:
        self.every = every
        self.refresh_every = refresh_every  # the bar's numbers change only on logging steps: reading them (a device
        # sync for a GPU tensor) on every step would slow the training loop
        self.tty = sys.stdout.isatty() if tty is None else tty
        self._bar = self._task = None
        self._start_time = 0.0
        self._start_step = 0
        self._window = [0.0, 0, 0]  # seconds of training, steps, tokens since the last line
        self._mark = 0.0  # when the current stretch of training began

    # ------------------------------------------------------------------ formatting
    def train_fields(self, trainer) -> list[str]:
        metrics = trainer.callback_metrics
        fields = []
        for key, label, fmt in _TRAIN_FIELDS:
            value = _metric(metrics.get(key))
            if value is not None:
                fields.append(f"{label} {fmt.format(value)}")
        seconds, steps, tokens = self._window
        if seconds > 0 and steps:
            fields.append(_rate(tokens / seconds) if tokens else f"{steps / seconds:.2f} steps/s")
        if trainer.optimizers:
            fields.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.1e}")
        return fields

    def line(self, trainer) -> str:
        step, total = trainer.global_step, trainer.max_steps
        elapsed = time.perf_counter() - self._start_time
        done = step - self._start_step
        eta = elapsed / done * (total - step) if done > 0 else None
        head = f"step {step}/{total} ({step / max(total, 1):.0%})"
        tail = [f"elapsed {clock(elapsed)}"] + ([f"eta {clock(eta)}"] if eta is not None else [])
        return " | ".join([head, *self.train_fields(trainer), *tail])

    @staticmethod
    def validation_line(trainer) -> str | None:
        shown = [(k, _metric(v)) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith(("val/", "validation/"))]
        shown = [f"{k} {v:#.4g}" for k, v in shown if v is not None and k != "val/tokens"]
        return f"validation at step {trainer.global_step}: " + " | ".join(shown) if shown else None

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer, pl_module) -> None:
        self._start_time, self._start_step = time.perf_counter(), trainer.global_step
        self._mark = self._start_time
        if not trainer.is_global_zero:
            return
        if self.tty:
            try:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            except ImportError:  # no rich: plain lines on the terminal too
                self.tty = False
                return
            self._bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self._bar.start()
            self._task = self._bar.add_task("train", total=trainer.max_steps, completed=trainer.global_step, info="")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        counter = getattr(pl_module, "batch_tokens", None)
        if counter is not None:
            self._window[2] += counter(batch) * data_parallel_rank_world(trainer)[1]
        if not trainer.is_global_zero or (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        now = time.perf_counter()
        self._window[0] += now - self._mark
        self._window[1] += 1
        self._mark = now
        step = trainer.global_step
        if self._bar is not None:
            if step % self.refresh_every == 0 or step == trainer.max_steps:
                self._bar.update(self._task, completed=step, info=" | ".join(self.train_fields(trainer)))
                self._window = [0.0, 0, 0]
            else:
                self._bar.update(self._task, completed=step)
        elif step % self.every == 0 or step == trainer.max_steps:
            print(self.line(trainer), flush=True)
            self._window = [0.0, 0, 0]

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # not the best checkpoint's re-evaluation after fit
            return
        self._mark = time.perf_counter()  # (validation runs after a step's batch end) its time is not training time
        if not trainer.is_global_zero:
            return
        text = self.validation_line(trainer)
        if text is None:
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, flush=True)

    def _stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()
