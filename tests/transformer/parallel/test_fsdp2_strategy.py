"""``trainer.strategy=fsdp2 | tp | fsdp2_tp`` end to end on CPU processes (gloo): the same run as DDP (which equals
one process, tests/transformer/training/test_train.py), samples at the end without a hang, a normal single-file
checkpoint that loads and exports, and an exact resume."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
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
        # checkpoints at steps 4 and 8: what follows a save must still agree (the optimizer's live state untouched)
        args = _common(toy_corpus, tmp_path / name, **{**extra, **values, "name": name, "optim.grad_clip": 0.05,
                                                       "trainer.val_check_interval": 4, "trainer.log_every_n_steps": 1,
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


@pytest.mark.parametrize("strategy, devices, more", [
    ("fsdp2", 2, {}),
    pytest.param("fsdp2_tp", 4, {"trainer.tensor_parallel_size": 2}, marks=pytest.mark.slow),
])
def test_context_parallel_trains_as_one_process(tmp_path, toy_corpus, strategy, devices, more):
    """``trainer.context_parallel_size=2`` (under fsdp2 on 2 processes; under fsdp2_tp with 2-way tensor parallelism
    on 4): each process holds half of every sequence (zig-zag), attention by ring; the logged losses (every step,
    checkpoints at 4 and 8), validation loss and tokens and the final weights equal one process on the whole
    sequences; samples at the end run on whole sequences."""
    from transformer.training.weights import load_model

    runs = {}
    extra = {"model.attention.type": "gqa", "model.attention.num_kv_heads": 2, "trainer.val_check_interval": 4,
             "trainer.log_every_n_steps": 1}
    for name, values in (("one", {"trainer.devices": 1}),
                         ("cp", {"trainer.strategy": strategy, "trainer.context_parallel_size": 2,
                                 "trainer.devices": devices, "sample.max_new_tokens": 6, **more})):
        proc = _train(_common(toy_corpus, tmp_path / name, **{**extra, **values, "name": name}))
        [runs[name]] = (tmp_path / name).glob(f"{name}-*")
    assert "sample after 10 steps" in proc.stdout and "every sequence split over 2 processes" in proc.stdout
    ref, cp = _history(runs["one"]), _history(runs["cp"])
    assert ref["train/loss"].dropna().tolist() == pytest.approx(cp["train/loss"].dropna().tolist(), abs=1e-5)
    assert ref["val/loss"].dropna().tolist() == pytest.approx(cp["val/loss"].dropna().tolist(), abs=1e-5)
    assert ref["val/tokens"].dropna().iloc[-1] == cp["val/tokens"].dropna().iloc[-1]
    model, _ = load_model(runs["cp"] / "checkpoints" / "last.ckpt")
    reference, _ = load_model(runs["one"] / "checkpoints" / "last.ckpt")
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert (a - b).abs().max() < 1e-5, name


@pytest.mark.slow
def test_compiled_tensor_parallel_trains_as_eager(tmp_path, toy_corpus):
    """``trainer.compile=true`` over the DTensor-split blocks: the same validation losses as eager tp."""
    common = _common(toy_corpus, tmp_path, **{"trainer.strategy": "tp", "trainer.max_steps": 6, "trainer.val_check_interval": 3,
                                              "model.attention.type": "gqa", "model.attention.num_kv_heads": 2})
    _train(common + ["trainer.compile=true", "name=compiled"], timeout=900)
    _train(common + ["name=eager"])
    [compiled] = tmp_path.glob("compiled-*")
    [eager] = tmp_path.glob("eager-*")
    assert _history(compiled)["val/loss"].dropna().tolist() == pytest.approx(
        _history(eager)["val/loss"].dropna().tolist(), abs=1e-5)


def test_a_block_size_context_parallelism_cannot_split_is_one_line(tmp_path, toy_corpus):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *_common(
        toy_corpus, tmp_path, **{"trainer.strategy": "fsdp2", "trainer.context_parallel_size": 2, "data.block_size": 30,
                                 "model.max_seq_len": 30})],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode != 0
    assert "data.block_size=30 must be divisible by 2 x trainer.context_parallel_size=2" in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and not list(tmp_path.glob("*-*/checkpoints/*"))


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    {"trainer.strategy": "fsdp2"},
    {"trainer.strategy": "tp", "optim.grad_clip": 0.05, "model.attention.type": "gqa", "model.attention.num_kv_heads": 2},
], ids=["fsdp2", "tp"])
def test_resume_is_exact(tmp_path, toy_corpus, extra):
    common = _common(toy_corpus, tmp_path, **{"optim.decay_steps": 20, **extra})
    _train(common + ["trainer.max_steps=20", "name=straight"])
    _train(common + ["trainer.max_steps=10", "name=resumed"])
    _train(common + ["trainer.max_steps=20", "name=resumed", "resume_from=auto"])
    [straight] = tmp_path.glob("straight-*")
    [resumed] = tmp_path.glob("resumed-*")
    a, b = _history(straight), _history(resumed)
    assert a["train/loss"].dropna().tolist() == b["train/loss"].dropna().tolist()
    assert a["val/loss"].dropna().tolist() == b["val/loss"].dropna().tolist()


def test_sharded_checkpoints_are_directories_that_load_export_and_refuse_ddp(tmp_path, toy_corpus):
    """``checkpoint.sharded=true``: each checkpoint is a torch.distributed.checkpoint directory (no leftovers from
    its temporary name); its consolidated weights equal the same run's gathered file; export reads it; a DDP
    resume is refused with a one-line error."""
    from transformer.export import export_checkpoint
    from transformer.training.checkpoint_io import is_sharded_checkpoint
    from transformer.training.weights import load_model

    runs = {}
    for name, sharded in (("gathered", "false"), ("sharded", "true")):
        _train(_common(toy_corpus, tmp_path, **{"trainer.strategy": "tp", "name": name, "checkpoint.sharded": sharded,
                                                "model.attention.type": "gqa", "model.attention.num_kv_heads": 2}))
        [runs[name]] = tmp_path.glob(f"{name}-*")
    last = runs["sharded"] / "checkpoints" / "last.ckpt"
    assert is_sharded_checkpoint(last) and len(list(last.glob("*.distcp"))) == 2  # one shard file per rank
    assert not [p.name for p in (runs["sharded"] / "checkpoints").iterdir() if p.name.startswith(".")]
    model, _ = load_model(last)
    reference, _ = load_model(runs["gathered"] / "checkpoints" / "last.ckpt")
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert (export_checkpoint(last, tmp_path / "export") / "model.safetensors").is_file()
    from transformer.training.checkpoint_io import CheckpointError
    from transformer.training.trainer import AtomicCheckpointIO

    with pytest.raises(CheckpointError, match="is a sharded checkpoint .* resume it with trainer.strategy=fsdp2"):
        AtomicCheckpointIO().load_checkpoint(last)  # what ddp / fsdp / one process resume through


@pytest.mark.slow
def test_sharded_resume_is_exact_and_reshards(tmp_path, toy_corpus):
    """Sharded save -> resume is bitwise exact (tp on 2 processes); the same checkpoint resumes onto another
    number of processes and layout (fsdp2 on one process: the shards gathered back into whole tensors, the same
    global batch) and continues the same run within 1e-5."""
    common = _common(toy_corpus, tmp_path, **{"optim.decay_steps": 20, "checkpoint.sharded": "true",
                                              "model.attention.type": "gqa", "model.attention.num_kv_heads": 2})
    _train(common + ["trainer.strategy=tp", "trainer.max_steps=20", "name=straight"])
    _train(common + ["trainer.strategy=tp", "trainer.max_steps=10", "name=resumed"])
    [resumed] = tmp_path.glob("resumed-*")
    import shutil

    shutil.copytree(resumed, tmp_path / "other" / resumed.name.replace("resumed", "other"))
    _train(common + ["trainer.strategy=tp", "trainer.max_steps=20", "name=resumed", "resume_from=auto"])
    _train(common + ["trainer.strategy=fsdp2", "trainer.devices=1", "trainer.max_steps=20", "name=other", "resume_from=auto",
                     f"out_dir={tmp_path / 'other'}"])
    [straight] = tmp_path.glob("straight-*")
    [other] = (tmp_path / "other").glob("other-*")
    a, b, c = _history(straight), _history(resumed), _history(other)
    assert a["train/loss"].dropna().tolist() == b["train/loss"].dropna().tolist()
    assert a["val/loss"].dropna().tolist() == b["val/loss"].dropna().tolist()
    assert a["train/loss"].dropna().tolist() == pytest.approx(c["train/loss"].dropna().tolist(), abs=1e-5)
