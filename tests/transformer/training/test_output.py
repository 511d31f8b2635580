"""What a run prints when stdout is a log file: progress lines, validation lines, none of the libraries'
noise, no escape codes; Ctrl-C exits 130 after saving; ``python -m transformer.runs`` reports every status."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transformer.runs import describe_run, find_run_dirs, main as runs_main

from .conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[3]
# Lines seen in runs before they were silenced or fixed (Lightning, torch, datasets, wandb): none may come back.
NOISE = ("GPU available", "TPU available", "litlogger", "LeafSpec", "limit_val_batches", "Filter:", "Map:",
         "Previous log files", "exists and is not empty", "weights_only", "v_num", "Epoch 0/", "Trainer.fit",
         "anonymous setting", "examples/s", "Traceback")


def _train(tmp_path, corpus, name, *extra, **values):
    args = tiny_overrides(corpus, tmp_path, name=name, **{"trainer.progress_bar": "true", **values})
    return [sys.executable, str(ROOT / "train.py"), *args, *extra]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline", WANDB_SILENT="false")


def _assert_quiet(output: str) -> None:
    assert "\x1b[" not in output, "escape codes in a log file"
    noisy = [line for line in output.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, noisy


def test_log_file_gets_progress_lines_and_no_noise_also_on_resume(tmp_path, toy_corpus):
    values = {"trainer.max_steps": 20, "trainer.val_check_interval": 10, "trainer.log_every_n_steps": 5,
              "trainer.progress_every_n_steps": 5, "logger.wandb.enabled": "true", "logger.wandb.offline": "true"}
    first = subprocess.run(_train(tmp_path, toy_corpus, "log", **values), capture_output=True, text=True, cwd=ROOT,
                           env=_env(), timeout=300)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-3000:]
    steps = [int(m) for m in re.findall(r"^step (\d+)/20 \(\d+%\) \| loss [0-9.]+ \| [0-9.]+k? tok/s \| lr [0-9.e+-]+ "
                                        r"\| elapsed \d:\d\d:\d\d \| eta \d:\d\d:\d\d$", first.stdout, re.M)]
    assert steps == [5, 10, 15, 20], first.stdout[-3000:]
    assert re.search(r"^validation at step 10: val/loss [0-9.]+ \| val/ppl [0-9.]+$", first.stdout, re.M)
    assert re.search(r"^tokenising train: 1 document\(s\), [0-9.]+ M characters \.\.\. [0-9,]+ tokens in", first.stdout, re.M)
    assert re.search(r"^outputs in .*log-.*: checkpoints/ \(best step0000020-loss[0-9.]+\.ckpt, last\.ckpt\), "
                     r"csv/metrics\.csv, wandb/, config\.yaml, result\.json$", first.stdout, re.M), first.stdout[-500:]
    _assert_quiet(output)
    resumed = subprocess.run(_train(tmp_path, toy_corpus, "log", "resume_from=auto", **{**values, "trainer.max_steps": 30}),
                             capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert re.findall(r"^step (\d+)/30", resumed.stdout, re.M) == ["25", "30"]  # counts on from the checkpoint
    assert "resuming step 20" in resumed.stdout
    _assert_quiet(output)


def _wait_for(path_glob, tmp_path, proc, timeout=120):
    deadline = time.time() + timeout
    while not (found := list(tmp_path.glob(path_glob))):
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        assert time.time() < deadline, f"timed out waiting for {path_glob}"
        time.sleep(0.05)
    return found[0]


def test_ctrl_c_saves_and_exits_130_and_runs_lists_every_status(tmp_path, toy_corpus, capsys):
    long = {"trainer.max_steps": 100000, "trainer.val_check_interval": 3, "trainer.limit_val_batches": 1}
    # running, then Ctrl-C: interrupted
    proc = subprocess.Popen(_train(tmp_path, toy_corpus, "stopped", **long), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env())
    ckpt = _wait_for("stopped-*/checkpoints/last.ckpt", tmp_path, proc)
    running = describe_run(ckpt.parent.parent)
    assert running.status == "running" and running.max_steps == 100000
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:]
    assert re.search(r"interrupt: saved .*last\.ckpt at step \d+; continue with resume_from=auto", out)
    _assert_quiet(out)
    # killed outright: nobody could write a status, the lock is free
    proc = subprocess.Popen(_train(tmp_path, toy_corpus, "killed", **long), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env())
    _wait_for("killed-*/checkpoints/last.ckpt", tmp_path, proc)
    proc.kill()
    proc.wait()
    # failed: a learning rate that makes the loss non-finite
    failed = subprocess.run(_train(tmp_path, toy_corpus, "failed", **{"optim.lr": 1e30, "trainer.max_steps": 50}),
                            capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert failed.returncode == 1 and "non-finite training loss" in failed.stderr
    # finished
    done = subprocess.run(_train(tmp_path, toy_corpus, "done", **{"trainer.max_steps": 6, "trainer.val_check_interval": 3}),
                          capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    rows = {r.name: r for r in map(describe_run, find_run_dirs(tmp_path))}
    assert {n: r.status for n, r in rows.items()} == {"stopped": "interrupted", "killed": "killed", "failed": "failed",
                                                       "done": "finished"}
    assert rows["done"].steps == 6 and rows["done"].best_value is not None and rows["done"].wall_time_s > 0
    assert rows["stopped"].steps >= 3 and rows["failed"].error.startswith("non-finite training loss")
    assert all(r.task == "lm" and r.attention == "mha" for r in rows.values())
    capsys.readouterr()
    assert runs_main([str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^done\s+lm\s+mha\s+finished\s+6/6\s+loss [0-9.]+\s+0:00:\d\d\s+\S+done-", table, re.M), table
    assert re.search(r"^failed .*failed-.*: non-finite training loss", table, re.M)
    assert runs_main([str(tmp_path), "--json"]) == 0
    assert {r["status"] for r in json.loads(capsys.readouterr().out)} == {"interrupted", "killed", "failed", "finished"}


@pytest.mark.slow
def test_ctrl_c_at_random_moments_never_lands_inside_a_checkpoint_write(tmp_path, toy_corpus):
    """A checkpoint every step, Ctrl-C at a random moment: always a clean interrupt (exit 130), never the
    RuntimeError torch's zip writer raises when the interrupt lands inside it."""
    rng = random.Random(0)
    for i in range(6):
        name = f"race{i}"
        proc = subprocess.Popen(_train(tmp_path, toy_corpus, name, **{"trainer.max_steps": 100000, "trainer.val_check_interval": 1,
                                                                      "trainer.limit_val_batches": 1}),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env())
        _wait_for(f"{name}-*/checkpoints/last.ckpt", tmp_path, proc)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "interrupt: saved" in out, out[-2000:]


def test_terminal_bar_counts_steps_and_prints_validation_lines(tmp_path, toy_corpus, monkeypatch, capsys):
    """On a terminal: the rich bar (no plain step lines), counting optimizer steps, and the validation lines."""
    from transformer.cli import run
    from transformer.training.config import load_config
    from transformer.training.progress import ProgressReporter

    bars = []
    original = ProgressReporter.on_train_start

    def on_train_start(self, trainer, pl_module):
        self.tty = True
        original(self, trainer, pl_module)
        bars.append(self)

    monkeypatch.setattr(ProgressReporter, "on_train_start", on_train_start)
    overrides = tiny_overrides(toy_corpus, tmp_path, name="tty", **{"trainer.progress_bar": "true", "trainer.max_steps": 12,
                                                                   "trainer.val_check_interval": 6, "sample.max_new_tokens": 0})
    run(load_config(None, overrides))
    out = capsys.readouterr().out
    (reporter,) = bars
    assert reporter._bar is None  # stopped at the end of training
    assert "validation at step 6: val/loss" in out and "validation at step 12" in out
    assert not re.search(r"^step \d+/12 \(", out, re.M)  # no plain lines while a bar is shown
    assert re.search(r"step\s+12/12", out)  # rich renders the final state of the bar
