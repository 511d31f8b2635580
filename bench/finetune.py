"""LoRA fine-tuning step: this toolkit vs transformers + peft, and the memory of LoRA / full / QLoRA, CPU.

    python bench/finetune.py                       # SmolLM-135M's shape, sequence 256, batch 1
    python bench/finetune.py --layers 4 --rounds 3 # a quick look

Shape: SmolLM-135M (30 layers x 576 wide, GQA 9/3 heads of 64, MLP 1536, vocab 49152, tied embeddings),
random init (no download), RoPE theta 10000. Both sides are the same weights: transformers'
``LlamaForCausalLM`` is saved with ``save_pretrained`` and loaded here with ``load_hf_model``.

* speed: one training step (forward, loss, backward, AdamW step, zero_grad) with LoRA r=16, alpha=32 on
  every linear layer (q, k, v, o, gate, up, down), the same batch, the same ``torch.optim.AdamW`` over
  the adapter parameters. Rounds interleave the two (order alternated); medians; the ratio is
  peft-step / toolkit-step. Target >= 1.3x. Two batches: every position trained (language modelling),
  and chat-style (the first 75% of positions are prompt, label -100, as ``data.train_on=assistant``
  gives): there the toolkit's fine-tuning step runs the head only where a target is
  (``logits_for_targets``, what ``LanguageModelModule`` does for instruction / chat data), peft computes it
  everywhere (transformers' ``LlamaForCausalLM`` has no such option).
* memory: peak RSS during a training step (sampled every 2 ms, second step, after the optimizer state
  exists), each configuration in a fresh process: toolkit LoRA vs toolkit full fine-tuning (target
  <= 0.6x); base weight bytes of QLoRA (NF4) vs LoRA (fp32), linear layers and whole model (<= 0.35x).
* trainable parameters and the peft-format adapter file size.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_base(directory: Path, layers: int) -> None:
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                                   num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=2048,
                                   tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory)


def toolkit(directory: Path, method: str):
    from transformer.adapters import FinetuneConfig, apply_adapters
    from transformer.interop import load_hf_model

    model = load_hf_model(directory)
    if method != "full":
        apply_adapters(model, FinetuneConfig(method=method, r=16, alpha=32, targets=["all-linear"]))
    model.train()
    step = lambda x, y: model(x, y, logits_for_targets=bool((y == -100).any())).loss  # as the training module
    return model, step


def hf_peft(directory: Path):
    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa")
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))
    model.train()

    def step(x, y):  # transformers shifts labels itself: labels[t] is the target of position t - 1
        labels = torch.cat([torch.full_like(y[:, :1], -100), y], dim=1)[:, :-1]
        return model(input_ids=x, labels=labels).loss  # (its last position's target is dropped: 255 vs 256)

    return model, step


def optimizer(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)


def batch(seq: int, size: int, prompt_share: float = 0.0, seed: int = 1):
    """``(x [b, seq], y [b, seq])``; the first ``prompt_share`` of each row's targets are -100."""
    ids = torch.randint(0, 49152, (size, seq + 1), generator=torch.Generator().manual_seed(seed))
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[:, : int(prompt_share * seq)] = -100
    return x, y


def train_step(step, opt, xy) -> None:
    loss = step(*xy)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_memory(directory: Path, method: str, seq: int, batch: int) -> dict:
    """(child process) peak RSS during the second training step, and weight bytes."""
    from transformer.adapters.quant import weight_bytes

    model, step = toolkit(directory, method)
    opt = optimizer(model)
    x = globals()["batch"](seq, batch)
    train_step(step, opt, x)  # the optimizer state exists after this
    gc.collect()
    before = rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    watcher = threading.Thread(target=sample)
    watcher.start()
    train_step(step, opt, x)
    done.set()
    watcher.join()
    linear = sum(weight_bytes(m.base.weight if hasattr(m, "base") else m.weight) for name, m in model.named_modules()
                 if name.endswith(("qkv_proj", "out_proj", "w_in", "w_out")))
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen or ".lora_" in name:
            continue
        seen.add(id(p))
        total += weight_bytes(p)
    return {"peak_rss": peak[0], "rss_before_step": before, "linear_weight_bytes": linear, "base_weight_bytes": total,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    parser.add_argument("--memory-child", nargs=2, metavar=("DIR", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(measure_memory(Path(args.memory_child[0]), args.memory_child[1], args.seq, args.batch)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        save_base(base, args.layers)
        print(f"SmolLM-135M shape, {args.layers} layers, sequence {args.seq}, batch {args.batch}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}")
        ours, ours_step = toolkit(base, "lora")
        theirs, theirs_step = hf_peft(base)
        ours_opt, theirs_opt = optimizer(ours), optimizer(theirs)
        trainable = sum(p.numel() for p in ours.parameters() if p.requires_grad)
        trainable_peft = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
        batches = {"all positions trained": batch(args.seq, args.batch), "chat-style, 75% prompt": batch(args.seq, args.batch, 0.75)}
        x = batches["all positions trained"][0]
        with torch.no_grad():  # the same function before any step: same weights, zero B
            ours.eval(), theirs.eval()
            gap = (ours(x).logits - theirs(input_ids=x).logits).abs().max().item()
            ours.train(), theirs.train()
        print(f"logits before training, toolkit vs transformers+peft: max |diff| = {gap:.2e}")
        for label, xy in batches.items():
            for step, opt in ((ours_step, ours_opt), (theirs_step, theirs_opt)):  # warm-up
                train_step(step, opt, xy)
            times = {"toolkit": [], "peft": []}
            for r in range(args.rounds):
                order = [("toolkit", ours_step, ours_opt), ("peft", theirs_step, theirs_opt)]
                for name, step, opt in (order if r % 2 == 0 else order[::-1]):
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        train_step(step, opt, xy)
                    times[name].append((time.perf_counter() - start) / args.steps)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"LoRA step, {label}: toolkit {med['toolkit'] * 1e3:8.1f} ms   transformers+peft {med['peft'] * 1e3:8.1f} ms"
                  f"   speed-up {med['peft'] / med['toolkit']:.2f}x (target >= 1.3x)  [rounds: "
                  f"{', '.join(f'{a * 1e3:.0f}/{b * 1e3:.0f}' for a, b in zip(times['toolkit'], times['peft']))}]")
        print(f"trainable parameters: toolkit {trainable:,}, peft {trainable_peft:,}")
        from transformer.adapters import FinetuneConfig
        from transformer.adapters.peft_format import ADAPTER_WEIGHTS, save_peft_adapter

        save_peft_adapter(ours, Path(tmp) / "adapter", FinetuneConfig(method="lora", r=16, alpha=32, targets=["all-linear"]))
        print(f"adapter file: {(Path(tmp) / 'adapter' / ADAPTER_WEIGHTS).stat().st_size / 1e6:.1f} MB")
        del ours, theirs, ours_opt, theirs_opt
        gc.collect()

        memory = {}
        for method in ("lora", "full", "qlora"):
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(base), method, "--seq", str(args.seq),
                                  "--batch", str(args.batch)], capture_output=True, text=True, check=True)
            memory[method] = json.loads(out.stdout.strip().splitlines()[-1])
        mb = lambda b: f"{b / 2**20:,.0f} MiB"
        print(f"peak RSS in a step: LoRA {mb(memory['lora']['peak_rss'])}, full {mb(memory['full']['peak_rss'])}, "
              f"QLoRA {mb(memory['qlora']['peak_rss'])}; LoRA / full = "
              f"{memory['lora']['peak_rss'] / memory['full']['peak_rss']:.2f} (target <= 0.6)")
        print(f"base weight bytes, QLoRA (NF4) / LoRA (fp32): linear layers "
              f"{memory['qlora']['linear_weight_bytes'] / memory['lora']['linear_weight_bytes']:.3f} "
              f"({mb(memory['qlora']['linear_weight_bytes'])} vs {mb(memory['lora']['linear_weight_bytes'])}); whole model "
              f"{memory['qlora']['base_weight_bytes'] / memory['lora']['base_weight_bytes']:.3f} "
              f"(embeddings stay fp32; target <= 0.35)")


if __name__ == "__main__":
    main()
