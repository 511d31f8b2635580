"""Training regression models with Lightning; metrics in original units from accumulated sums.

The loss (MSE / Huber / MAE) is computed on scaled targets. Metrics are computed after inverting the
target scaling, from sums accumulated over the whole split (``torchmetrics.SumMetric``, reduced
across DDP ranks as sums): RMSE, MAE, R² (``1 - SSE / SST`` with ``SST = Σy² - (Σy)²/n``) and MAPE
over targets that are not zero. They equal a direct numpy computation over the split, never a mean
of batch values.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import SumMetric

from transformer.training import checkpoint_keys as K
from transformer.training.base_module import TrainingModule
from transformer.training.config import OptimConfig

from .config import HeadConfig
from .data import Preprocessing

SUMS = ("sse", "sae", "sum_y", "sum_y2", "n", "sape", "n_pct")


class RegressionMetrics(torch.nn.Module):
    """Sums over a split -> RMSE, MAE, R², MAPE (flattened over targets and horizon steps)."""

    def __init__(self) -> None:
        super().__init__()
        # fp64: sums of squares need it; nan_strategy="disable": a NaN must reach the non-finite check, not vanish
        self.sums = torch.nn.ModuleDict({name: SumMetric(nan_strategy="disable").set_dtype(torch.float64) for name in SUMS})

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = pred.double().reshape(-1), target.double().reshape(-1)
        err = pred - target
        nonzero = target.abs() > 1e-8
        values = {"sse": (err**2).sum(), "sae": err.abs().sum(), "sum_y": target.sum(), "sum_y2": (target**2).sum(),
                  "n": torch.tensor(float(target.numel()), dtype=torch.float64),
                  "sape": (err[nonzero].abs() / target[nonzero].abs()).sum(),
                  "n_pct": nonzero.sum().double()}
        for name, value in values.items():
            self.sums[name].update(value)

    def compute(self) -> dict[str, float]:
        s = {name: float(metric.compute()) for name, metric in self.sums.items()}
        n = max(s["n"], 1.0)
        sst = s["sum_y2"] - s["sum_y"] ** 2 / n
        out = {"rmse": math.sqrt(s["sse"] / n), "mae": s["sae"] / n, "r2": 1.0 - s["sse"] / sst if sst > 0 else float("nan")}
        if s["n_pct"]:
            out["mape"] = 100.0 * s["sape"] / s["n_pct"]
        return out

    def reset(self) -> None:
        for metric in self.sums.values():
            metric.reset()


def metrics_numpy(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """The same metrics computed directly (for tests, baselines and reports)."""
    err = (pred - target).reshape(-1)
    y = target.reshape(-1)
    nz = np.abs(y) > 1e-8
    out = {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))),
           "r2": float(1 - np.sum(err**2) / np.sum((y - y.mean()) ** 2))}
    if nz.any():
        out["mape"] = float(100 * np.mean(np.abs(err[nz]) / np.abs(y[nz])))
    return out


class RegressionModule(TrainingModule):
    def __init__(self, model: torch.nn.Module, pre: Preprocessing, head: HeadConfig, optim: OptimConfig, *, max_steps: int,
                 horizon_steps: int = 1, compile: bool = False, moe_aux_loss_weight: float = 0.0) -> None:
        super().__init__(model, optim, max_steps=max_steps, compile=compile)
        self.pre, self.head_cfg, self.horizon_steps = pre, head, horizon_steps
        self.moe_aux_loss_weight = moe_aux_loss_weight
        self.val_metrics, self.test_metrics = RegressionMetrics(), RegressionMetrics()

    def forward(self, x, cats=None, padding_mask=None):
        return self.model(x, cats, padding_mask)

    def _loss(self, pred, y):
        if self.head_cfg.loss == "huber":
            return F.huber_loss(pred, y, delta=self.head_cfg.huber_delta)
        if self.head_cfg.loss == "mae":
            return F.l1_loss(pred, y)
        return F.mse_loss(pred, y)

    def original_units(self, scaled: torch.Tensor) -> torch.Tensor:
        """``[b, H * T]`` scaled -> original units (the scaler works per target column)."""
        T = len(self.pre.targets)
        return self.pre.target_scaler.inverse(scaled.reshape(-1, self.horizon_steps, T).double()).reshape(scaled.shape[0], -1)

    def training_step(self, batch, batch_idx):
        x, cats, y, *rows = batch  # rows: the training rows' indices, for a model that retrieves them
        pred, aux = self.model(x, cats, return_aux=True, **({"rows": rows[0]} if rows else {}))
        loss = self._loss(pred, y)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        if aux is not None:  # MoE load-balancing loss, weighted as in language-model runs
            self.log("train/aux_loss", aux.detach(), on_step=True, on_epoch=False)
            loss = loss + self.moe_aux_loss_weight * aux
        self.check_finite(loss, "training loss")
        return loss

    def _evaluate(self, batch, metrics: RegressionMetrics, prefix: str):
        x, cats, y = batch
        pred = self.model(x, cats)
        self.log(f"{prefix}/loss", self._loss(pred, y), on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=x.shape[0])
        metrics.update(self.original_units(pred), self.original_units(y))

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.test_metrics, "test")

    def _log_metrics(self, metrics: RegressionMetrics, prefix: str) -> None:
        values = metrics.compute()
        if prefix == "val":  # before ModelCheckpoint (a callback) can save this step
            self.check_finite(torch.tensor([values["rmse"], values["mae"]]), "validation error (RMSE / MAE)")
        for name, value in values.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == "rmse", sync_dist=False)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def predict_step(self, batch, batch_idx):
        x, cats, _ = batch
        return self.original_units(self.model(x, cats))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[K.PREPROCESSING] = self.pre.to_dict()
