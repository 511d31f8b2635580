"""Decode throughput, cache memory and prefill memory with the KV cache (CPU by default).

    python bench/generate.py                          # parts 1-3 at the default (small) sizes
    python bench/generate.py --new-tokens 128 --rounds 7
    python bench/generate.py --only real              # part 4 only: SmolLM-135M's shape vs transformers
    python bench/generate.py --only real --step-profile   # ... and where one decode step's time goes

Part 1 — attention types x cache kinds at the same width (Llama-style blocks: RoPE, RMSNorm, SwiGLU): greedy
**decode** tokens/s (the prefill excluded: ``batch * (n - 1) / (t(n new tokens) - t(1 new token))``, both through
``generate``) for mha / gqa / mqa / mla with the contiguous, paged, int8 and int4 caches, batch 1 and 8, and the
cache bytes per token of each kind. MLA is sized to GQA's cache bytes per token (``kv_lora_rank +
rope_head_dim = 2 * kv_heads * head_dim``) and runs twice: absorbed decode (the default with a cache) and
expanding keys/values from the latent (``mla_absorb=never``, the path before absorption existed).

Part 2 — prefill peak memory of a long prompt, one shot vs ``prefill_chunk``: each case runs in a fresh
process, and the figure is the growth of its peak resident memory over the prefill (the peak reset just before
through ``/proc/self/clear_refs``, so Linux only).

Part 2b — a batch of prompts of very different lengths: bytes each cache kind allocates vs the bytes of the
real tokens it holds, and whether the generated tokens equal the contiguous cache's.

Part 3 — the same small Llama config and weights in this toolkit and in ``transformers``: a random
``LlamaForCausalLM`` is saved with ``save_pretrained``, loaded here through
``transformer.interop.load_hf_model``, and both run greedy ``generate`` for the same prompt and
number of new tokens (``transformers``: ``do_sample=False``, its default KV cache). The two must
produce identical tokens; the table reports tokens/s and the ratio.

Part 4 — the same at SmolLM-135M's shape (30 layers x 576, GQA 9/3, SwiGLU 1536, vocab 49152, tied
embeddings, random weights), fp32 and bf16 weights, batch 1, 256-token prompt, where decoding reads every
weight once per token: tokens/s of both, and the achieved weight bandwidth (weight bytes x decode tokens/s)
as a fraction of this machine's memory bandwidth measured in the same process (a large tensor copy:
read + write bytes / time, median of 5).

Rounds are interleaved and medians reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformer.config import ModelConfig  # noqa: E402
from transformer.attention.cache_kinds import CACHE_KINDS  # noqa: E402
from transformer.generation import generate, prefill  # noqa: E402
from transformer.transformer_model import build_model  # noqa: E402


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def llama_cfg(args, attention: dict, max_seq_len: int | None = None) -> ModelConfig:
    return ModelConfig(vocab_size=args.vocab, embed_dim=args.width, num_heads=args.heads, num_layers=args.layers,
                       max_seq_len=max_seq_len or args.prompt + args.new_tokens, norm="rmsnorm", mlp="swiglu",
                       attention={"positional": "rope", **attention})


def attention_variants(args) -> dict[str, dict]:
    kv, d = args.heads // 4, args.width // args.heads
    rope_dim = d // 2
    latent = 2 * kv * d - rope_dim  # MLA sized to GQA's cache bytes per token: r + d_r = 2 * kv * d
    mla = {"type": "mla", "kv_lora_rank": latent, "rope_head_dim": rope_dim}
    return {
        "mha": {"type": "mha"},
        f"gqa (kv={kv})": {"type": "gqa", "num_kv_heads": kv},
        "mqa": {"type": "mqa"},
        f"mla (r={latent}, d_r={rope_dim}, absorbed)": mla,
        f"mla (r={latent}, d_r={rope_dim}, expanded)": {**mla, "mla_absorb": "never"},
    }


def cache_bytes_per_token(model, kind: str) -> int:
    """Bytes one more token costs the model's self-attention caches of ``kind`` (all layers, one sequence)."""
    return sum(c.self_attn.bytes_per_token() for c in model.new_caches(1, 1, kind=kind))


def decode_rate(times: dict, key, batch: int, n: int) -> float:
    """Decode tokens/s from the medians of ``generate`` with n new tokens and with 1 (the prefill + first token)."""
    return batch * (n - 1) / (times[(*key, n)] - times[(*key, 1)])


def part_attention_types(args) -> None:
    variants, n = attention_variants(args), args.new_tokens
    print("\n## Decode tokens/s by attention type and cache kind (this toolkit, greedy, prefill excluded)\n")
    print(f"Prompt {args.prompt} tokens; decode tokens/s = batch x {n - 1} / (t({n} new) - t(1 new)).\n")
    print("| attention | cache | B/token (all layers) | batch 1 tokens/s | batch 8 tokens/s |")
    print("|---|---|---:|---:|---:|")
    rates, sizes = {}, {}
    for batch in (1, 8):
        fns = {}
        for name, attention in variants.items():
            torch.manual_seed(0)
            model = build_model(llama_cfg(args, attention)).eval()
            prompt = torch.randint(0, args.vocab, (batch, args.prompt))
            for kind in CACHE_KINDS:
                sizes[(name, kind)] = cache_bytes_per_token(model, kind)
                for steps in (n, 1):
                    fns[(name, kind, steps)] = (lambda m, p, k, t: lambda: generate(m, p, t, temperature=0, cache=k))(model, prompt, kind, steps)
        medians = interleaved(fns, args.rounds)
        for name in variants:
            for kind in CACHE_KINDS:
                rates[(name, kind, batch)] = decode_rate(medians, (name, kind), batch, n)
    for name in variants:
        for kind in CACHE_KINDS:
            print(f"| {name} | {kind} | {sizes[(name, kind)]:,} | {rates[(name, kind, 1)]:,.1f} | {rates[(name, kind, 8)]:,.1f} |")


def _memory_kib() -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process, KiB (Linux)."""
    import re

    status = open("/proc/self/status").read()
    return {key: int(re.search(key + r":\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM")}


def _prefill_case(args, attention: dict, chunk: int | None, queue) -> None:
    """In a fresh process: peak resident memory growth (MiB) and time of one prefill. The peak is reset
    just before (``/proc/self/clear_refs``), so earlier allocations (model build, warm-up) do not hide it."""
    torch.manual_seed(0)
    model = build_model(llama_cfg(args, attention, max_seq_len=args.long_prompt)).eval()
    prompt = torch.randint(0, args.vocab, (args.prefill_batch, args.long_prompt))
    with torch.inference_mode():
        prefill(model, prompt[:, :16], model.new_caches(args.prefill_batch, 16))  # warm-up: kernels and pools set up
        caches = model.new_caches(args.prefill_batch, args.long_prompt)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak to the current resident size
        before = _memory_kib()["VmRSS"]
        t0 = time.perf_counter()
        prefill(model, prompt, caches, chunk=chunk)
        seconds = time.perf_counter() - t0
        peak = _memory_kib()["VmHWM"]
    queue.put(((peak - before) / 1024, seconds))


def part_prefill_memory(args) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    variants = attention_variants(args)
    chosen = {name: a for name, a in variants.items() if a["type"] in ("gqa", "mla") and a.get("mla_absorb") is None}
    print(f"\n## Prefill peak memory: {args.prefill_batch} x {args.long_prompt}-token prompts, one shot vs chunked\n")
    print("Growth of the process's peak resident memory over the prefill (fresh process per case; peak reset just "
          "before; the cache itself is allocated before), and the prefill time.\n")
    print("| attention | prefill_chunk | peak memory growth (MiB) | prefill s |")
    print("|---|---:|---:|---:|")
    for name, attention in chosen.items():
        for chunk in (None, 512, 128):
            queue = ctx.Queue()
            proc = ctx.Process(target=_prefill_case, args=(args, attention, chunk, queue))
            proc.start()
            mib, seconds = queue.get()
            proc.join()
            print(f"| {name.replace(', absorbed', '')} | {chunk or 'none (one shot)'} | {mib:,.1f} | {seconds:.2f} |")


def part_paged_memory(args) -> None:
    """A batch of prompts of very different lengths (left-padded): what each cache kind holds."""
    lengths = [512, 256, 128, 64, 32, 16, 8, 4]
    total, n = max(lengths), args.new_tokens
    torch.manual_seed(0)
    name, attention = next((k, v) for k, v in attention_variants(args).items() if v["type"] == "gqa")
    model = build_model(llama_cfg(args, attention, max_seq_len=total + n)).eval()
    ids = torch.randint(1, args.vocab, (len(lengths), total))
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, total - length:] = 1
    print(f"\n## Paged vs contiguous cache: {len(lengths)} prompts of {lengths} tokens (left-padded to {total}), "
          f"{n} new tokens, {name}\n")
    print("| cache | allocated MiB (all layers) | real tokens at the kind's bytes/token, MiB | allocated / used | same tokens as contiguous |")
    print("|---|---:|---:|---:|---|")
    results = {}
    starts = (mask == 0).sum(dim=1)  # left padding per row
    for kind, options in (("contiguous", {}), ("paged", {"block_size": 16}), ("int8", {}), ("int4", {})):
        results[kind] = generate(model, ids, n, temperature=0, attention_mask=mask, cache=kind, cache_options=options)
        # the same tokens through a cache of this kind, as generate fed them: what the cache then holds
        caches = model.new_caches(len(lengths), total + n, kind=kind, row_starts=starts, **options)
        with torch.inference_mode():
            prefill(model, results[kind], caches, torch.cat([mask, torch.ones_like(mask[:, :n])], dim=1))
        caches = [c.self_attn for c in caches]
        allocated = sum(c.allocated_bytes() for c in caches)
        used = (int(mask.sum()) + len(lengths) * n) * sum(c.bytes_per_token() for c in caches)  # real tokens only
        same = torch.equal(results[kind], results["contiguous"])
        print(f"| {kind}{' (block 16)' if kind == 'paged' else ''} | {allocated / 2**20:,.2f} | {used / 2**20:,.2f} | "
              f"{allocated / used:.2f} | {same} |")


def part_vs_transformers(args) -> None:
    try:
        import transformers
    except ImportError:
        print("\n(transformers not installed: skipping the comparison; pip install -e '.[dev]')")
        return
    from transformer.interop import load_hf_model

    transformers.logging.set_verbosity_error()
    kv = args.heads // 4
    hf_cfg = transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=args.width, intermediate_size=args.width * 8 // 3 // 8 * 8,
                                      num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=kv,
                                      max_position_embeddings=args.prompt + args.new_tokens, pad_token_id=0)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = load_hf_model(tmp).eval()
    print(f"\n## Same Llama weights: this toolkit vs transformers {transformers.__version__} `generate` "
          f"(width {args.width}, {args.layers} layers, {args.heads} heads / {kv} KV heads, vocab {args.vocab})\n")
    print(f"Tokens/s = batch x {args.new_tokens} new tokens / wall time, prefill of {args.prompt} tokens included.\n")
    print("| batch | toolkit tokens/s | transformers tokens/s | ratio | identical tokens |")
    print("|---:|---:|---:|---:|---|")
    for batch in (1, 8):
        prompt = torch.randint(1, args.vocab, (batch, args.prompt))
        mask = torch.ones_like(prompt)
        run_ours = lambda: generate(ours, prompt, args.new_tokens, temperature=0)
        run_hf = lambda: hf.generate(prompt, attention_mask=mask, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     do_sample=False, pad_token_id=0)
        with torch.no_grad():
            same = torch.equal(run_ours(), run_hf())
            medians = interleaved({"ours": run_ours, "hf": run_hf}, args.rounds)
        tps = {k: batch * args.new_tokens / v for k, v in medians.items()}
        print(f"| {batch} | {tps['ours']:,.1f} | {tps['hf']:,.1f} | {tps['ours'] / tps['hf']:.2f} | {same} |")


def memory_bandwidth(gib: float = 1.0, rounds: int = 5) -> float:
    """Bytes/s of a large tensor copy (read + write), median of ``rounds``: what decoding from memory can reach."""
    src = torch.ones(int(gib * 2**30) // 4)
    dst = torch.empty_like(src)
    times = []
    for _ in range(rounds + 1):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times[1:])


def part_real_size(args) -> None:
    try:
        import transformers
    except ImportError:
        print("\n(transformers not installed: skipping the SmolLM-shape comparison; pip install -e '.[dev]')")
        return
    from transformer.interop import load_hf_model

    transformers.logging.set_verbosity_error()
    prompt_len, n = 256, args.real_new_tokens
    hf_cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                                      tie_word_embeddings=True, rope_theta=10000.0, pad_token_id=0)
    torch.manual_seed(0)
    hf32 = transformers.LlamaForCausalLM(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf32.save_pretrained(tmp)
        ours32 = load_hf_model(tmp).eval()
    bandwidth = memory_bandwidth()
    print(f"\n## SmolLM-135M shape (30 x 576, GQA 9/3, vocab 49152, tied, random weights): this toolkit vs transformers "
          f"{transformers.__version__}, batch 1, {prompt_len}-token prompt\n")
    print(f"Memory bandwidth of this machine (1 GiB tensor copy, read + write): {bandwidth / 1e9:.1f} GB/s. Decode tokens/s "
          f"= {n - 1} / (t({n} new) - t(1 new)); weight bandwidth = weight bytes x decode tokens/s.\n")
    print("| weights | weight MB | toolkit decode tok/s | transformers decode tok/s | ratio | toolkit weight GB/s | "
          "fraction of copy bandwidth | identical tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    prompt = torch.randint(1, 49152, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(prompt)
    for dtype in (torch.float32, torch.bfloat16):
        ours, hf = ours32.to(dtype), hf32.to(dtype)
        weight_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in ours.parameters()}.values())
        fns = {}
        for steps in (n, 1):
            fns[("ours", steps)] = (lambda t: lambda: generate(ours, prompt, t, temperature=0))(steps)
            fns[("hf", steps)] = (lambda t: lambda: hf.generate(prompt, attention_mask=mask, max_new_tokens=t, min_new_tokens=t,
                                                                 do_sample=False, pad_token_id=0))(steps)
        with torch.inference_mode():
            same = torch.equal(fns[("ours", n)](), fns[("hf", n)]())
            medians = interleaved(fns, args.rounds)
        rate = {who: decode_rate(medians, (who,), 1, n) for who in ("ours", "hf")}
        achieved = weight_bytes * rate["ours"]
        print(f"| {str(dtype).removeprefix('torch.')} | {weight_bytes / 1e6:,.0f} | {rate['ours']:.2f} | {rate['hf']:.2f} | "
              f"{rate['ours'] / rate['hf']:.2f} | {achieved / 1e9:.2f} | {achieved / bandwidth:.0%} | {same} |")
    if args.compiled_step:
        compiled_step(ours32.to(torch.float32), prompt)
    if args.step_profile:
        step_profile(ours32.to(torch.float32), hf32.to(torch.float32), prompt, args.rounds)


def compiled_step(model, prompt) -> None:
    """One-token decode step, eager vs ``torch.compile(dynamic=True)`` (the compile time reported apart)."""
    step = torch.compile(lambda x, caches: model(x, caches=caches, num_logits=1).logits, dynamic=True)
    with torch.inference_mode():
        caches = model.new_caches(1, prompt.shape[1] + 64)
        model(prompt, caches=caches, num_logits=1)
        token = prompt[:, -1:]
        t0 = time.perf_counter()
        for _ in range(3):
            step(token, caches)
        compile_s = time.perf_counter() - t0
        times = {}
        for name, fn in (("eager", lambda: model(token, caches=caches, num_logits=1)), ("compiled", lambda: step(token, caches))):
            t0 = time.perf_counter()
            for _ in range(20):
                fn()
            times[name] = (time.perf_counter() - t0) / 20
    print(f"\nfp32 decode step: eager {times['eager'] * 1e3:.1f} ms, torch.compile(dynamic=True) {times['compiled'] * 1e3:.1f} ms "
          f"({times['eager'] / times['compiled']:.2f}x) after {compile_s:.0f} s of compiling and first steps")


def step_profile(model, hf, prompt, rounds: int) -> None:
    """One-token decode steps at the prompt's cache length, toolkit vs ``transformers`` (interleaved rounds of 10
    steps, medians); the same step's matrix-vector products called bare; and how fast one 3072 x 576 weight
    streams through ``F.linear`` in fp32 and bf16 and through oneDNN's linear (40 distinct weights, out of cache)."""
    import warnings

    import torch.nn.functional as F
    from transformers import DynamicCache

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        caches = model.new_caches(1, prompt.shape[1] + 32 * rounds)
        model(prompt, caches=caches, num_logits=1)
        hf_cache = DynamicCache(config=hf.config)
        hf(prompt, past_key_values=hf_cache, use_cache=True, logits_to_keep=1)
        token, position = prompt[:, -1:], [prompt.shape[1]]

        def ours():
            model(token, caches=caches, num_logits=1)

        def theirs():
            hf(token, past_key_values=hf_cache, use_cache=True, logits_to_keep=1, cache_position=torch.tensor(position))
            position[0] += 1

        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        inputs = {id(m): torch.randn(1, 1, m.in_features) for m in linears}

        def bare():
            for m in linears:
                F.linear(inputs[id(m)], m.weight)

        times = {"ours": [], "hf": [], "bare": []}
        for _ in range(rounds):
            for name, fn in (("ours", ours), ("hf", theirs), ("bare", bare)):
                t0 = time.perf_counter()
                for _ in range(10):
                    fn()
                times[name].append((time.perf_counter() - t0) / 10)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        kernels = {}  # name -> (one call on a weight, the weights it streams)
        for dtype in (torch.float32, torch.bfloat16):
            weights = [torch.randn(3072, 576, dtype=dtype) for _ in range(40)]
            x = torch.randn(1, 1, 576, dtype=dtype)  # a decode step's shape
            tag = str(dtype).removeprefix("torch.")
            kernels[f"F.linear {tag}"] = ((lambda x: lambda w: F.linear(x, w))(x), weights)
            if dtype == torch.bfloat16 and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
                kernels[f"oneDNN {tag}"] = ((lambda x: lambda w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""))(x[0]),
                                            weights)
        streamed = {name: [] for name in kernels}
        for _ in range(rounds):  # interleaved: a machine that slows down slows every kernel alike
            for name, (fn, weights) in kernels.items():
                fn(weights[0])
                t0 = time.perf_counter()
                for _ in range(3):
                    for w in weights:
                        fn(w)
                streamed[name].append(weights[0].numel() * weights[0].element_size() * 3 * len(weights) / (time.perf_counter() - t0))
        rates = {name: statistics.median(v) / 1e9 for name, v in streamed.items()}
    print(f"\nfp32 decode step at {prompt.shape[1]}+ cached tokens (median of {rounds} interleaved rounds of 10 steps): "
          f"toolkit {ms['ours']:.1f} ms, transformers {ms['hf']:.1f} ms; the toolkit's {len(linears)} matrix-vector "
          f"products called bare {ms['bare']:.1f} ms")
    print(f"weight streaming of 3072 x 576 matrix-vector products (40 distinct weights, median of {rounds} rounds): " +
          ", ".join(f"{name} {gbs:.1f} GB/s" for name, gbs in rates.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--long-prompt", type=int, default=2048, help="part 2: prompt length of the prefill memory case")
    parser.add_argument("--prefill-batch", type=int, default=4, help="part 2: prompts in the prefill memory case")
    parser.add_argument("--real-new-tokens", type=int, default=24, help="part 4: new tokens per run")
    parser.add_argument("--compiled-step", action="store_true", help="part 4: also time a torch.compile'd decode step")
    parser.add_argument("--step-profile", action="store_true", help="part 4: where one fp32 decode step's time goes "
                        "(toolkit vs transformers, the bare matrix-vector products, fp32 / bf16 kernel streaming rates)")
    parser.add_argument("--only", choices=("types", "prefill", "paged", "hf", "real"), action="append",
                        help="run only these parts (repeatable); default: types, prefill, paged, hf (--only real: part 4)")
    args = parser.parse_args()
    parts = args.only or ["types", "prefill", "paged", "hf"]
    print(f"# bench/generate.py {' '.join(sys.argv[1:])}")
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, fp32 unless stated, greedy, "
          f"prompt {args.prompt}, {args.new_tokens} new tokens, median of {args.rounds} interleaved rounds")
    if "types" in parts:
        part_attention_types(args)
    if "prefill" in parts:
        part_prefill_memory(args)
    if "paged" in parts:
        part_paged_memory(args)
    if "hf" in parts:
        part_vs_transformers(args)
    if "real" in parts:
        part_real_size(args)


if __name__ == "__main__":
    main()
