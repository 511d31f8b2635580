"""Faults a long run meets: NaN steps, a second writer, a damaged token cache, changed data on resume,
leftovers of killed processes, a full disk. Each must end with a true one-line message and no
checkpoint, log or run directory of the user's damaged."""

from __future__ import annotations

import csv
import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from transformer.cli import main
from transformer.data.config import DataConfig
from transformer.data.token_store import cache_problem, prepare_corpus
from transformer.training.base_module import NonFiniteError
from transformer.training.checkpoint_io import CheckpointError, read_checkpoint
from transformer.training.config import load_config
from transformer.training.lm_task import LanguageModelTask
from transformer.training.run import run as run_with_task
from transformer.training.tasks import dispatch as run
from transformer.training.run_dir import RunDirError, RunLock, make_new_dir

from .conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[3]


def _cfg(corpus, out, **extra):
    return load_config(None, tiny_overrides(corpus, out, **{"sample.max_new_tokens": 0, **extra}))


def _all_finite(path: Path) -> bool:
    state = read_checkpoint(path)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------------------------------- NaN
class PoisonAt(__import__("lightning").Callback):
    """Turns one weight into NaN right after optimizer step ``step`` (as an fp16 overflow would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


class PoisonedTask(LanguageModelTask):
    def callbacks(self, cfg, data):
        return super().callbacks(cfg, data) + [PoisonAt(3)]


def test_nan_at_a_validation_step_is_never_checkpointed(tmp_path, toy_corpus):
    cfg = _cfg(toy_corpus, tmp_path, name="nan", **{"trainer.val_check_interval": 1, "trainer.max_steps": 10})
    with pytest.raises(NonFiniteError) as info:
        run_with_task(cfg, PoisonedTask())
    message = str(info.value)
    run_dir = next(tmp_path.glob("nan-*"))
    last = run_dir / "checkpoints" / "last.ckpt"
    assert "non-finite validation loss" in message and "at step 3" in message and str(last) in message
    assert "(step 2)" in message and read_checkpoint(last)["global_step"] == 2  # the message is true
    files = list((run_dir / "checkpoints").glob("*.ckpt"))
    assert files and all(_all_finite(f) for f in files)
    assert not any("step0000003" in f.name for f in files)


def test_huge_learning_rate_never_saves_nan_weights_or_a_zero_loss(tmp_path, toy_corpus, capsys):
    args = tiny_overrides(toy_corpus, tmp_path, name="boom", **{"trainer.val_check_interval": 1, "trainer.max_steps": 60,
                                                                 "optim.lr": 1e4, "optim.min_lr": 0, "optim.grad_clip": 0,
                                                                 "optim.warmup_steps": 0, "sample.max_new_tokens": 0})
    assert main(args) == 1
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("error: non-finite") and "stopped without checkpointing it" in last_line
    files = list(next(tmp_path.glob("boom-*")).glob("checkpoints/*.ckpt"))
    assert all(_all_finite(f) for f in files)
    assert not any("loss0.0000" in f.name or "nan" in f.name.lower() for f in files)


def test_save_refuses_non_finite_weights():
    from transformer.training.lm_module import LanguageModelModule
    from transformer.training.config import OptimConfig

    cfg = load_config(None, ["model.embed_dim=16", "model.num_heads=2", "model.num_layers=1", "model.max_seq_len=16",
                             "data.block_size=16", "model.vocab_size=11"])
    module = LanguageModelModule(cfg.model, OptimConfig(), max_steps=4)
    state = {f"model.{k}": v.clone() for k, v in module.model.state_dict().items()}
    module.on_save_checkpoint({"state_dict": state, "global_step": 1})  # finite: fine
    state["model.embed.tokens.weight"][0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"non-finite weight model.embed.tokens.weight"):
        module.on_save_checkpoint({"state_dict": state, "global_step": 1})


# ----------------------------------------------------------------------------- two writers
def test_run_lock_excludes_a_second_holder_and_is_released(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire()
    with pytest.raises(RunDirError, match=rf"in use by pid {os.getpid()} on host"):
        second.acquire()
    first.release()
    second.acquire()  # free again; the file's old owner does not matter
    second.release()
    assert not (tmp_path / ".lock").exists()


def test_run_directories_started_in_the_same_second_never_collide(tmp_path):
    made, base = [], tmp_path / "runs" / "x-20260101-000000"
    threads = [threading.Thread(target=lambda: made.append(make_new_dir(base))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8 and all(p.is_dir() for p in made)


def test_second_writer_is_refused_then_a_killed_runs_stale_lock_is_taken_over(tmp_path, toy_corpus):
    args = tiny_overrides(toy_corpus, tmp_path, name="live", **{"trainer.max_steps": 100000, "trainer.val_check_interval": 3,
                                                                 "trainer.limit_val_batches": 1, "sample.max_new_tokens": 0})
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob("live-*/checkpoints/last.ckpt")):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.05)
        run_dir = next(tmp_path.glob("live-*"))
        before = sorted(p.name for p in run_dir.iterdir())
        with pytest.raises(RunDirError, match=rf"run directory {run_dir} is in use by pid {proc.pid}"):
            run(_cfg(toy_corpus, tmp_path, name="live", resume_from="auto", **{"trainer.max_steps": 100000}))
        assert sorted(p.name for p in run_dir.iterdir()) == before  # no config.resumed-*, nothing written
    finally:
        proc.kill()
        proc.wait()
    step = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    result = run(_cfg(toy_corpus, tmp_path, name="live", resume_from="auto",
                      **{"trainer.max_steps": step + 3, "trainer.val_check_interval": 3, "trainer.limit_val_batches": 1}))
    assert result.run_dir == run_dir and result.steps == step + 3


# ---------------------------------------------------------------------------- token cache
def test_damaged_token_cache_is_detected_and_rebuilt(tmp_path, toy_corpus, capsys):
    cfg = DataConfig(source="files", path=str(toy_corpus), max_chars=None, block_size=16)
    corpus = prepare_corpus(cfg, seed=0, cache_root=tmp_path)
    original = np.array(corpus.tokens("train"))
    train = corpus.directory / "train.bin"
    damages = {
        "truncated": lambda: train.write_bytes(train.read_bytes()[: train.stat().st_size // 2]),
        "zeroed": lambda: _patch(train, 100, bytes(400)),
        "out-of-range ids": lambda: _patch(train, 0, np.full(8, 65535, np.uint16).tobytes()),
        "meta.json deleted": lambda: (corpus.directory / "meta.json").unlink(),
        "tokenizer edited": lambda: (corpus.directory / "tokenizer.json").write_text('{"type": "char", "chars": ["a"]}'),
    }
    for what, damage in damages.items():
        damage()
        assert cache_problem(corpus.directory) is not None, what
        again = prepare_corpus(cfg, seed=0, cache_root=tmp_path)
        err = capsys.readouterr().err
        assert "token cache is damaged" in err and str(corpus.directory) in err, what
        assert np.array_equal(np.array(again.tokens("train")), original) and cache_problem(again.directory) is None, what


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_interrupted_cache_builds_are_removed_once_their_process_is_gone(tmp_path, toy_corpus):
    import socket

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".tmp-corpus-{host}-{int(dead.stdout)}-abc"
    alive = tmp_path / f".tmp-corpus-{host}-{os.getpid()}-def"  # a build in progress (this process)
    for d in (stale, alive):
        d.mkdir()
        (d / "train.bin").write_bytes(b"x")
    prepare_corpus(DataConfig(source="files", path=str(toy_corpus), max_chars=None, block_size=16), seed=0, cache_root=tmp_path)
    assert not stale.exists() and alive.exists()


# ---------------------------------------------------------------------- resume and changes
def test_resume_on_changed_data_needs_the_explicit_key_and_never_rewrites_run_files(tmp_path, toy_corpus):
    done = run(_cfg(toy_corpus, tmp_path, name="d", **{"trainer.max_steps": 4, "trainer.val_check_interval": 2}))
    tokenizer = (done.run_dir / "tokenizer.json").read_bytes()
    hparams = (done.run_dir / "csv" / "hparams.yaml").read_bytes()
    shuffled = tmp_path / "shuffled.txt"
    shuffled.write_text("".join(sorted(toy_corpus.read_text(), reverse=True)))
    common = {"name": "d", "resume_from": "auto", "trainer.max_steps": 6, "trainer.val_check_interval": 2,
              "data.path": str(shuffled), "data.tokenizer": str(done.run_dir / "tokenizer.json")}
    with pytest.raises(ValueError, match="the training data differs"):
        run(_cfg(toy_corpus, tmp_path, **common))
    result = run(_cfg(toy_corpus, tmp_path, **common, resume_allow_data_change="true"))
    assert result.run_dir == done.run_dir and result.steps == 6
    assert (done.run_dir / "tokenizer.json").read_bytes() == tokenizer
    assert (done.run_dir / "csv" / "hparams.yaml").read_bytes() == hparams
    assert list(done.run_dir.glob("config.resumed-*.yaml"))


def test_resuming_an_older_checkpoint_branches_into_a_new_directory(tmp_path, toy_corpus):
    done = run(_cfg(toy_corpus, tmp_path, name="b", **{"trainer.max_steps": 4, "trainer.val_check_interval": 2,
                                                       "checkpoint.save_top_k": 3}))
    older = next((done.run_dir / "checkpoints").glob("step0000002-*.ckpt"))
    before = {p: p.stat().st_mtime_ns for p in done.run_dir.rglob("*") if p.is_file()}
    result = run(_cfg(toy_corpus, tmp_path, name="b", resume_from=str(older), **{"trainer.max_steps": 6,
                                                                                "trainer.val_check_interval": 2}))
    assert result.run_dir != done.run_dir and result.steps == 6
    assert {p: p.stat().st_mtime_ns for p in done.run_dir.rglob("*") if p.is_file()} == before


# ------------------------------------------------------------------------------- leftovers
def test_leftovers_of_killed_launches_are_cleaned_on_resume(tmp_path, toy_corpus):
    done = run(_cfg(toy_corpus, tmp_path, name="k", **{"trainer.max_steps": 4, "trainer.val_check_interval": 2,
                                                       "trainer.log_every_n_steps": 1}))
    ckpts, metrics = done.run_dir / "checkpoints", done.run_dir / "csv" / "metrics.csv"
    (ckpts / ".last.ckpt.tmp-99999").write_bytes(b"half a checkpoint")
    (ckpts / "step0000006-loss1.2345.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes())  # a killed launch's top-k
    (ckpts / "notes.ckpt").write_text("the user's own file")  # not a toolkit name: kept
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    with open(metrics, "a", newline="") as f:  # rows a killed launch logged past step 4
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        for step in (4, 5):
            writer.writerow({**{k: "" for k in rows[0]}, "step": step, "train/loss": "9.99"})
    run(_cfg(toy_corpus, tmp_path, name="k", resume_from="auto", **{"trainer.max_steps": 8, "trainer.val_check_interval": 2,
                                                                    "trainer.log_every_n_steps": 1}))
    names = sorted(p.name for p in ckpts.iterdir())
    assert ".last.ckpt.tmp-99999" not in names and "step0000006-loss1.2345.ckpt" not in names and "notes.ckpt" in names
    assert len([n for n in names if n.startswith("step")]) == 2  # save_top_k=2
    with open(metrics) as f:
        losses = [(int(r["step"]), r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert [s for s, _ in losses] == list(range(8)) and "9.99" not in {v for _, v in losses}


# ------------------------------------------------------------------------------- full disk
def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, toy_corpus, monkeypatch, capsys):
    import transformer.training.checkpoint_io as io

    real_save, calls = io.torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 3:  # the first two saves (top-k + last at step 2) succeed
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(io.torch, "save", save)
    args = tiny_overrides(toy_corpus, tmp_path, name="full", **{"trainer.max_steps": 6, "trainer.val_check_interval": 2,
                                                                 "sample.max_new_tokens": 0})
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: could not write checkpoint") and "No space left on device" in err[-1]
    ckpts = next(tmp_path.glob("full-*")) / "checkpoints"
    assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == 2
    assert not [p for p in ckpts.iterdir() if ".tmp-" in p.name]


def test_checkpoint_error_names_the_file():
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint("/nonexistent/last.ckpt")


# ------------------------------------------------------------------------- regression sweep
def test_a_regression_sweep_runs_the_regression_pipeline(tmp_path):
    import json

    from transformer.sweep import SweepPlan, run_sweep

    plan = SweepPlan("regsweep", str(ROOT / "configs/regression/default.yaml"),
                     [f"out_dir={tmp_path}", "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.progress_bar=false",
                      "data.synthetic_series=2", "data.synthetic_length=120", "model.num_layers=1"],
                     [{"model.attention.type": "mha"}, {"model.attention.type": "mqa"}], ["model.attention.type"])
    experiment = run_sweep(plan)
    runs = json.loads((experiment / "sweep.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["finished", "finished"], runs
    for r in runs:
        result = json.loads((Path(r["run_dir"]) / "result.json").read_text())
        assert result["val"]["rmse"] > 0 and "ridge" in result["baselines"]
