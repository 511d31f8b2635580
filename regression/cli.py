"""Running a regression config: ``python train.py --config configs/regression/<name>.yaml [key=value ...]``.

The pipeline is the toolkit's one run skeleton (``transformer.training.run``) with the regression task
(``regression.task``); this module keeps the original import path ``regression.cli.run``.
"""

from __future__ import annotations

from .config import RegressionRunConfig
from .task import RegressionResult, RegressionTask


def run(cfg: RegressionRunConfig) -> RegressionResult | None:
    from transformer.training.run import run as run_skeleton

    return run_skeleton(cfg, RegressionTask())


__all__ = ["run", "RegressionResult"]
