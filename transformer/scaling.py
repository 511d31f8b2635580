"""Time and peak memory of attention layers against sequence length: the one measurement behind
``bench/attention_scaling.py`` and the compare report's scaling plot (``python -m transformer.compare RUNS
--scaling 512,1024,4096``).

A *case* is one self-attention layer exactly as a model's stack builds it (:func:`transformer.layers.self_attention`:
the run's type, options, pattern entry or per-layer override, causal for decoders), given by a model config
dictionary and a layer index. For every (case, length) one training step of that layer alone is timed: forward +
backward of ``[batch, length, D]`` random input, with the stack's mask and RoPE tables for that layer. Rounds
are interleaved (round 1 of every case and length, then round 2, ...) and the medians are kept, so a machine that
slows down mid-run slows every case alike.

Peak memory is the growth of the peak over what was resident before the timed passes: on CUDA the allocator's
peak (``max_memory_allocated``); on Linux CPUs the process's peak resident size, reset through
``/proc/self/clear_refs`` (elsewhere on CPU: not measured, NaN). By default every (case, length, round) runs in a
fresh process (spawn), so one case's allocator pools and peak never count for another.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import queue
import re
import statistics
import time
from dataclasses import dataclass
from typing import Callable

# Top-k attention scores every key before keeping k (dense by definition): above this many bytes of fp32
# scores per layer call a case is skipped rather than run out of memory.
DENSE_SCORE_LIMIT = 1 << 30


@dataclass(frozen=True)
class Case:
    """Layer ``layer`` (0-based) of the first stack of the model ``model`` (a ``model:`` config mapping).
    Encoders measure bidirectional attention, decoders causal; an encoder-decoder's encoder layers are measured."""

    model: dict
    layer: int = 0

    def build(self):
        from .config import ModelConfig
        from .layers import self_attention

        cfg = ModelConfig.from_dict(self.model)
        depth = cfg.stack_depths()[0]
        return cfg, self_attention(cfg, index=self.layer, num_layers=depth, causal=cfg.kind == "lm")

    def skipped_at(self, length: int, batch: int = 1) -> str | None:
        """Why this case is not run at ``length`` (None: it is)."""
        from .config import ModelConfig

        cfg = ModelConfig.from_dict(self.model)
        att = cfg.layer_attention(self.layer, cfg.stack_depths()[0])
        if att.type == "sparse" and att.sparse_pattern == "topk":
            score_bytes = batch * cfg.num_heads * length * length * 4
            if score_bytes > DENSE_SCORE_LIMIT:
                return f"top-k scores every key first: {score_bytes / 2**30:.1f} GiB of scores at {length}"
        return None


def _memory_kib() -> dict[str, int]:
    status = open("/proc/self/status").read()
    return {key: int(re.search(key + r":\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM")}


def _reset_peak() -> float | None:
    """Start a new peak; return what is resident now (MiB), or None where the peak cannot be read."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size (Linux >= 4.0)
        return _memory_kib()["VmRSS"] / 1024
    except OSError:
        return None


def measure(case: Case, length: int, *, batch: int = 1, repeats: int = 2, device: str = "cpu", seed: int = 0) -> dict:
    """One (case, length) in this process: ``seconds`` (the fastest of ``repeats`` forward + backward passes, after
    one warm-up pass) and ``peak_mib`` (peak growth over the timed passes; NaN where it cannot be read)."""
    import torch

    from .layers import StackContext

    torch.manual_seed(seed)
    cfg, layer = case.build()
    layer = layer.to(device)
    dev = torch.device(device)
    x = torch.randn(batch, length, cfg.embed_dim, device=dev, requires_grad=True)
    cuda = dev.type == "cuda"

    def step() -> None:
        ctx = StackContext(length, cfg.kind == "lm", dev)  # the stack's mask / RoPE tables for this layer
        out = layer(x, attention_mask=ctx.mask_for(layer.sliding_window, length), rope=ctx.rope_for(layer.rotary))
        out.float().sum().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)

    step()  # warm-up: kernels, allocator pools
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev) / 2**20
    else:
        before = _reset_peak()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated(dev) / 2**20 - before
    else:
        peak = _memory_kib()["VmHWM"] / 1024 - before if before is not None else math.nan
    return {"seconds": min(times), "peak_mib": peak}


def _child(case: Case, length: int, options: dict, results) -> None:
    try:
        results.put(measure(case, length, **options))
    except Exception as err:  # reported by the parent as the case's reason for being skipped
        results.put({"error": f"{type(err).__name__}: {err}".splitlines()[0]})


def _result_of(proc, results) -> dict | None:
    """The child's result, or None when it died without one (killed, e.g. by the out-of-memory killer)."""
    while True:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            if not proc.is_alive():
                try:
                    return results.get(timeout=1.0)  # its last put may still be in the pipe
                except queue.Empty:
                    return None


def scaling(cases: dict[str, Case], lengths: list[int], *, rounds: int = 3, repeats: int = 2, batch: int = 1,
            device: str = "cpu", isolate: bool = True, progress: Callable[[str], None] | None = None) -> dict:
    """Medians over ``rounds`` interleaved rounds: ``{(name, length): {"seconds", "peak_mib"}}``, and for a case
    that was not run ``{"skipped": why}`` (dense top-k scores over ``DENSE_SCORE_LIMIT``, or its process died,
    e.g. out of memory). ``isolate``: every measurement in a fresh process (spawn), as the figures should be."""
    options = dict(batch=batch, repeats=repeats, device=device)
    runs: dict[tuple[str, int], list[dict]] = {}
    skipped: dict[tuple[str, int], str] = {}
    for name, case in cases.items():
        for length in lengths:
            why = case.skipped_at(length, batch)
            if why:
                skipped[(name, length)] = why
    ctx = mp.get_context("spawn")
    started = time.time()
    for round_ in range(rounds):
        for length in lengths:
            for name, case in cases.items():
                if (name, length) in skipped:
                    continue
                if not isolate:
                    runs.setdefault((name, length), []).append(measure(case, length, **options))
                    continue
                results = ctx.Queue()
                proc = ctx.Process(target=_child, args=(case, length, options, results))
                proc.start()
                result = _result_of(proc, results)
                proc.join()
                if result is None or "error" in result:
                    skipped[(name, length)] = (result["error"] if result else
                                               f"its process died (exit {proc.exitcode}: killed, out of memory?)")
                    runs.pop((name, length), None)
                    continue
                runs.setdefault((name, length), []).append(result)
        if progress:
            progress(f"scaling: round {round_ + 1}/{rounds} done after {time.time() - started:.0f} s")
    medians: dict = {key: {k: statistics.median(r[k] for r in results) for k in ("seconds", "peak_mib")}
                     for key, results in runs.items() if key not in skipped}
    medians.update({key: {"skipped": why} for key, why in skipped.items()})
    return medians


def plot(series: dict[str, dict[int, dict]], path, *, title: str) -> None:
    """Two log-log panels, time and peak memory against length, one line per name (same colour in both).
    ``series[name][length]`` holds ``seconds`` and ``peak_mib`` (skipped lengths absent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, (name, points) in enumerate(series.items()):
        xs = sorted(n for n, p in points.items() if "seconds" in p)
        color = matplotlib.colormaps["tab10"](i % 10)
        left.plot(xs, [points[n]["seconds"] * 1e3 for n in xs], marker="o", label=name, color=color)
        mem = [n for n in xs if math.isfinite(points[n]["peak_mib"])]
        right.plot(mem, [max(points[n]["peak_mib"], 0.1) for n in mem], marker="o", label=name, color=color)
    for ax, label in ((left, "forward + backward (ms)"), (right, "peak memory growth (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    left.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
