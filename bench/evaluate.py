"""Log-likelihood throughput of ``transformer.evaluate``'s lm-eval model vs lm-eval's own ``hf`` backend (CPU).

    python bench/evaluate.py                      # default: Llama-style 6 x 384, vocab 8192, 256-token requests
    python bench/evaluate.py --rounds 5 --docs 100 --layers 6 --width 384 --vocab 8192 --length 256

One random ``LlamaForCausalLM`` (GQA, RoPE, RMSNorm, SwiGLU) is saved with ``save_pretrained`` beside a byte-level
BPE tokenizer trained on Tiny Shakespeare; both backends load that same directory (the toolkit through its
Hugging Face import). The requests are the built-in probes' (passkey, associative recall, copying at
``--length`` tokens; 4 choices per document): every (context, choice) pair is one ``loglikelihood`` request, as
lm-eval issues them (``--distinct``: only the first choice of each document, so no two requests share a context
and the toolkit cannot run a context once for several choices). Each round times both backends on the same requests (interleaved: ours, theirs, ours, ...;
batch size 16 for both, fp32, ``torch.inference_mode``) and the table gives the median tokens/s (context +
continuation tokens per second) and the ratio. The scores must agree (max |difference| printed) — a faster
backend that computed something else would not count.

Data: ../shared/data/tinyshakespeare.txt, or --text FILE (the tokenizer's training text only).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_model_dir(out: Path, *, layers: int, width: int, vocab: int, length: int, text: str) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from transformer.data.tokenizer import BPETokenizer

    tokenizer = BPETokenizer.train(iter([text]), vocab)
    tokenizer.save(out / "tokenizer.json")
    torch.manual_seed(0)
    heads = width // 64
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=width, intermediate_size=int(width * 8 / 3) // 64 * 64,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 3),
                         max_position_embeddings=length, tie_word_embeddings=True, eos_token_id=tokenizer.eos_id,
                         bos_token_id=tokenizer.eos_id)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def requests(tokenizer, *, docs: int, length: int, distinct: bool = False):
    from lm_eval.api.instance import Instance

    from transformer.evaluation.probes import PROBES, probe_tasks

    pairs = [(d["context"], c) for task in probe_tasks([(p, length) for p in PROBES], tokenizer, docs=docs, seed=0)
             for d in task.docs for c in (d["choices"][:1] if distinct else d["choices"])]
    return [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docs", type=int, default=40, help="documents per probe (x 3 probes x 4 choices requests)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--distinct", action="store_true",
                        help="one choice per document: no two requests share a context (no context reuse)")
    parser.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval.models.huggingface import HFLM

    from transformer.evaluation.lm import ToolkitLM

    text = Path(args.text).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(Path(tmp), layers=args.layers, width=args.width, vocab=args.vocab, length=args.length,
                                    text=text)
        ours = ToolkitLM.from_source(model_dir, batch_size=args.batch_size)
        theirs = HFLM(pretrained=str(model_dir), batch_size=args.batch_size, device="cpu", dtype="float32")
        reqs = requests(ours.tokenizer, docs=args.docs, length=args.length, distinct=args.distinct)
        tokens = sum(len(ours.tok_encode(c + x)) for c, x in (r.args for r in reqs))
        times = {"toolkit": [], "lm-eval hf": []}
        scores = {}
        for _ in range(args.rounds):
            for name, lm in (("toolkit", ours), ("lm-eval hf", theirs)):
                start = time.perf_counter()
                with torch.inference_mode():
                    scores[name] = lm.loglikelihood(reqs, disable_tqdm=True)
                times[name].append(time.perf_counter() - start)
    diff = max(abs(a[0] - b[0]) for a, b in zip(scores["toolkit"], scores["lm-eval hf"]))
    same_greedy = sum(a[1] == b[1] for a, b in zip(scores["toolkit"], scores["lm-eval hf"])) / len(reqs)
    print(f"# bench/evaluate.py — {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"command: python bench/evaluate.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"model: Llama {args.layers} x {args.width}, vocab {ours.tokenizer.vocab_size}; {len(reqs)} requests, "
          f"{tokens:,} tokens, batch {args.batch_size}; rounds {args.rounds} (interleaved)\n")
    print("| backend | median s | tokens/s | ratio |")
    print("|---|---:|---:|---:|")
    base = statistics.median(times["lm-eval hf"])
    for name in times:
        median = statistics.median(times[name])
        print(f"| {name} | {median:.2f} | {tokens / median:,.0f} | {base / median:.2f}x |")
    print(f"\nscores: max |toolkit - hf| = {diff:.2e}; the same is_greedy on {same_greedy:.1%} of requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
