"""Keep a run's output to what the user needs: silence the libraries' messages that are noise or false here.

Lightning's info lines (``GPU available: False``, ``TPU available``, the ``litlogger`` tip,
``Trainer(limit_val_batches=1.0) ... 100% of the batches`` — the data module applies
``trainer.limit_val_batches`` itself, so that line contradicts the config — ``Trainer.fit stopped``) are
replaced by the toolkit's own summary; the warnings below are wrong for this toolkit (its CSV logger keeps
the history on resume, a resumed run's checkpoint directory is expected to hold checkpoints) or are
deprecations inside the libraries that a user can do nothing about. Warnings that matter are untouched.
"""

from __future__ import annotations

import logging
import warnings

KNOWN_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",        # lightning's pytree helper on torch >= 2.10
    r"Checkpoint directory .* exists and is not empty",          # a resumed run's own checkpoints
    r".*Previous log files in this directory will be deleted",   # false: AppendingCSVLogger keeps them
    r".*`weights_only` was not set",
    r"The number of training batches .* is smaller than the logging interval",  # step-based runs log across epochs
    # false: the LM's validation figures are sums over every process already, its timings rank 0's own
    r"It is recommended to use `self.log\('(val/(loss|ppl|tokens)|time/\w+)', \.\.\., sync_dist=True\)`",
)


def silence_known_noise() -> None:
    """Idempotent; called when a trainer is built."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for pattern in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    try:  # unlabelled "Filter: 100%" / "Map: ..." bars: the toolkit prints its own data summary
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:
        pass
