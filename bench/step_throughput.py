"""Training-step throughput at the reference "baby GPT" shape (4 layers, 4 heads, width 128, context 64,
batch 12, vocab 65, AdamW), CPU:

    python bench/step_throughput.py                  # eager and torch.compile
    python bench/step_throughput.py --no-compile --rounds 15

Three models of the same width, each a full step (forward, loss, backward, AdamW step, zero_grad) on the
same random batches:
  toolkit-llama   this toolkit's TransformerLM, Llama-style (RoPE, RMSNorm, SwiGLU, no biases)
  minimal-gpt2    bench/minimal_gpt.py: plain PyTorch GPT-2 style (LayerNorm, GELU, learned positions)
  hf-llama        transformers' LlamaForCausalLM with the same config (RoPE, RMSNorm, SwiGLU)
Rounds interleave the variants (order rotated); medians of per-step time over each round's steps.
Targets: toolkit-llama at least as fast as minimal-gpt2, and >= 1.25x hf-llama.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from minimal_gpt import MinimalGPT, adamw  # noqa: E402
from transformer.config import ModelConfig  # noqa: E402
from transformer.transformer_model import build_model  # noqa: E402

V, D, H, L, T, B = 65, 128, 4, 4, 64, 12


def toolkit_model():
    cfg = ModelConfig(vocab_size=V, embed_dim=D, num_heads=H, num_layers=L, max_seq_len=T, norm="rmsnorm", mlp="swiglu",
                      attention={"type": "mha", "positional": "rope"})
    return build_model(cfg), lambda m, x, y: m(x, y).loss


def hf_model():
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=ModelConfig(embed_dim=D, mlp="swiglu").mlp_hidden_dim,
                                   num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=H, max_position_embeddings=T,
                                   tie_word_embeddings=True, attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(cfg), lambda m, x, y: m(input_ids=x, labels=y).loss


def gpt_model():
    return MinimalGPT(V, D, H, L, T), lambda m, x, y: m(x, y)[1]


def make_step(factory, compile_: bool):
    torch.manual_seed(0)
    model, loss_fn = factory()
    model.train()
    opt = adamw(model, 1e-3)
    fn = torch.compile(loss_fn) if compile_ else loss_fn

    def step(x, y):
        loss = fn(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)) for _ in range(args.steps)]
    modes = [False] + ([] if args.no_compile else [True])
    print(f"# bench/step_throughput.py {' '.join(sys.argv[1:])}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32; batch {B} x {T}, width {D}, {L} layers, {H} heads, "
          f"vocab {V}; median of {args.rounds} interleaved rounds x {args.steps} steps\n")
    print("| mode | model | parameters | ms / step | tokens/s | vs minimal-gpt2 | vs hf-llama |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for compiled in modes:
        variants = {name: make_step(f, compiled) for name, f in
                    (("toolkit-llama", toolkit_model), ("minimal-gpt2", gpt_model), ("hf-llama", hf_model))}
        for step, _ in variants.values():  # warm-up (and compile)
            for x, y in batches[:3]:
                step(x, y)
        times = {name: [] for name in variants}
        names = list(variants)
        for r in range(args.rounds):
            for name in names[r % 3:] + names[: r % 3]:
                step = variants[name][0]
                t0 = time.perf_counter()
                for x, y in batches:
                    step(x, y)
                times[name].append((time.perf_counter() - t0) / len(batches))
        med = {n: statistics.median(t) for n, t in times.items()}
        for name in names:
            print(f"| {'compiled' if compiled else 'eager'} | {name} | {variants[name][1]:,} | {med[name] * 1e3:.2f} | "
                  f"{B * T / med[name]:,.0f} | {med['minimal-gpt2'] / med[name]:.2f}x | {med['hf-llama'] / med[name]:.2f}x |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
