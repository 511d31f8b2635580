"""``trainer.strategy=fsdp2 | tp | fsdp2_tp`` end to end on CPU processes (gloo): the same run as DDP (which equals
one process, tests/transformer/training/test_train.py), samples at the end without a hang, a normal single-file
checkpoint that loads and exports, and an exact resume."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ..training.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[3]


def _train(args, timeout=300):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _common(corpus, out, **extra):
    values = {"trainer.max_steps": 10, "trainer.val_check_interval": 10, "trainer.accelerator": "cpu",
              "trainer.devices": 2, "data.batch_size": 4, "sample.max_new_tokens": 0}
    values.update(extra)
    return tiny_overrides(corpus, out, **values)


def _history(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "csv" / "metrics.csv")


def test_fsdp2_trains_as_ddp_does_and_writes_a_normal_checkpoint(tmp_path, toy_corpus):
    from transformer.export import export_checkpoint
    from transformer.training.weights import load_model

    runs = {}
    for strategy in ("ddp", "fsdp2"):
        proc = _train(_common(toy_corpus, tmp_path / strategy, **{"trainer.strategy": strategy, "name": strategy,
                                                                   "sample.max_new_tokens": 8}))
        assert "sample after 10 steps" in proc.stdout  # every rank generated (a sharded forward is collective)
        [runs[strategy]] = (tmp_path / strategy).glob(f"{strategy}-*")
    ddp, fsdp2 = (_history(runs[s]) for s in ("ddp", "fsdp2"))
    assert ddp["train/loss"].dropna().tolist() == pytest.approx(fsdp2["train/loss"].dropna().tolist(), abs=1e-5)
    assert ddp["val/loss"].dropna().iloc[-1] == pytest.approx(fsdp2["val/loss"].dropna().iloc[-1], abs=1e-5)
    ckpt = runs["fsdp2"] / "checkpoints" / "last.ckpt"
    model, _ = load_model(ckpt)  # the unsharded weights, one file, as any other strategy writes
    reference, _ = load_model(runs["ddp"] / "checkpoints" / "last.ckpt")
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert (a - b).abs().max() < 1e-5, name
    assert (export_checkpoint(ckpt, tmp_path / "export") / "model.safetensors").is_file()


@pytest.mark.parametrize("strategy, devices, extra", [
    ("tp", 2, {"model.attention.type": "gqa", "model.attention.num_kv_heads": 2, "model.mlp": "swiglu"}),
    pytest.param("fsdp2_tp", 4, {"model.attention.type": "gqa", "model.attention.num_kv_heads": 2},
                 marks=pytest.mark.slow),
])
def test_tensor_parallel_trains_as_ddp_does(tmp_path, toy_corpus, strategy, devices, extra):
    """Gradient clipping on (the split gradients live on two meshes), samples at the end (a collective forward),
    the checkpoint in the usual layout, and the same losses as DDP over the same data-parallel width."""
    from transformer.training.weights import load_model

    runs = {}
    dp = devices // 2 if strategy == "fsdp2_tp" else 1
    for name, values in (("ddp", {"trainer.strategy": "ddp", "trainer.devices": dp}),
                         (strategy, {"trainer.strategy": strategy, "trainer.devices": devices,
                                     **({"trainer.tensor_parallel_size": 2} if strategy == "fsdp2_tp" else {})})):
        args = _common(toy_corpus, tmp_path / name, **{**extra, **values, "name": name, "optim.grad_clip": 0.05,
                                                       "sample.max_new_tokens": 6 if name == strategy else 0})
        if dp == 1 and name == "ddp":
            args = [a.replace("trainer.strategy=ddp", "trainer.strategy=auto") for a in args]
        proc = _train(args, timeout=600)
        [runs[name]] = (tmp_path / name).glob(f"{name}-*")
    assert "sample after 10 steps" in proc.stdout
    ref, split = _history(runs["ddp"]), _history(runs[strategy])
    assert ref["train/loss"].dropna().tolist() == pytest.approx(split["train/loss"].dropna().tolist(), abs=1e-5)
    assert ref["val/loss"].dropna().iloc[-1] == pytest.approx(split["val/loss"].dropna().iloc[-1], abs=1e-5)
    assert ref["val/tokens"].dropna().iloc[-1] == split["val/tokens"].dropna().iloc[-1]
    model, _ = load_model(runs[strategy] / "checkpoints" / "last.ckpt")
    reference, _ = load_model(runs["ddp"] / "checkpoints" / "last.ckpt")
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert (a - b).abs().max() < 1e-5, name


@pytest.mark.slow
def test_tensor_parallel_resume_is_exact(tmp_path, toy_corpus):
    common = _common(toy_corpus, tmp_path, **{"trainer.strategy": "tp", "optim.decay_steps": 20, "optim.grad_clip": 0.05,
                                              "model.attention.type": "gqa", "model.attention.num_kv_heads": 2})
    _train(common + ["trainer.max_steps=20", "name=straight"])
    _train(common + ["trainer.max_steps=10", "name=resumed"])
    _train(common + ["trainer.max_steps=20", "name=resumed", "resume_from=auto"])
    [straight] = tmp_path.glob("straight-*")
    [resumed] = tmp_path.glob("resumed-*")
    a, b = _history(straight), _history(resumed)
    assert a["train/loss"].dropna().tolist() == b["train/loss"].dropna().tolist()
    assert a["val/loss"].dropna().tolist() == b["val/loss"].dropna().tolist()


@pytest.mark.slow
def test_fsdp2_resume_is_exact(tmp_path, toy_corpus):
    common = _common(toy_corpus, tmp_path, **{"trainer.strategy": "fsdp2", "optim.decay_steps": 20})
    _train(common + ["trainer.max_steps=20", "name=straight"])
    _train(common + ["trainer.max_steps=10", "name=resumed"])
    _train(common + ["trainer.max_steps=20", "name=resumed", "resume_from=auto"])
    [straight] = tmp_path.glob("straight-*")
    [resumed] = tmp_path.glob("resumed-*")
    a, b = _history(straight), _history(resumed)
    assert a["train/loss"].dropna().tolist() == b["train/loss"].dropna().tolist()
    assert a["val/loss"].dropna().tolist() == b["val/loss"].dropna().tolist()
