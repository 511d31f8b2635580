"""``python -m transformer.evaluate`` on a run directory / an export, the results files, the errors a user meets
(an unknown task, a missing data file, a probe past the context), and evaluation during training."""

import json

import pandas as pd
import pytest

pytest.importorskip("lm_eval")

from transformer.cli import run  # noqa: E402
from transformer.evaluate import main  # noqa: E402
from transformer.training.config import load_config  # noqa: E402

from ..training.conftest import tiny_overrides  # noqa: E402


def test_run_directory_results_written_beside_the_run_and_never_replaced(trained, capsys):
    run_dir = trained["run_dir"]
    args = [str(run_dir), "--tasks", "copying_32,length_extrapolation", "--probe-docs", "20", "--blocks", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| copying_32 | acc |" in out and "| length_extrapolation | loss@4x |" in out
    assert main(args) == 0
    files = sorted((run_dir / "eval").glob("eval-*.json"))
    assert len(files) == 2 and len(list((run_dir / "eval").glob("eval-*.md"))) == 2
    first, second = (json.loads(f.read_text()) for f in files)
    assert first["results"] == second["results"]  # the same documents for the same seed: the same figures
    assert 0 <= first["results"]["copying_32"]["acc"] <= 1
    assert first["results"]["length_extrapolation"]["loss@1x"] < first["results"]["length_extrapolation"]["loss@4x"] + 5
    assert first["header"]["model"].endswith(".ckpt")


def test_export_directory_with_text_for_extrapolation(trained, tmp_path):
    text = tmp_path / "valid.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "results"
    assert main([str(trained["export"]), "--tasks", "length_extrapolation", "--text", str(text), "--out", str(out)]) == 0
    [result] = out.glob("eval-*.json")
    figures = json.loads(result.read_text())["results"]["length_extrapolation"]
    assert set(figures) >= {"loss@1x", "loss@2x", "loss@4x"}


def _error(capsys, args) -> str:
    assert main(args) != 0
    return capsys.readouterr().err.strip()


def test_unknown_task_lists_the_available_ones(trained, capsys, tmp_path):
    err = _error(capsys, [str(trained["export"]), "--tasks", "passkey,no_such_task", "--out", str(tmp_path)])
    assert err.startswith("error: unknown task 'no_such_task'") and "passkey" in err and "assoc_recall" in err
    assert "lm-eval's" in err and len(err.splitlines()) == 1


def test_missing_data_file_is_named(trained, capsys, tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.yaml").write_text(
        "task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: /nowhere/mine.jsonl\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: gold\n")
    err = _error(capsys, [str(trained["export"]), "--tasks", "mine", "--include-path", str(tmp_path / "tasks"),
                          "--out", str(tmp_path / "o")])
    assert "task mine" in err and "/nowhere/mine.jsonl does not exist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_probe_past_the_context_is_refused(trained, capsys, tmp_path):
    err = _error(capsys, [str(trained["export"]), "--tasks", "passkey_64", "--out", str(tmp_path)])
    assert "passkey_64" in err and "model.max_seq_len=32" in err and "rope_scaling" in err


def test_a_file_outside_a_run_needs_out(trained, capsys, tmp_path):
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes((trained["run_dir"] / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(SystemExit) as exit_:
        main([str(ckpt), "--tasks", "copying_32"])
    assert exit_.value.code == 2 and "give --out DIR" in capsys.readouterr().err


def test_eval_callback_logs_during_training(tmp_path, toy_corpus):
    cfg = load_config(None, tiny_overrides(toy_corpus, tmp_path, **{
        "trainer.max_steps": 30, "trainer.val_check_interval": 15, "sample.max_new_tokens": 0,
        "eval.tasks": "[copying_32,length_extrapolation]", "eval.every_n_steps": 10, "eval.probe_docs": 12,
        "eval.blocks": 2}))
    done = run(cfg)
    metrics = pd.read_csv(done.run_dir / "csv" / "metrics.csv")
    acc = metrics[["step", "eval/copying_32/acc"]].dropna()
    assert list(acc["step"]) == [10, 20, 30]
    assert acc["eval/copying_32/acc"].between(0, 1).all()
    for key in ("loss@1x", "loss@2x", "loss@4x", "tail_loss@4x"):
        assert metrics[f"eval/length_extrapolation/{key}"].notna().sum() == 3
    assert metrics["val/loss"].notna().any()  # the run's own logging is untouched


def test_eval_callback_changes_nothing_in_training(tmp_path, toy_corpus):
    """The probes run inside training but restore the random streams: the loss curve is the same with them."""
    losses = []
    for name, tasks in (("plain", "[]"), ("probed", "[copying_32]")):
        cfg = load_config(None, tiny_overrides(toy_corpus, tmp_path, name=name, **{
            "trainer.max_steps": 20, "sample.max_new_tokens": 0, "model.dropout": 0.1, "eval.tasks": tasks,
            "eval.every_n_steps": 5, "eval.probe_docs": 8}))
        done = run(cfg)
        frame = pd.read_csv(done.run_dir / "csv" / "metrics.csv")
        losses.append(frame["train/loss"].dropna().tolist())
    assert losses[0] == losses[1]


def test_bad_eval_config_fails_before_training(tmp_path, toy_corpus):
    with pytest.raises(ValueError, match=r"eval.tasks: unknown task 'nope'"):
        run(load_config(None, tiny_overrides(toy_corpus, tmp_path, **{"eval.tasks": "[nope]"})))
    with pytest.raises(ValueError, match=r"eval.tasks: task passkey_64: .*model.max_seq_len=32"):
        run(load_config(None, tiny_overrides(toy_corpus, tmp_path, **{"eval.tasks": "[passkey_64]"})))
    assert not list(tmp_path.glob("default-*/checkpoints/*.ckpt"))


def test_eval_callback_under_ddp_equals_one_process_on_the_same_weights(tmp_path, toy_corpus):
    """Two processes each score their share of an odd number of documents (7 + 6) and of the extrapolation blocks;
    the logged figures are those of one process evaluating the final checkpoint: a mean over all documents and
    tokens, never a mean of the two ranks' means."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    args = tiny_overrides(toy_corpus, tmp_path / "runs", **{
        "trainer.max_steps": 6, "trainer.val_check_interval": 6, "trainer.accelerator": "cpu", "trainer.devices": 2,
        "trainer.strategy": "ddp", "data.batch_size": 4, "sample.max_new_tokens": 0, "eval.probe_docs": 13,
        "eval.tasks": "[copying_32,length_extrapolation]", "eval.blocks": 3})
    proc = subprocess.run([sys.executable, str(root / "train.py"), *args], capture_output=True, text=True, cwd=root,
                          env=dict(os.environ, PYTHONPATH=str(root)), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_dir] = (tmp_path / "runs").glob("default-*")
    logged = pd.read_csv(run_dir / "csv" / "metrics.csv").ffill().iloc[-1]
    assert main([str(run_dir / "checkpoints" / "last.ckpt"), "--tasks", "copying_32,length_extrapolation",
                 "--probe-docs", "13", "--blocks", "3"]) == 0
    [result] = (run_dir / "eval").glob("eval-*.json")
    alone = json.loads(result.read_text())["results"]
    assert logged["eval/copying_32/acc"] == pytest.approx(alone["copying_32"]["acc"], abs=1e-9)
    for key, value in alone["length_extrapolation"].items():
        assert logged[f"eval/length_extrapolation/{key}"] == pytest.approx(value, rel=1e-5), key


def test_compare_report_shows_evaluation_columns_and_the_probe_frontier(tmp_path, toy_corpus):
    from transformer.compare import report

    runs = []
    for name, kv in (("mha", 4), ("mqa", 1)):
        cfg = load_config(None, tiny_overrides(toy_corpus, tmp_path / "exp", name=name, **{
            "trainer.max_steps": 10, "trainer.val_check_interval": 10, "sample.max_new_tokens": 0, "model.max_seq_len": 64,
            "data.block_size": 64, "model.attention.type": "mha" if kv == 4 else "mqa", "eval.tasks": "[copying_32]",
            "eval.probe_docs": 8}))
        runs.append(run(cfg).run_dir)
    # a later `python -m transformer.evaluate` result takes precedence over what training logged
    assert main([str(runs[1]), "--tasks", "copying_32,passkey_64", "--probe-docs", "12"]) == 0
    cli = json.loads(next((runs[1] / "eval").glob("eval-*.json")).read_text())["results"]
    out = report([str(tmp_path / "exp")], tmp_path / "report", measure_decode=False)
    table = pd.read_csv(out / "report.csv").set_index("run")
    logged = pd.read_csv(runs[0] / "csv" / "metrics.csv")["eval/copying_32/acc"].dropna().iloc[-1]
    assert table.loc["mha", "copying_32/acc"] == pytest.approx(logged, abs=1e-4)
    assert table.loc["mqa", "copying_32/acc"] == pytest.approx(cli["copying_32"]["acc"], abs=1e-4)
    assert table.loc["mqa", "probe_acc"] == pytest.approx((cli["copying_32"]["acc"] + cli["passkey_64"]["acc"]) / 2, abs=1e-4)
    assert pd.isna(table.loc["mha", "passkey_64/acc"])
    assert (out / "kv_cache_vs_probe_acc.png").is_file() and "probe_acc" in (out / "report.md").read_text()
