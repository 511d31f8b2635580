"""Training-step throughput at the reference "baby GPT" shape (4 layers, 4 heads, width 128, context 64,
batch 12, vocab 65, AdamW), CPU:

    python bench/step_throughput.py                  # eager and torch.compile
    python bench/step_throughput.py --no-compile --rounds 15
    python bench/step_throughput.py --no-compile --ablation   # where the Llama pieces' cost goes

Models of the same width, each a full step (forward, loss, backward, AdamW step, zero_grad) on the same
random batches, each with the optimizer it is used with:
  toolkit-llama        this toolkit's TransformerLM, Llama-style (RoPE, RMSNorm, SwiGLU, no biases), with the
                       toolkit's optimizer (transformer.training.optim.build_optimizer: fused AdamW on CPU)
  minimal-gpt2         bench/minimal_gpt.py: plain PyTorch GPT-2 style (LayerNorm, GELU, learned positions),
                       plain torch.optim.AdamW as nanoGPT uses it on CPU (its fused flag is CUDA-only)
  minimal-gpt2+fused   the same with fused AdamW: the architecture-only comparison
  hf-llama             transformers' LlamaForCausalLM with the same config, fused AdamW (the default
                       optimizer of transformers' Trainer with torch >= 2.8)
  kernel-floor         only the step's matmuls and SDPA calls (same shapes, forward + backward): a lower
                       bound for any implementation; hf-llama / kernel-floor caps any speed-up over hf-llama
Rounds interleave the variants (order rotated); medians of per-step time over each round's steps.
Targets: toolkit-llama at least as fast as minimal-gpt2, and >= 1.25x hf-llama.
"""

from __future__ import annotations

import argparse
import functools
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
from transformer.training.config import OptimConfig  # noqa: E402
from transformer.training.optim import build_optimizer  # noqa: E402
from transformer.transformer_model import build_model  # noqa: E402

V, D, H, L, T, B = 65, 128, 4, 4, 64, 12


def toolkit_model(**arch):
    """Llama-style by default; ``arch`` overrides ModelConfig fields (the ablation swaps pieces one at a time)."""
    fields = dict(norm="rmsnorm", mlp="swiglu", attention={"type": "mha", "positional": "rope"})
    fields.update(arch)
    cfg = ModelConfig(vocab_size=V, embed_dim=D, num_heads=H, num_layers=L, max_seq_len=T, **fields)
    return build_model(cfg), lambda m, x, y: m(x, y).loss


GPT2_STYLE = dict(norm="layernorm", mlp="gelu", position="learned", bias=True, attention={"type": "mha", "positional": "none", "bias": True})
ABLATION = {  # name -> ModelConfig fields; each row adds one Llama piece to the GPT-2-style toolkit model
    "toolkit-gpt2style": GPT2_STYLE,
    "+rmsnorm": dict(GPT2_STYLE, norm="rmsnorm"),
    "+rmsnorm+swiglu": dict(GPT2_STYLE, norm="rmsnorm", mlp="swiglu"),
    "+rmsnorm+swiglu+rope": dict(GPT2_STYLE, norm="rmsnorm", mlp="swiglu", position="none",
                                 attention={"type": "mha", "positional": "rope", "bias": True}),
    "toolkit-llama": {},
}


def hf_model():
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=ModelConfig(embed_dim=D, mlp="swiglu").mlp_hidden_dim,
                                   num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=H, max_position_embeddings=T,
                                   tie_word_embeddings=True, attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(cfg), lambda m, x, y: m(input_ids=x, labels=y).loss


def gpt_model():
    return MinimalGPT(V, D, H, L, T), lambda m, x, y: m(x, y)[1]


def floor_step():
    """The step's unavoidable kernels alone: every matmul of the Llama-shaped model (each Linear's forward and
    its two backward products, the tied head) and causal SDPA forward + backward per layer, on random data.
    No model step can be faster than this; ``hf-llama / kernel-floor`` bounds any speed-up over hf-llama."""
    model, _ = toolkit_model()
    n = B * T
    mats = []
    for lin in [m for m in model.modules() if isinstance(m, torch.nn.Linear)]:
        out_f, in_f = lin.weight.shape
        w, x, g = lin.weight.detach().clone(), torch.randn(n, in_f), torch.randn(n, out_f)
        mats.append((w, x, g))
    head_dim = D // H
    qkv = [torch.randn(B, H, T, head_dim, requires_grad=True) for _ in range(3)]
    grad_out = torch.randn(B, H, T, head_dim)

    def step(x_ids, y_ids):
        for w, x, g in mats:
            torch.mm(x, w.t()), torch.mm(g, w), torch.mm(g.t(), x)
        for _ in range(L):
            out = torch.nn.functional.scaled_dot_product_attention(*qkv, is_causal=True)
            torch.autograd.grad(out, qkv, grad_out)

    return step, 0


def make_step(factory, compile_: bool, optimizer: str):
    """``optimizer``: ``toolkit`` (build_optimizer), ``plain`` or ``fused`` torch AdamW, all lr 1e-3, beta2 0.99, wd 0.1."""
    torch.manual_seed(0)
    if factory is floor_step:
        return floor_step()
    model, loss_fn = factory()
    model.train()
    if optimizer == "toolkit":
        opt = build_optimizer(model, OptimConfig(lr=1e-3, beta2=0.99, weight_decay=0.1))
    else:
        opt = adamw(model, 1e-3, fused=optimizer == "fused")
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
    parser.add_argument("--ablation", action="store_true",
                        help="instead: the toolkit in GPT-2 style, then adding RMSNorm, SwiGLU, RoPE, and no biases (all fused AdamW)")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)) for _ in range(args.steps)]
    modes = [False] + ([] if args.no_compile else [True])
    print(f"# bench/step_throughput.py {' '.join(sys.argv[1:])}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32; batch {B} x {T}, width {D}, {L} layers, {H} heads, "
          f"vocab {V}; median of {args.rounds} interleaved rounds x {args.steps} steps\n")
    print("| mode | model | parameters | ms / step | tokens/s | vs minimal-gpt2 | vs minimal-gpt2+fused | vs hf-llama |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for compiled in modes:
        plan = [("toolkit-llama", toolkit_model, "toolkit"), ("minimal-gpt2", gpt_model, "plain"),
                ("minimal-gpt2+fused", gpt_model, "fused"), ("hf-llama", hf_model, "fused"), ("kernel-floor", floor_step, "")]
        if args.ablation:
            plan = [(n, functools.partial(toolkit_model, **a), "fused") for n, a in ABLATION.items()]
            plan += [("minimal-gpt2", gpt_model, "plain"), ("minimal-gpt2+fused", gpt_model, "fused"), ("hf-llama", hf_model, "fused")]
        variants = {name: make_step(f, compiled, opt) for name, f, opt in plan}
        for step, _ in variants.values():  # warm-up (and compile)
            for x, y in batches[:3]:
                step(x, y)
        times = {name: [] for name in variants}
        names = list(variants)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                step = variants[name][0]
                t0 = time.perf_counter()
                for x, y in batches:
                    step(x, y)
                times[name].append((time.perf_counter() - t0) / len(batches))
        med = {n: statistics.median(t) for n, t in times.items()}
        for name in names:
            params = f"{variants[name][1]:,}" if variants[name][1] else "-"
            print(f"| {'compiled' if compiled else 'eager'} | {name} | {params} | {med[name] * 1e3:.2f} | "
                  f"{B * T / med[name]:,.0f} | {med['minimal-gpt2'] / med[name]:.2f}x | {med['minimal-gpt2+fused'] / med[name]:.2f}x | "
                  f"{med['hf-llama'] / med[name]:.2f}x |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
