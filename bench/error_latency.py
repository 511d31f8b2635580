"""Time from start to a reported input error, through the real ``train.py`` (what a user waits for a typo).

    python bench/error_latency.py             # 5 runs of each kind, medians
    python bench/error_latency.py --runs 9

Kinds: an unknown config key, a value of the wrong type, a missing data file, a binary data file, a
missing resume checkpoint. Each run is a fresh interpreter (``python train.py ...``) in a fresh
temporary directory; the wall time includes interpreter start and the torch import, which is most
of it. Runs of the kinds are interleaved so that machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = {
    "unknown key": ["trainer.max_step=3"],
    "wrong type": ["trainer.max_steps=abc"],
    "missing data file": ["data.source=files", "data.path=nope.txt"],
    "binary data file": ["data.source=files", "data.path=binary.bin", "data.format=text"],
    "missing resume checkpoint": ["resume_from=nope.ckpt"],
}


def once(args: list[str], cwd: Path) -> tuple[float, int, str]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "out_dir=runs", *args], cwd=cwd, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return time.perf_counter() - started, proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    last: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "binary.bin").write_bytes(bytes(range(256)) * 16)
        for _ in range(args.runs):
            for kind, extra in KINDS.items():
                seconds, rc, line = once(extra, Path(tmp))
                assert rc != 0 and line.startswith("error:"), (kind, rc, line)
                times[kind].append(seconds)
                last[kind] = line
    print(f"| input error | median s ({args.runs} runs) | min | max | message |\n|---|---:|---:|---:|---|")
    for kind, values in times.items():
        print(f"| {kind} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} | {last[kind][:90]} |")
    every = [v for values in times.values() for v in values]
    print(f"\nall kinds: median {statistics.median(every):.2f} s over {len(every)} runs")


if __name__ == "__main__":
    main()
