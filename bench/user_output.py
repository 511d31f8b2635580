"""What a user sees, counted: a short Tiny-Shakespeare run with stdout going to a file, Ctrl-C, sampling past the
context, and the ``--hf`` export used by ``transformers`` alone.

    python bench/user_output.py                          # this checkout
    python bench/user_output.py --ref /tmp/old           # and another (e.g. `git worktree add /tmp/old <commit>`)

Per checkout (in a fresh temporary directory): lines in the log of a 100-step run, progress lines
(``step N/100``), validation lines, known noise lines (accelerator lines, tips, deprecations, unlabelled
bars, the rich bar's ``Epoch 0/-2`` / ``v_num``), escape codes; the exit status after Ctrl-C; the characters
``transformer.sample --max-new-tokens 200`` returns on the 64-token-context model (prompt ``ROMEO:``, 6
characters); whether ``AutoTokenizer`` + ``AutoModelForCausalLM`` + ``generate`` work on ``exports/x/hf``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
NOISE = re.compile(r"GPU available|TPU available|litlogger|LeafSpec|limit_val_batches|Filter:|Map:|Epoch 0/|v_num|"
                   r"Trainer\.fit|examples/s|Previous log files|exists and is not empty|weights_only")
HF_CHECK = """
import transformers
tok = transformers.AutoTokenizer.from_pretrained("exports/x/hf")
model = transformers.AutoModelForCausalLM.from_pretrained("exports/x/hf")
out = model.generate(tok("ROMEO:", return_tensors="pt").input_ids, max_new_tokens=10, do_sample=False)
print(repr(tok.decode(out[0])))
"""


def measure(checkout: Path, data: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout), WANDB_MODE="offline")
    train = [sys.executable, str(checkout / "train.py"), "--config", str(checkout / "configs/lm/shakespeare_char.yaml"),
             f"data.path={data}", "trainer.val_check_interval=50", "sample.max_new_tokens=0"]
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run([*train, "trainer.max_steps=100"], cwd=tmp, env=env, capture_output=True, text=True)
        log = run.stdout + run.stderr
        lines = log.splitlines()
        out = {"log lines": len(lines), "progress lines": sum(bool(re.match(r"step \d+/100", x)) for x in lines),
               "validation lines": sum(x.startswith("validation at step") for x in lines),
               "noise lines": sum(bool(NOISE.search(x)) for x in lines), "escape codes": log.count("\x1b[")}
        proc = subprocess.Popen([*train, "trainer.max_steps=100000", "name=stopped"], cwd=tmp, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not list(Path(tmp).glob("runs/stopped-*/checkpoints/last.ckpt")) and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out["exit status after Ctrl-C"] = proc.wait()
        ckpt = next(Path(tmp).glob("runs/shakespeare-char-*/checkpoints/last.ckpt"))
        subprocess.run([sys.executable, "-m", "transformer.export", str(ckpt), "exports/x", "--hf"], cwd=tmp, env=env,
                       capture_output=True, check=True)
        sample = subprocess.run([sys.executable, "-m", "transformer.sample", "exports/x", "--prompt", "ROMEO:",
                                 "--max-new-tokens", "200"], cwd=tmp, env=env, capture_output=True, text=True)
        out["sample characters (6 + 200 asked)"] = len(sample.stdout.rstrip("\n"))
        out["sample note on stderr"] = bool(sample.stderr.strip())
        hf = subprocess.run([sys.executable, "-c", HF_CHECK], cwd=tmp, env=env, capture_output=True, text=True)
        out["--hf export works in transformers alone"] = hf.returncode == 0
        out["files in exports/x/hf"] = " ".join(sorted(p.name for p in (Path(tmp) / "exports/x/hf").iterdir()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", type=Path, help="another checkout to measure the same way")
    parser.add_argument("--data", type=Path, default=DATA, help="Tiny Shakespeare (default: ../shared/data/tinyshakespeare.txt)")
    args = parser.parse_args()
    results = {"this": measure(ROOT, args.data.resolve())}
    if args.ref:
        results["ref"] = measure(args.ref.resolve(), args.data.resolve())
    labels = list(results)
    print("| measure | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels))
    for key in results["this"]:
        print(f"| {key} | " + " | ".join(str(results[label][key]) for label in labels) + " |")


if __name__ == "__main__":
    main()
