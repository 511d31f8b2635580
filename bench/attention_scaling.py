"""Time and memory of one attention layer per type against sequence length (CPU by default).

    python bench/attention_scaling.py                          # 512 ... 16384, 3 interleaved rounds
    python bench/attention_scaling.py --lengths 1024,8192 --rounds 5 --types mha,linear
    python bench/attention_scaling.py --plot bench/attention_scaling.png     # also the time / memory plot

For every (type, length): forward + backward of one layer (width 128, 4 heads of 32, batch 1, fp32, causal
unless said) on random input, in a fresh process so the figure is that case's own. The process resets its peak
resident memory (``/proc/self/clear_refs``, Linux) after a warm-up at that length, then times the passes and
reports the growth of the peak over the resident size before them (MiB): activations, scores and gradients of
that case. Rounds are interleaved (round 1 of every case, then round 2, ...) and the medians reported, with
each type's time relative to softmax MHA at the same length and its density (keys a query scores / length).

Types: ``mha`` (sdpa, causal), ``window`` (sliding window 256: dense masked sdpa), ``differential``, ``linear``
(RetNet decay, chunks of 64), ``topk`` (k = 64; scores are dense, so lengths above 4096 are skipped: 16384² fp32
scores alone are 1 GiB per head), ``strided`` (stride 128, block-sparse), ``neighborhood`` (bidirectional, 255
keys, banded; against ``mha_bidir``) and ``switchhead`` (4 experts, top 2).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDTH, HEADS = 128, 4
CASES = {
    "mha": ("mha", {"causal": True}),
    "mha_bidir": ("mha", {}),
    "window": ("mha", {"causal": True, "sliding_window": 256}),
    "differential": ("differential", {"causal": True}),
    "linear": ("linear", {"causal": True, "linear_decay": True}),
    "topk": ("sparse", {"causal": True, "sparse_pattern": "topk", "sparse_top_k": 64}),
    "strided": ("sparse", {"causal": True, "sparse_pattern": "strided", "sparse_stride": 128}),
    "neighborhood": ("neighborhood", {"neighborhood_size": 255}),
    "switchhead": ("switchhead", {"causal": True}),
}
TOPK_MAX_LEN = 4096


def _memory_kib() -> dict[str, int]:
    status = open("/proc/self/status").read()
    return {key: int(re.search(key + r":\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM")}


def density(name: str, layer, length: int) -> float:
    """Keys a query scores, over the length (1.0 for dense softmax; the state update for linear is not a key)."""
    if name == "window":
        return min(length, 256) / length
    if name == "strided":
        return layer.keys_per_query(length) / length
    if name == "neighborhood":
        return min(length, layer.size) / length
    if name == "linear":
        return min(layer.chunk, length) / length
    return 1.0


def _case(name: str, length: int, repeats: int, queue) -> None:
    import torch

    from transformer.attention import get_attention

    torch.manual_seed(0)
    attention_type, options = CASES[name]
    layer = get_attention(attention_type, WIDTH, HEADS, **options)
    x = torch.randn(1, length, WIDTH, requires_grad=True)
    layer(x).sum().backward()  # warm-up: kernels, allocator pools
    x.grad = None
    layer.zero_grad(set_to_none=True)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _memory_kib()["VmRSS"]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        layer(x).sum().backward()
        times.append(time.perf_counter() - t0)
        x.grad = None
        layer.zero_grad(set_to_none=True)
    queue.put({"seconds": min(times), "peak_mib": (_memory_kib()["VmHWM"] - before) / 1024,
               "density": density(name, layer, length)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
    parser.add_argument("--types", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="passes per process (the fastest counts)")
    parser.add_argument("--json", help="also write the medians here")
    parser.add_argument("--plot", help="also draw time and memory vs length (log-log) into this PNG")
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    names = [n for n in args.types.split(",") if n]
    unknown = set(names) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown types {sorted(unknown)}; known: {', '.join(CASES)}")
    ctx = mp.get_context("spawn")
    results: dict[tuple[str, int], list[dict]] = {}
    started = time.time()
    for round_ in range(args.rounds):
        for length in lengths:
            for name in names:
                if name == "topk" and length > TOPK_MAX_LEN:
                    continue
                queue = ctx.Queue()
                proc = ctx.Process(target=_case, args=(name, length, args.repeats, queue))
                proc.start()
                proc.join()
                if proc.exitcode != 0:
                    print(f"{name} at {length}: the process failed (exit {proc.exitcode})", file=sys.stderr)
                    continue
                results.setdefault((name, length), []).append(queue.get())
        print(f"round {round_ + 1}/{args.rounds} done after {time.time() - started:.0f} s", file=sys.stderr)
    medians = {key: {k: statistics.median(r[k] for r in runs) for k in ("seconds", "peak_mib", "density")}
               for key, runs in results.items()}
    print(f"# one layer, width {WIDTH}, {HEADS} heads, batch 1, fp32, forward + backward; median of {args.rounds} "
          f"interleaved rounds (fastest of {args.repeats} passes each)\n")
    print("| type | " + " | ".join(f"{n} ms" for n in lengths) + " | " + " | ".join(f"{n} MiB" for n in lengths) + " |")
    print("|---|" + "---:|" * (2 * len(lengths)))
    for name in names:
        ms = [f"{medians[(name, n)]['seconds'] * 1e3:.1f}" if (name, n) in medians else "-" for n in lengths]
        mib = [f"{medians[(name, n)]['peak_mib']:.0f}" if (name, n) in medians else "-" for n in lengths]
        print(f"| {name} | " + " | ".join(ms) + " | " + " | ".join(mib) + " |")
    print("\n| type | growth 1024 -> 8192 (time) | (memory) | time / softmax at the longest common length | density there |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        growth = mem = "-"
        if (name, 1024) in medians and (name, 8192) in medians:
            growth = f"{medians[(name, 8192)]['seconds'] / medians[(name, 1024)]['seconds']:.1f}x"
            mem = f"{medians[(name, 8192)]['peak_mib'] / max(medians[(name, 1024)]['peak_mib'], 1e-9):.1f}x"
        peer = "mha_bidir" if name == "neighborhood" else "mha"
        common = [n for n in lengths if (name, n) in medians and (peer, n) in medians]
        ratio = dens = "-"
        if common:
            n = common[-1]
            ratio = f"{medians[(name, n)]['seconds'] / medians[(peer, n)]['seconds']:.3f} (at {n}, vs {peer})"
            dens = f"{medians[(name, n)]['density']:.3f}"
        print(f"| {name} | {growth} | {mem} | {ratio} | {dens} |")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{k[0]}@{k[1]}": v for k, v in medians.items()}, indent=1))
    if args.plot:
        plot(medians, names, lengths, Path(args.plot))


def plot(medians: dict, names: list[str], lengths: list[int], path: Path) -> None:
    """Two log-log panels, time and peak memory against length, one line per type (same colour in both)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, name in enumerate(names):
        xs = [n for n in lengths if (name, n) in medians]
        color = matplotlib.colormaps["tab10"](i % 10)
        left.plot(xs, [medians[(name, n)]["seconds"] * 1e3 for n in xs], marker="o", label=name, color=color)
        right.plot(xs, [max(medians[(name, n)]["peak_mib"], 0.1) for n in xs], marker="o", label=name, color=color)
    for ax, label in ((left, "forward + backward (ms)"), (right, "peak memory growth (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    left.legend(fontsize=7)
    fig.suptitle(f"one attention layer (width {WIDTH}, {HEADS} heads, batch 1, fp32, CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
