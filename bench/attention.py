"""Forward+backward time of each attention backend and type against a bare
``torch.nn.functional.scaled_dot_product_attention`` call on the same tensors (CPU by default).

    python bench/attention.py                        # default shapes, incl. seq 1024 and 4096
    python bench/attention.py --shapes 2x1024x8x64 --rounds 9

Rows per shape (batch x seq x heads x head_dim, causal):
  bare          F.scaled_dot_product_attention(q, k, v, is_causal=True): the baseline
  backend=*     this package's kernel wrapper on the same q/k/v, mask object built per call
                (what one layer pays per forward); flex is forward-only on CPU (no CPU backward)
  layer=*       a whole layer (projections + RoPE + kernel) on x [b, s, heads*head_dim]; the ratio
                shows what the projections add on top of the kernel, not wrapper overhead

Rounds are interleaved (every variant once per round, order rotated) and the median is reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformer.attention import AttentionMask, get_attention  # noqa: E402
from transformer.attention.sdpa import ATTENTION_BACKENDS  # noqa: E402


def fwd_bwd(fn, inputs):
    for t in inputs:
        t.grad = None
    fn().sum().backward()


def variants(b, s, h, d, include_eager):
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    scale = d**-0.5
    out = {"bare": lambda: fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v))}

    def backend(name):
        kernel = ATTENTION_BACKENDS[name]
        return lambda: fwd_bwd(lambda: kernel(q, k, v, AttentionMask.build(s, causal=True), None, scale=scale).output, (q, k, v))

    out["backend=sdpa"] = backend("sdpa")
    if include_eager:
        out["backend=eager"] = backend("eager")
    x = torch.randn(b, s, h * d, requires_grad=True)
    for attention_type in ("mha", "gqa", "mqa", "mla"):
        extra = {"num_kv_heads": max(1, h // 4)} if attention_type == "gqa" else {}
        layer = get_attention(attention_type, h * d, h, causal=True, positional="rope", **extra)
        out[f"layer={attention_type}"] = (lambda layer: lambda: fwd_bwd(lambda: layer(x), [x, *layer.parameters()]))(layer)
    return out


def flex_forward(b, s, h, d):
    """FlexAttention has no CPU backward: time its compiled forward against the bare forward."""
    q, k, v = (torch.randn(b, h, s, d) for _ in range(3))
    mask = AttentionMask.build(s, causal=True)
    kernel = ATTENTION_BACKENDS["flex"]
    with torch.no_grad():
        kernel(q, k, v, mask, None, scale=d**-0.5)  # compile outside the timed rounds
    return {
        "bare fwd": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "backend=flex fwd": lambda: kernel(q, k, v, mask, None, scale=d**-0.5),
    }


def run(fns, rounds, warmup=1):
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate so no variant always runs first
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["8x256x8x64", "2x1024x8x64", "1x4096x8x64"], help="BxSxHxD")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--flex", action="store_true", help="also time the compiled flex forward (compiles per shape)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# bench/attention.py  {' '.join(sys.argv[1:])}")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"fp32, causal, forward+backward, median of {args.rounds} interleaved rounds\n")
    print("| shape (b x s x h x d) | variant | ms | ratio vs bare |")
    print("|---|---|---:|---:|")
    for shape in args.shapes:
        b, s, h, d = map(int, shape.split("x"))
        torch.manual_seed(0)
        medians = run(variants(b, s, h, d, include_eager=s <= 4096), args.rounds)
        for name, t in medians.items():
            print(f"| {shape} | {name} | {t * 1e3:.2f} | {t / medians['bare']:.3f} |")
        if args.flex:
            with torch.no_grad():
                fwd = run(flex_forward(b, s, h, d), args.rounds)
            print(f"| {shape} | backend=flex (forward only) | {fwd['backend=flex fwd'] * 1e3:.2f} | "
                  f"{fwd['backend=flex fwd'] / fwd['bare fwd']:.3f} vs bare fwd |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
