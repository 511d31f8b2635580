"""Every command in the README's code blocks runs as written on a fresh checkout, in the README's order.

The checkout is a copy of the tracked files in a temporary directory. What a user brings is stood in for
by small files at the paths the README names: ``data/tinyshakespeare.txt`` (the first 200 kB of the
real corpus where this machine has it, else generated text), a tiny random Llama with a chat tokenizer at
``path/to/SmolLM2-135M-Instruct``, a tiny quantized GGUF Llama at ``tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf``, ``chat.jsonl``, ``my_series.csv`` / ``new.csv`` / ``houses.csv``.
Training commands get a few steps (the overrides in :data:`REDUCED`, appended so they win); the rest run
unchanged. Commands run in this process (``train.py`` is ``transformer.cli.main``; ``python -m X`` is
``X.main``), so torch is imported once. A glob in a command must match exactly one path, as it would
for a user following the README on a fresh clone. Skipped: ``bash .ci/run`` and ``python -m pytest``
(this test is part of them) and the download of the corpus (there is no network here; the URL is
checked against the one the error message for a missing file gives).
"""

from __future__ import annotations

import glob
import importlib
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
REDUCED = {"lm": ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                  "sample.max_new_tokens=8", "trainer.log_every_n_steps=1"],
           "regression": ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1"]}
SKIPPED = ("bash .ci/run", "python -m pytest")


def readme_blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced ``bash`` / ``python`` block, in order (indented ones included)."""
    text = (ROOT / "README.md").read_text()
    blocks = []
    for indent, lang, body in re.findall(r"^( *)```(bash|python)\n(.*?)^\1```", text, re.S | re.M):
        blocks.append((lang, "\n".join(line[len(indent):] for line in body.splitlines())))
    return blocks


def shell_commands(code: str) -> list[str]:
    """One string per command: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [cut for line in joined.splitlines() if (cut := _without_comment(line).strip())]


def _without_comment(line: str) -> str:
    """``line`` up to a ``#`` that starts a shell comment (outside quotes, after a blank or at the start)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _fresh_checkout(target: Path) -> None:
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                 and not any(part in (".venv", ".git", "runs", "__pycache__") for part in p.relative_to(ROOT).parts)]
    for name in files:
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)


def _stand_ins(checkout: Path) -> None:
    """The files a README reader brings, small."""
    from tests.transformer.finetune.helpers import make_tiny_llama, write_chat_jsonl

    (checkout / "data").mkdir()
    if SHAKESPEARE.is_file():
        text = SHAKESPEARE.read_text()[:200_000]
    else:
        rng = np.random.default_rng(0)
        words = "thou art the king of rome and all my lords shall speak to thee in love".split()
        text = "\n\n".join(f"{name}:\n" + " ".join(rng.choice(words, 12)) for name in ["ROMEO", "JULIET"] * 800)
    (checkout / "data" / "tinyshakespeare.txt").write_text(text)
    make_tiny_llama(checkout / "path" / "to" / "SmolLM2-135M-Instruct", max_position_embeddings=512)
    make_tiny_llama(checkout / "path" / "to" / "TinyLlama-1.1B", seed=1)
    from tests.transformer.interop.gguf_helpers import write_tiny_llama

    write_tiny_llama(checkout / "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", quantized=True)
    write_chat_jsonl(checkout / "chat.jsonl", n=64)
    rng = np.random.default_rng(0)
    rows = []
    for site in ("a", "b", "c"):
        t = np.arange(1200)
        temp = 15 + 8 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 1, len(t))
        rows.append(pd.DataFrame({"site": site, "ts": t, "temp": temp, "hour": t % 24,
                                  "load": 50 + 2 * temp + rng.normal(0, 2, len(t))}))
    series = pd.concat(rows, ignore_index=True)
    series.to_csv(checkout / "my_series.csv", index=False)
    series.groupby("site").tail(200).to_csv(checkout / "new.csv", index=False)
    houses = pd.DataFrame({"area": rng.uniform(30, 200, 400), "rooms": rng.integers(1, 6, 400), "city": rng.choice(["x", "y"], 400)})
    houses["price"] = 3000 * houses["area"] + 10000 * houses["rooms"] + rng.normal(0, 1000, 400)
    houses.to_csv(checkout / "houses.csv", index=False)


def _expand(words: list[str]) -> list[str]:
    out = []
    for word in words:
        override = re.match(r"^[\w.]+=", word)  # key=value: the config override, not a path
        if "*" in word and " " not in word and not override:  # an unquoted glob (the README's use only *)
            matches = sorted(glob.glob(word))
            assert len(matches) == 1, f"the README's {word!r} matches {matches} on a fresh clone"
            out += matches
        else:
            out.append(word)
    return out


def _task_of(words: list[str]) -> str:
    config = next((words[i + 1] for i, w in enumerate(words) if w in ("--config", "-c")), "")
    return "regression" if "regression" in config else "lm"


def run_shell_command(command: str) -> None:
    from transformer.data.corpus import TINY_SHAKESPEARE_URL

    if command.startswith(SKIPPED):
        return
    if "curl" in command:  # the corpus download: the stand-in is in place; the URL is the one errors name
        assert TINY_SHAKESPEARE_URL in command and "data/tinyshakespeare.txt" in command
        return
    command = command.removeprefix(". .venv/bin/activate && ")
    words = shlex.split(command)
    assert words[0] == "python", f"unexpected README command {command!r}"
    if words[1] == "train.py":
        from transformer.cli import main

        args = _expand(words[2:]) + REDUCED[_task_of(words)]
    else:
        assert words[1] == "-m", command
        main = importlib.import_module(words[2]).main
        args = _expand(words[3:])
    code = main(args)
    assert code == 0, f"{command!r} exited with {code}"


def test_every_readme_command_runs_on_a_fresh_checkout(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    _fresh_checkout(checkout)
    _stand_ins(checkout)
    monkeypatch.chdir(checkout)
    monkeypatch.setenv("WANDB_MODE", "offline")
    ran = []
    for lang, code in readme_blocks():
        if lang == "python":
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
            ran.append("python block")
            continue
        for command in shell_commands(code):
            run_shell_command(command)
            ran.append(command)
    out = capsys.readouterr().out
    # the README's flow happened: runs listed, the sweep compared, the fine-tune exported and chatted with
    assert any(c.startswith("python -m transformer.runs") for c in ran) and "shakespeare-char" in out
    assert list(Path("runs").glob("attention-*/report/report.md"))
    assert json.loads(Path("exports/merged/hf/config.json").read_text())["model_type"] == "llama"
    assert Path("predictions.csv").is_file() and Path("forecast.csv.metrics.json").is_file()
    assert Path("out/my-llama/config.json").is_file() and Path("exports/char/hf/tokenizer.json").is_file()
    assert len(ran) >= 20, ran


def test_readme_parser_sees_every_block():
    blocks = readme_blocks()
    assert sum(lang == "python" for lang, _ in blocks) == 4
    commands = [c for lang, code in blocks if lang == "bash" for c in shell_commands(code)]
    assert "python -m transformer.compare runs/attention-*" in commands
    joined = [c for c in commands if "csv_timeseries" in c]
    assert joined and "data.time_column=ts" in joined[0]  # a continued line is one command
