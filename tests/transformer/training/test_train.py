"""Full training runs through Lightning on a tiny config: outputs, learning, precision, loggers, DDP."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from transformer.cli import run
from transformer.training.config import load_config

from .conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[3]


def _metrics(run_dir):
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_train_run_writes_outputs_and_learns(tmp_path, toy_corpus):
    cfg = load_config(None, tiny_overrides(toy_corpus, tmp_path / "runs", **{"model.attention.type": "gqa",
                                                                             "model.attention.num_kv_heads": 2}))
    result = run(cfg)
    rd = result.run_dir
    assert rd.parent == tmp_path / "runs" and result.steps == 40
    saved = load_config(rd / "config.yaml")  # the resolved config round-trips
    assert saved.model.attention.type == "gqa" and saved.model.vocab_size == cfg.model.vocab_size
    assert (rd / "tokenizer.json").is_file()
    ckpt = torch.load(rd / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["run_config"]["model"]["attention"]["num_kv_heads"] == 2 and "tokenizer" in ckpt
    rows = _metrics(rd)
    train = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val) == 2 and val[-1] < 0.6 * train[0], (train[0], val)  # a repeated sentence is learnable
    assert abs(result.val_loss - val[-1]) < 1e-6
    assert any(r.get("train/tokens_per_sec") for r in rows) and any(v for r in rows for k, v in r.items() if k.startswith("lr-AdamW"))
    hparams = yaml.safe_load((rd / "csv" / "hparams.yaml").read_text())
    assert hparams["model.attention.type"] == "gqa" and hparams["model.attention.num_kv_heads"] == 2
    assert hparams["model.kv_cache_bytes_per_token"] == 2 * 2 * 8 * 4 * 2  # layers * (k,v) * n_kv * d * fp32
    assert result.sample and len(result.sample) > 0


def test_runs_never_share_a_directory(tmp_path, toy_corpus):
    cfg = load_config(None, tiny_overrides(toy_corpus, tmp_path / "runs", **{"trainer.max_steps": 2,
                                                                             "trainer.val_check_interval": 2}))
    first, second = run(cfg), run(cfg)
    assert first.run_dir != second.run_dir and (first.run_dir / "config.yaml").is_file()


def test_bf16_mixed_on_cpu(tmp_path, toy_corpus):
    cfg = load_config(None, tiny_overrides(toy_corpus, tmp_path / "runs", **{"trainer.precision": "bf16-mixed",
                                                                             "trainer.max_steps": 6, "trainer.val_check_interval": 3}))
    result = run(cfg)
    assert result.steps == 6 and torch.isfinite(torch.tensor(result.val_loss))


def test_wandb_offline_writes_run_dir_without_network(tmp_path, toy_corpus, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(None, tiny_overrides(toy_corpus, tmp_path / "runs", **{"logger.wandb.enabled": "true",
                                                                             "trainer.max_steps": 4, "trainer.val_check_interval": 2}))
    result = run(cfg)
    offline_runs = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    run_id = (result.run_dir / "wandb_id.txt").read_text().strip()
    assert offline_runs[0].name.endswith(run_id)


def test_non_finite_loss_stops_with_the_step(tmp_path):
    from transformer.training.config import OptimConfig
    from transformer.training.lm_module import LanguageModelModule, NonFiniteLossError

    cfg = load_config(None, [])
    module = LanguageModelModule(cfg.model, OptimConfig(), max_steps=10)
    with torch.no_grad():
        module.model.head.weight.fill_(float("nan"))
    x = torch.randint(0, cfg.model.vocab_size, (2, 8))
    with pytest.raises(NonFiniteLossError, match="non-finite training loss .* at step 0"):
        module.training_step((x, x), 0)


def _train_py(args, env_extra=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"final validation loss: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout[-2000:]
    return float(match.group(1)), proc


def test_ddp_two_cpu_processes_match_one_process(tmp_path, toy_corpus):
    """2 processes x batch 4 == 1 process x batch 8: same examples, averaged gradients, summed metrics."""
    common = tiny_overrides(toy_corpus, tmp_path / "runs", **{"trainer.max_steps": 10, "trainer.val_check_interval": 10,
                                                               "trainer.accelerator": "cpu"})
    single, _ = _train_py(common + ["data.batch_size=8", "trainer.devices=1"])
    ddp, proc = _train_py(common + ["data.batch_size=4", "trainer.devices=2", "trainer.strategy=ddp"])
    assert "world_size: 2" in proc.stdout + proc.stderr or "GLOBAL_RANK: 1" in proc.stdout + proc.stderr
    assert abs(ddp - single) < 2e-4, (single, ddp)


def test_cli_reports_bad_data_cleanly(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "data.source=files", f"data.path={tmp_path}/nope.txt",
                           f"out_dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 1 and "nope.txt' does not exist" in proc.stderr and "Traceback" not in proc.stderr
