"""Which attention types can learn in-context recall: a sweep trained on the probes' task distribution, then probed.

    python bench/probe_sweep.py                         # ~15 minutes on a 2-core CPU
    python bench/probe_sweep.py --steps 600 --runs mha,linear,window16

Models trained on Tiny Shakespeare at the baby-GPT shape stay at chance on every probe (see bench/RESULTS.md):
nothing in that text asks for retrieving a random key. Here, as in the Zoology paper's associative-recall
experiments, the training text *is* the probes' distribution — associative recall, copying and passkey documents
written by ``transformer.evaluation.probes`` with seed 1000, one per line, character-level — and the evaluation
uses fresh documents (seed 0, ``python -m transformer.evaluate --tasks probes``). Same shape (4 layers, 128 wide,
8 heads, context 64), seed, data order and schedule for every type; what differs is whether the mechanism can
carry a value from anywhere in the context to the query: softmax attention (MHA / GQA / MQA / MLA / differential)
can, a 16-token window cannot past its window, a linear-attention state holds a blurred summary.

Prints the table of probe accuracy (chance 0.25) and length extrapolation by attention type, the commands, and
the time. The runs stay in --out (default runs/probe-sweep) for ``python -m transformer.compare``.
"""

from __future__ import annotations

import argparse
import json
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {
    "mha": {"model.attention.type": "mha"},
    "gqa2": {"model.attention.type": "gqa", "model.attention.num_kv_heads": 2},
    "mqa": {"model.attention.type": "mqa"},
    "mla": {"model.attention.type": "mla", "model.attention.kv_lora_rank": 32, "model.attention.rope_head_dim": 8},
    "differential": {"model.attention.type": "differential"},
    "linear": {"model.attention.type": "linear", "model.attention.positional": "none", "model.attention.linear_decay": True,
               "model.position": "learned"},
    "window16": {"model.attention.type": "mha", "model.attention.sliding_window": 16},
    "local3+global": {"model.attention_pattern": ["local", "local", "local", "global"],
                      "model.attention_variants": {"local": {"sliding_window": 16}, "global": {}}},
}


def write_corpus(path: Path, *, docs: int, length: int, seed: int) -> None:
    """Probe documents with their answers, one per line, in a character vocabulary of printable ASCII."""
    from transformer.data.tokenizer import CharTokenizer
    from transformer.evaluation.probes import MAKERS

    tokenizer = CharTokenizer.train([string.printable])
    lines = []
    for i, (probe, make) in enumerate(sorted(MAKERS.items())):
        for doc in make(tokenizer, length, docs, seed + i):
            lines.append(doc["context"].replace("\n", " ") + doc["choices"][doc["gold"]])
    import random

    random.Random(seed).shuffle(lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--docs", type=int, default=6000, help="training documents per probe")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {', '.join(RUNS)}")
    parser.add_argument("--probe-docs", type=int, default=200)
    parser.add_argument("--out", default="runs/probe-sweep")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown run {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "probe_corpus.txt"
    write_corpus(corpus, docs=args.docs, length=64, seed=1000)
    sweep = {"name": "probes", "base": str(ROOT / "configs/lm/shakespeare_char.yaml"),
             "overrides": [f"data.path={corpus}", "model.num_heads=8", f"trainer.max_steps={args.steps}",
                           "trainer.val_check_interval=250", "trainer.limit_val_batches=50", "sample.max_new_tokens=0",
                           f"out_dir={out}"],
             "runs": [RUNS[n] for n in names]}
    start = time.time()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump(sweep, f)  # JSON is YAML
    command = [sys.executable, str(ROOT / "train.py"), "--sweep-config", f.name]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
        return 1
    experiment = max(out.glob("probes-*"), key=lambda p: p.stat().st_mtime)
    rows = []
    recorded = json.loads((experiment / "sweep.json").read_text())["runs"]  # in sweep order, with each run's status
    for name, entry in zip(names, recorded):
        if entry.get("status") != "finished":
            print(f"note: {name} did not finish ({entry.get('status')}); left out", file=sys.stderr)
            continue
        run_dir = Path(entry["run_dir"])
        subprocess.run([sys.executable, "-m", "transformer.evaluate", str(run_dir), "--tasks", "probes",
                        "--probe-docs", str(args.probe_docs)], cwd=ROOT, check=True, capture_output=True)
        from transformer.evaluation.runner import latest_results

        results = latest_results(run_dir)
        val = json.loads((run_dir / "result.json").read_text()).get("val_loss") if (run_dir / "result.json").is_file() else None
        rows.append((name, val, results))
    print(f"# bench/probe_sweep.py — {args.steps} steps, {args.docs} training documents per probe, "
          f"{args.probe_docs} evaluation documents per probe task\n")
    print(f"command: python bench/probe_sweep.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"experiment: {experiment}\n")
    tasks = sorted({t for _, _, r in rows for t in r if t != "length_extrapolation"})
    print("| attention | val loss | " + " | ".join(tasks) + " | loss@1x | loss@2x | loss@4x |")
    print("|---|---:|" + "---:|" * (len(tasks) + 3))
    for name, val, results in rows:
        ext = results.get("length_extrapolation", {})
        cells = [f"{results[t]['acc']:.3f}" if t in results else "" for t in tasks]
        cells += [f"{ext.get(k, float('nan')):.3f}" for k in ("loss@1x", "loss@2x", "loss@4x")]
        print(f"| {name} | {val:.4f} | " + " | ".join(cells) + " |" if val is not None else f"| {name} | | " + " | ".join(cells) + " |")
    print(f"\nchance is 0.25; standard error at {args.probe_docs} documents about "
          f"{(0.25 * 0.75 / args.probe_docs) ** 0.5:.3f}. Wall time {time.time() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
