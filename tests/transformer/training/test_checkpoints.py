"""Checkpoints: exact resume, surviving kills, init_from reports, attention conversion, export, bad files."""

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from transformer.cli import run
from transformer.config import ModelConfig
from transformer.convert import convert_checkpoint
from transformer.export import export_checkpoint
from transformer.training.checkpoint_io import CheckpointError, atomic_save, read_checkpoint
from transformer.training.config import load_config
from transformer.training.weights import load_model, load_weights
from transformer.transformer_model import build_model

from .conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[3]


def _cfg(corpus, out, **extra):
    return load_config(None, tiny_overrides(corpus, out, **extra))


def _losses(run_dir):
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(f) if r.get("train/loss")}


def _weights(run_dir):
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def test_exact_resume_mid_epoch_with_accumulation_and_dropout(tmp_path, toy_corpus):
    common = {"trainer.accumulate_grad_batches": 2, "model.dropout": 0.1, "optim.decay_steps": 20,
              "trainer.val_check_interval": 5, "trainer.log_every_n_steps": 1}
    straight = run(_cfg(toy_corpus, tmp_path, name="straight", **{**common, "trainer.max_steps": 20}))
    first = run(_cfg(toy_corpus, tmp_path, name="halves", **{**common, "trainer.max_steps": 10}))
    second = run(_cfg(toy_corpus, tmp_path, name="halves", resume_from="auto", **{**common, "trainer.max_steps": 20}))
    assert second.run_dir == first.run_dir and second.steps == 20
    a, b = _weights(straight.run_dir), _weights(second.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise on CPU
    assert _losses(straight.run_dir) == _losses(second.run_dir) and len(_losses(straight.run_dir)) == 20


def test_resume_auto_picks_the_newest_run_whose_model_matches(tmp_path, toy_corpus, capsys):
    short = {"trainer.max_steps": 4, "trainer.val_check_interval": 2, "sample.max_new_tokens": 0}
    mha = run(_cfg(toy_corpus, tmp_path, name="same", **short, **{"model.attention.type": "mha"}))
    gqa_keys = {"model.attention.type": "gqa", "model.attention.num_kv_heads": 2}
    gqa = run(_cfg(toy_corpus, tmp_path, name="same", **short, **gqa_keys))  # newer, same name, other model
    capsys.readouterr()
    more = {**short, "trainer.max_steps": 6}
    assert run(_cfg(toy_corpus, tmp_path, name="same", resume_from="auto", **more,
                    **{"model.attention.type": "mha"})).run_dir == mha.run_dir
    assert f"passed over, another model: {gqa.run_dir}" in capsys.readouterr().out
    assert run(_cfg(toy_corpus, tmp_path, name="same", resume_from="auto", **more, **gqa_keys)).run_dir == gqa.run_dir
    with pytest.raises(ValueError, match=r"none of the 2 run\(s\) named 'same' .* has this config's model: "
                                         r".*same-.*model\.attention\.type: 'gqa' -> 'mqa'.*same-.*'mha' -> 'mqa'"):
        run(_cfg(toy_corpus, tmp_path, name="same", resume_from="auto", **more, **{"model.attention.type": "mqa"}))


def test_any_garbage_file_is_a_one_line_checkpoint_error(tmp_path):
    """Random bytes make the unpickler raise almost anything (MemoryError for an absurd length, KeyError,
    struct.error, ...): every one is reported as a corrupt checkpoint, never as a crash or 'out of memory'."""
    path = tmp_path / "garbage.ckpt"
    rng = random.Random(0)
    for _ in range(500):
        path.write_bytes(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 600))))
        with pytest.raises(CheckpointError, match=r"garbage.ckpt is corrupt"):
            read_checkpoint(path)


def test_resume_refuses_a_different_model_and_bad_files(tmp_path, toy_corpus):
    done = run(_cfg(toy_corpus, tmp_path, name="r", **{"trainer.max_steps": 4, "trainer.val_check_interval": 2}))
    ckpt = done.run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"model differs.*model\.embed_dim: 32 -> 64"):
        run(_cfg(toy_corpus, tmp_path, name="r", resume_from=str(ckpt), **{"model.embed_dim": 64}))
    garbage, truncated, foreign = tmp_path / "garbage.ckpt", tmp_path / "truncated.ckpt", tmp_path / "foreign.ckpt"
    garbage.write_bytes(os.urandom(1000))
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    torch.save([1, 2, 3], foreign)
    for path, message in ((garbage, "corrupt or truncated"), (truncated, "corrupt or truncated"),
                          (foreign, "not a training checkpoint"), (tmp_path / "none.ckpt", "does not exist")):
        with pytest.raises(CheckpointError, match=message) as info:
            read_checkpoint(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"resume_from={truncated}", f"out_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 1 and "corrupt or truncated" in proc.stderr and "Traceback" not in proc.stderr


def _spawn_training(tmp_path, corpus, name, max_steps):
    args = tiny_overrides(corpus, tmp_path, name=name, **{"trainer.max_steps": max_steps, "trainer.val_check_interval": 3,
                                                          "trainer.limit_val_batches": 1})
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _wait_for_checkpoint(tmp_path, name, proc, timeout=120):
    deadline = time.time() + timeout
    while not (found := list(tmp_path.glob(f"{name}-*/checkpoints/last.ckpt"))):
        assert proc.poll() is None, proc.stdout.read()[-2000:]
        assert time.time() < deadline, "timed out waiting for the first checkpoint"
        time.sleep(0.05)
    return found[0]


def test_sigkill_at_a_random_moment_then_resume(tmp_path, toy_corpus):
    proc = _spawn_training(tmp_path, toy_corpus, "killed", 400)
    ckpt = _wait_for_checkpoint(tmp_path, "killed", proc)
    time.sleep(random.uniform(0.0, 1.5))  # somewhere in training, validation or a checkpoint save
    proc.kill()
    proc.wait()
    step = read_checkpoint(ckpt)["global_step"]  # the last complete checkpoint loads
    assert step >= 3
    result = run(_cfg(toy_corpus, tmp_path, name="killed", resume_from="auto",
                      **{"trainer.max_steps": step + 6, "trainer.val_check_interval": 3, "trainer.limit_val_batches": 1}))
    assert result.steps == step + 6 and result.run_dir == ckpt.parent.parent


def test_sigterm_saves_and_exits_cleanly(tmp_path, toy_corpus):
    proc = _spawn_training(tmp_path, toy_corpus, "term", 100000)
    _wait_for_checkpoint(tmp_path, "term", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:]
    assert "SIGTERM: saved" in out and "Traceback" not in out
    saved = read_checkpoint(next(tmp_path.glob("term-*/checkpoints/last.ckpt")))
    assert f"at step {saved['global_step']}" in out


def test_killed_mid_save_leaves_previous_checkpoint_loadable(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.zeros(3)}, "version": 0}, target)
    script = (
        "import sys, torch; from pathlib import Path; from transformer.training.checkpoint_io import atomic_save\n"
        "print('ready', flush=True)\n"
        "i = 1\n"
        "while True:\n"
        "    atomic_save({'state_dict': {'w': torch.randn(4_000_000)}, 'version': i}, Path(sys.argv[1])); i += 1\n"
    )
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True,
                                cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        proc.stdout.readline()
        time.sleep(random.uniform(0.05, 0.6))
        proc.kill()
        proc.wait()
        checkpoint = read_checkpoint(target)  # always a complete file, old or new
        assert checkpoint["state_dict"]["w"].numel() in (3, 4_000_000)


def _lm_checkpoint(tmp_path, cfg: ModelConfig, name="src.ckpt"):
    model = build_model(cfg)
    path = tmp_path / name
    atomic_save({"state_dict": {f"_orig_mod.model.{k}": v for k, v in model.state_dict().items()},
                 "run_config": {"model": cfg.to_dict()}}, path)
    return model, path


def test_init_from_reports_exactly_the_reinitialised_keys(tmp_path):
    base = dict(vocab_size=50, embed_dim=32, num_heads=4, num_layers=2, tie_embeddings=False)
    _, path = _lm_checkpoint(tmp_path, ModelConfig(**base))
    same_shape = build_model(ModelConfig(**{**base, "dropout": 0.3}))
    report = load_weights(same_shape, path, strict=True)  # a dropout change touches no parameter
    assert report.clean and not report.reinitialised
    new_vocab = build_model(ModelConfig(**{**base, "vocab_size": 60}))
    report = load_weights(new_vocab, path, freeze=["decoder.blocks.0"])
    assert sorted(report.reinitialised) == ["embed.tokens.weight", "head.weight"]
    assert report.frozen and all(not p.requires_grad for n, p in new_vocab.named_parameters() if n.startswith("decoder.blocks.0."))
    assert "2 re-initialised" in report.format()
    with pytest.raises(CheckpointError, match="strict weight loading failed.*embed.tokens.weight"):
        load_weights(build_model(ModelConfig(**{**base, "vocab_size": 60})), path, strict=True)


def test_mha_to_gqa_and_back_is_exact_when_group_heads_are_equal(tmp_path):
    cfg = ModelConfig(vocab_size=40, embed_dim=32, num_heads=4, num_layers=2, attention={"type": "mha", "positional": "rope"})
    mha = build_model(cfg).eval()
    with torch.no_grad():
        for block in mha.decoder.blocks:
            w = block.attn.qkv_proj.weight.view(3, 4, 8, 32)  # [q|k|v, heads, d, D]
            w[1:, 1] = w[1:, 0]  # heads 0,1 form group 0; heads 2,3 form group 1
            w[1:, 3] = w[1:, 2]
    gqa = build_model(ModelConfig(**{**cfg.to_dict(), "attention": {"type": "gqa", "num_kv_heads": 2, "positional": "rope"}}))
    report = load_weights(gqa, mha.state_dict(), strict=True)
    assert len(report.converted) == 2
    back = build_model(cfg)
    load_weights(back, gqa.state_dict(), strict=True)
    ids = torch.randint(0, 40, (2, 10))
    torch.testing.assert_close(back.eval()(ids).logits, mha(ids).logits, atol=0, rtol=0)
    torch.testing.assert_close(gqa.eval()(ids).logits, mha(ids).logits, atol=1e-6, rtol=1e-5)


def test_mha_to_mqa_conversion_beats_random_kv(tmp_path, toy_corpus):
    trained = run(_cfg(toy_corpus, tmp_path, name="mha", **{"model.attention.type": "mha", "trainer.max_steps": 60,
                                                              "trainer.val_check_interval": 60}))
    ckpt = trained.run_dir / "checkpoints" / "last.ckpt"
    result = convert_checkpoint(ckpt, tmp_path / "mqa.ckpt", to="mqa")
    assert abs(result["before"] - trained.val_loss) < 1e-4
    mqa, _ = load_model(tmp_path / "mqa.ckpt")
    assert mqa.cfg.attention.type == "mqa" and mqa.decoder.blocks[0].attn.num_kv_heads == 1
    # Baseline: the same weights but freshly initialised key/value rows.
    from transformer.training.config import run_config_from_dict
    from transformer.training.evaluate import validation_loss

    run_cfg = run_config_from_dict(read_checkpoint(tmp_path / "mqa.ckpt")["run_config"])
    random_kv = build_model(run_cfg.model)
    state = {k: v for k, v in mqa.state_dict().items() if "qkv_proj" not in k}
    for name, p in random_kv.state_dict().items():
        if "qkv_proj" in name:  # keep the trained query rows, random key/value rows
            state[name] = torch.cat([mqa.state_dict()[name][: 32], p[32:]])
    random_kv.load_state_dict(state)
    random_loss = validation_loss(random_kv, run_cfg)
    assert result["after"] < random_loss, (result, random_loss)
    # the validation split read through a KV cache: contiguous equals the plain loss; int4 with no exact window
    # costs a little; chunks of 5 tokens
    plain = validation_loss(mqa, run_cfg)
    assert abs(validation_loss(mqa, run_cfg, cache="contiguous", chunk=5) - plain) < 1e-5
    int4 = validation_loss(mqa, run_cfg, cache="int4", chunk=5, cache_options={"residual": 0, "group_size": 8})
    assert 0 < abs(int4 - plain) < 0.05 * plain
    with pytest.raises(FileExistsError):
        convert_checkpoint(ckpt, tmp_path / "mqa.ckpt", to="mqa")


def test_export_reload_identical_logits_and_sample(tmp_path, toy_corpus, capsys):
    done = run(_cfg(toy_corpus, tmp_path, name="exp", **{"trainer.max_steps": 4, "trainer.val_check_interval": 2}))
    ckpt = done.run_dir / "checkpoints" / "last.ckpt"
    out = export_checkpoint(ckpt, tmp_path / "export")
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "model_config.json", "tokenizer.json"}
    a, _ = load_model(ckpt)
    b, tok = load_model(out)
    ids = torch.randint(0, a.cfg.vocab_size, (2, 12))
    assert torch.equal(a(ids).logits, b(ids).logits) and tok is not None
    from transformer.sample import sample

    assert sample(out, "the quick", max_new_tokens=10, temperature=0).startswith("the quick")
    capsys.readouterr()
    long = sample(out, "the quick", max_new_tokens=60, temperature=0)  # past the 32-token context: it slides
    assert len(long) == len("the quick") + 60 and "sliding window" in capsys.readouterr().err
    stopped = sample(out, "the quick", max_new_tokens=60, temperature=0, context="stop")
    assert stopped == long[:32] and "stopping after 23 new tokens" in capsys.readouterr().err
    greedy = sample(out, "the quick", max_new_tokens=10, temperature=0)
    assert sample(out, "the quick", max_new_tokens=10, temperature=0, cache="paged", prefill_chunk=2) == greedy
    from transformer.sample import main as sample_main

    assert sample_main([str(out), "--prompt", "the quick", "--max-new-tokens", "5", "--cache", "int8", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("the quick")
    with pytest.raises(SystemExit):
        sample_main([str(out), "--cache", "int3"])
    assert "invalid choice: 'int3'" in capsys.readouterr().err
    with pytest.raises(FileExistsError):
        export_checkpoint(ckpt, tmp_path / "export")
    (tmp_path / "export" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(out)


def test_lm_to_encoder_transfer(tmp_path):
    lm_cfg = ModelConfig(vocab_size=40, embed_dim=32, num_heads=4, num_layers=2)
    lm, path = _lm_checkpoint(tmp_path, lm_cfg)
    encoder = build_model(ModelConfig(**{**lm_cfg.to_dict(), "kind": "encoder"}))
    report = load_weights(encoder, path, key_map={"decoder.": "encoder."})
    assert "encoder.blocks.1.attn.qkv_proj.weight" in report.loaded and report.unexpected == ["head.weight"]
    assert torch.equal(encoder.encoder.blocks[0].mlp.w_in.weight, lm.decoder.blocks[0].mlp.w_in.weight)
