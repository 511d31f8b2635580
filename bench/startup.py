"""Seconds from start to answer for the commands that should not wait for torch: ``train.py --help``,
``--print-config`` (embedded default and a config file), ``python -m transformer.runs``; with a bare
``python -c pass`` and ``python -c "import torch"`` as peers in the same rounds.

    python bench/startup.py                      # this checkout, 9 interleaved rounds, medians
    python bench/startup.py --ref /tmp/old       # also a second checkout (e.g. `git worktree add /tmp/old <commit>`)

Each measurement is a fresh interpreter; rounds interleave every command (and checkout) so machine noise
hits them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "train.py --help": ["train.py", "--help"],
    "train.py --print-config": ["train.py", "--print-config"],
    "train.py --config gqa.yaml --print-config": ["train.py", "--config", "configs/lm/gqa.yaml", "--print-config"],
    "python -m transformer.runs": ["-m", "transformer.runs", "."],
}
PEERS = {"python -c pass": ["-c", "pass"], "python -c 'import torch'": ["-c", "import torch"]}


def once(args: list[str], checkout: Path) -> float:
    """Seconds to answer; NaN when the command fails (e.g. a module the other checkout does not have)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=checkout, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(checkout)))
    seconds = time.perf_counter() - started
    return seconds if proc.returncode == 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--ref", type=Path, help="another checkout to time the same commands in")
    args = parser.parse_args()
    checkouts = {"this": ROOT} | ({"ref": args.ref.resolve()} if args.ref else {})
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, argv in PEERS.items():
            times.setdefault(("peer", name), []).append(once(argv, ROOT))
        for label, checkout in checkouts.items():
            for name, argv in COMMANDS.items():
                times.setdefault((label, name), []).append(once(argv, checkout))
    torch_s = statistics.median(times[("peer", "python -c 'import torch'")])
    print("| checkout | command | median s | vs `import torch` |\n|---|---|---:|---:|")
    for (label, name), values in times.items():
        median = statistics.median(values)
        if median != median:
            print(f"| {label} | `{name}` | (fails there) | |")
        else:
            print(f"| {label} | `{name}` | {median:.3f} | {median / torch_s:.2f} |")


if __name__ == "__main__":
    main()
