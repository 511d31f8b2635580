"""Decode throughput with the KV cache (CPU by default).

    python bench/generate.py                          # default sizes
    python bench/generate.py --new-tokens 128 --rounds 7

Part 1 — attention types at the same width (Llama-style blocks: RoPE, RMSNorm, SwiGLU): greedy
decode tokens/s for mha / gqa / mqa / mla, batch 1 and 8, with the cache bytes per token.

Part 2 — the same Llama config and weights in this toolkit and in ``transformers``: a random
``LlamaForCausalLM`` is saved with ``save_pretrained``, loaded here through
``transformer.interop.load_hf_model``, and both run greedy ``generate`` for the same prompt and
number of new tokens (``transformers``: ``do_sample=False``, its default KV cache). The two must
produce identical tokens; the table reports tokens/s and the ratio.

Rounds are interleaved and medians reported. Tokens/s = batch * new tokens / wall time (prefill included).
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
from transformer.generation import generate  # noqa: E402
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


def llama_cfg(args, attention: dict) -> ModelConfig:
    return ModelConfig(vocab_size=args.vocab, embed_dim=args.width, num_heads=args.heads, num_layers=args.layers,
                       max_seq_len=args.prompt + args.new_tokens, norm="rmsnorm", mlp="swiglu",
                       attention={"positional": "rope", **attention})


def part_attention_types(args) -> None:
    variants = {
        "mha": {"type": "mha"},
        f"gqa (kv={args.heads // 4})": {"type": "gqa", "num_kv_heads": args.heads // 4},
        "mqa": {"type": "mqa"},
        "mla": {"type": "mla"},
    }
    print("\n## Decode tokens/s by attention type (this toolkit, greedy, KV cache)\n")
    print("| attention | KV cache B/token (fp32, all layers) | batch | tokens/s |")
    print("|---|---:|---:|---:|")
    for batch in (1, 8):
        fns, models = {}, {}
        for name, attention in variants.items():
            torch.manual_seed(0)
            model = build_model(llama_cfg(args, attention)).eval()
            models[name] = model
            prompt = torch.randint(0, args.vocab, (batch, args.prompt))
            fns[name] = (lambda m, p: lambda: generate(m, p, args.new_tokens, temperature=0))(model, prompt)
        medians = interleaved(fns, args.rounds)
        for name, t in medians.items():
            print(f"| {name} | {models[name].kv_cache_bytes_per_token():,} | {batch} | {batch * args.new_tokens / t:,.1f} |")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-types", action="store_true", help="only the transformers comparison")
    args = parser.parse_args()
    print(f"# bench/generate.py {' '.join(sys.argv[1:])}")
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, fp32, greedy, "
          f"prompt {args.prompt}, {args.new_tokens} new tokens, median of {args.rounds} interleaved rounds")
    if not args.skip_types:
        part_attention_types(args)
    part_vs_transformers(args)


if __name__ == "__main__":
    main()
