"""Training regression models with Lightning; metrics in original units from accumulated sums.

The loss (MSE / Huber / MAE) is computed on scaled targets. Metrics are computed after inverting the
target scaling, from sums accumulated over the whole split (``torchmetrics.SumMetric``, reduced
across DDP ranks as sums): RMSE, MAE, R² (``1 - SSE / SST`` with ``SST = Σy² - (Σy)²/n``) and MAPE
over targets that are not zero. They equal a direct numpy computation over the split, never a mean
of batch values.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import SumMetric

from transformer.training.checkpoint_io import rng_state, set_rng_state
from transformer.training.config import OptimConfig
from transformer.training.optim import build_optimizer, build_scheduler

from .config import HeadConfig
from .data import Preprocessing

SUMS = ("sse", "sae", "sum_y", "sum_y2", "n", "sape", "n_pct")


class RegressionMetrics(torch.nn.Module):
    """Sums over a split -> RMSE, MAE, R², MAPE (flattened over targets and horizon steps)."""

    def __init__(self) -> None:
        super().__init__()
        self.sums = torch.nn.ModuleDict({name: SumMetric().set_dtype(torch.float64) for name in SUMS})  # sums of squares need fp64

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


class RegressionModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, pre: Preprocessing, head: HeadConfig, optim: OptimConfig, *, max_steps: int,
                 horizon_steps: int = 1) -> None:
        super().__init__()
        self.model, self.pre, self.head_cfg, self.optim_cfg = model, pre, head, optim
        self.max_steps, self.horizon_steps = max_steps, horizon_steps
        self.val_metrics, self.test_metrics = RegressionMetrics(), RegressionMetrics()
        self.checkpoint_extras: dict = {}

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
        x, cats, y = batch
        loss = self._loss(self.model(x, cats), y)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite training loss at step {self.global_step}; check the data scaling and optim.lr")
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
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
        for name, value in metrics.compute().items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == "rmse", sync_dist=False)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def predict_step(self, batch, batch_idx):
        x, cats, _ = batch
        return self.original_units(self.model(x, cats))

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optim_cfg, str(self._trainer.precision) if self._trainer else "32-true")
        scheduler = build_scheduler(optimizer, self.optim_cfg, self.optim_cfg.decay_steps or self.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint.update(self.checkpoint_extras)
        checkpoint["preprocessing"] = self.pre.to_dict()
        checkpoint["rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng" in checkpoint:
            set_rng_state(checkpoint["rng"])


def linear_baseline(train, evaluate, pre: Preprocessing, horizon_steps: int) -> dict[str, float]:
    """Least squares (with intercept) on the flattened scaled inputs of each example; metrics in original units."""

    def design(ds):
        xs, ys = [], []
        for i in range(len(ds)):
            x, cats, y = ds[i]
            onehot = [F.one_hot(cats[..., j], card).float().reshape(-1) for j, card in enumerate(pre.cardinalities)]
            xs.append(torch.cat([x.reshape(-1), *onehot, torch.ones(1)]).double())
            ys.append(y.double())
        return torch.stack(xs), torch.stack(ys)

    a, b = design(train)
    solution = torch.linalg.lstsq(a, b, driver="gelsd").solution
    a_eval, b_eval = design(evaluate)
    T = len(pre.targets)
    inverse = lambda t: pre.target_scaler.inverse(t.reshape(-1, horizon_steps, T).numpy())
    return metrics_numpy(inverse(a_eval @ solution), inverse(b_eval))
