"""Time and memory of one attention layer per type against sequence length (CPU by default).

    python bench/attention_scaling.py                          # 512 ... 16384, 3 interleaved rounds
    python bench/attention_scaling.py --lengths 1024,8192 --rounds 5 --types mha,linear
    python bench/attention_scaling.py --plot bench/attention_scaling.png     # also the time / memory plot

For every (type, length): forward + backward of one layer (width 128, 4 heads of 32, batch 1, fp32, causal
unless said), built and masked as a model's stack builds it, on random input, in a fresh process so the figure
is that case's own; the measurement is ``transformer.scaling`` (the compare report's ``--scaling`` uses the same).
The process resets its peak resident memory (``/proc/self/clear_refs``, Linux) after a warm-up at that length,
then times the passes and reports the growth of the peak over the resident size before them (MiB): activations,
scores and gradients of that case. Rounds are interleaved (round 1 of every case, then round 2, ...) and the
medians reported, with each type's time relative to softmax MHA at the same length and its density (keys a
query scores / length).

Types: ``mha`` (sdpa, causal), ``window`` (sliding window 256: banded tiles on long sequences), ``differential``,
``linear`` (RetNet decay, chunks of 64), ``topk`` (k = 64; its scores are dense, so a length where they pass
``transformer.scaling.DENSE_SCORE_LIMIT`` (1 GiB: 16384 with 4 heads) is skipped), ``strided`` (stride 128,
block-sparse), ``neighborhood`` (bidirectional, 255 keys, banded; against ``mha_bidir``) and ``switchhead``
(4 experts, top 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformer.scaling import Case, plot, scaling  # noqa: E402  (the measurement; this script only picks the cases)

WIDTH, HEADS = 128, 4
_BASE = {"embed_dim": WIDTH, "num_heads": HEADS, "num_layers": 1, "max_seq_len": 16384, "vocab_size": 256}
_CAUSAL, _BIDIR = {**_BASE, "kind": "lm"}, {**_BASE, "kind": "encoder"}
CASES = {
    "mha": Case({**_CAUSAL, "attention": {"type": "mha"}}),
    "mha_bidir": Case({**_BIDIR, "attention": {"type": "mha"}}),
    "window": Case({**_CAUSAL, "attention": {"type": "mha", "sliding_window": 256}}),
    "differential": Case({**_CAUSAL, "attention": {"type": "differential"}}),
    "linear": Case({**_CAUSAL, "attention": {"type": "linear", "linear_decay": True}}),
    "topk": Case({**_CAUSAL, "attention": {"type": "sparse", "sparse_pattern": "topk", "sparse_top_k": 64}}),
    "strided": Case({**_CAUSAL, "attention": {"type": "sparse", "sparse_pattern": "strided", "sparse_stride": 128}}),
    "neighborhood": Case({**_BIDIR, "attention": {"type": "neighborhood", "neighborhood_size": 255}}),
    "switchhead": Case({**_CAUSAL, "attention": {"type": "switchhead"}}),
}


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
    found = scaling({n: CASES[n] for n in names}, lengths, rounds=args.rounds, repeats=args.repeats,
                    progress=lambda line: print(line, file=sys.stderr))
    medians = {key: value for key, value in found.items() if "seconds" in value}
    for (name, length), value in found.items():
        if "skipped" in value:
            print(f"{name} at {length}: skipped ({value['skipped']})", file=sys.stderr)
    for name in names:
        layer = CASES[name].build()[1]
        for length in lengths:
            if (name, length) in medians:
                medians[(name, length)]["density"] = density(name, layer, length)
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
        series = {name: {n: medians[(name, n)] for n in lengths if (name, n) in medians} for name in names}
        plot(series, Path(args.plot), title=f"one attention layer (width {WIDTH}, {HEADS} heads, batch 1, fp32, CPU)")


if __name__ == "__main__":
    main()
