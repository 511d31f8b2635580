"""Probes and lm-eval tasks during training (``eval.tasks``, ``eval.every_n_steps``), logged as
``eval/<task>/<metric>`` to every logger (CSV, TensorBoard, W&B).

Distributed-correct: under DDP every process scores its share of the documents and lm-eval gathers each
document's metric to rank 0 (the accuracy is a mean over all documents, not a mean of per-rank means); the
extrapolation losses are sums of token losses and token counts added over the ranks before one division.
The results are broadcast, so every rank logs (and returns) the same figures.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

from .config import EvalConfig


def eval_plan(cfg: EvalConfig, model_cfg, tokenizer):
    """The :class:`~transformer.evaluation.runner.TaskPlan` of ``eval.tasks`` for a model and tokenizer: unknown
    names, a missing data file, a probe longer than the context or too short for its task are errors before
    training starts (one document of each probe is generated to find out)."""
    from ..evaluation.lm import context_limit
    from ..evaluation.runner import plan_tasks, usable_probes

    try:
        plan = plan_tasks(list(cfg.tasks), max_seq_len=model_cfg.max_seq_len, context_limit=context_limit(model_cfg),
                          include_path=cfg.include_path, probe_lengths=list(cfg.probe_lengths) if cfg.probe_lengths else None)
        usable_probes(plan, tokenizer, docs=1, seed=cfg.seed)
        return plan
    except (ValueError, FileNotFoundError, ImportError) as err:
        raise type(err)(f"eval.tasks: {err}") from None


class EvalCallback(L.Callback):
    """Runs the plan every ``every_n_steps`` optimizer steps (0: at the end of training only) and at the end."""

    def __init__(self, cfg: EvalConfig, tokenizer, plan) -> None:
        self.cfg, self.tokenizer, self.plan = cfg, tokenizer, plan
        self.last_results: dict | None = None
        self._done_at: int | None = None
        self._work: Path | None = None
        self._prepared = None  # the probe files and the task index, made once for every evaluation

    def on_fit_start(self, trainer, pl_module) -> None:
        from ..evaluation.runner import prepare_lm_eval
        from .callbacks import shards_parameters

        if shards_parameters(trainer):
            kind = getattr(trainer.strategy, "kind", type(trainer.strategy).__name__)
            raise ValueError(f"eval.tasks during training needs the whole model on each process; trainer.strategy runs "
                             f"{kind}: evaluate the checkpoints afterwards with python -m transformer.evaluate")
        if self.plan.extrapolation and not hasattr(getattr(trainer.datamodule, "corpus", None), "tokens"):
            raise ValueError("eval.tasks: length_extrapolation reads the validation text as one token stream; this run's "
                             "data (instruction / chat examples) has none: leave it out of eval.tasks")
        self._work = Path(tempfile.mkdtemp(prefix="tt-eval-"))  # this process's generated probe tasks
        if self.plan.probes or self.plan.lm_eval:
            self._prepared = prepare_lm_eval(self.plan, self.tokenizer, probe_docs=self.cfg.probe_docs, seed=self.cfg.seed,
                                             work_dir=self._work)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self.cfg.every_n_steps
        if every and trainer.global_step % every == 0 and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._done_at != trainer.global_step:
            self.evaluate(trainer, pl_module)
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)

    def evaluate(self, trainer, pl_module) -> dict:
        from ..evaluation.extrapolation import extrapolation_sums, finish
        from ..evaluation.lm import ToolkitLM
        from ..evaluation.probes import EXTRAPOLATION
        from ..evaluation.runner import run_prepared

        model = pl_module.model
        model = getattr(model, "_orig_mod", model)  # eagerly, even when training compiled
        rank, world = trainer.global_rank, trainer.world_size
        lm = ToolkitLM(model, self.tokenizer, batch_size=self.cfg.batch_size, seed=self.cfg.seed, rank=rank, world_size=world)
        results = run_prepared(lm, self._prepared, seed=self.cfg.seed, limit=self.cfg.limit)
        results = trainer.strategy.broadcast(results, src=0) or {}
        if self.plan.extrapolation:
            sums = extrapolation_sums(model, trainer.datamodule.corpus.tokens("val"), factors=tuple(self.cfg.factors),
                                      blocks=self.cfg.blocks, batch_size=max(1, self.cfg.batch_size // max(self.cfg.factors)),
                                      rank=rank, world_size=world)
            for key, (total, count) in sums.items():
                pair = trainer.strategy.reduce(torch.tensor([total, count], dtype=torch.float64, device=pl_module.device),
                                               reduce_op="sum")
                sums[key] = pair.tolist()
            results[EXTRAPOLATION] = finish(sums)
        metrics = {f"eval/{task}/{metric}": value for task, values in results.items() for metric, value in values.items()}
        self.last_results, self._done_at = results, trainer.global_step
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                logger.save()
            shown = ", ".join(f"{k.removeprefix('eval/')} {v:.4f}" for k, v in metrics.items() if not k.endswith("_stderr"))
            print(f"eval at step {trainer.global_step}: {shown}", file=sys.stderr, flush=True)
        return results
