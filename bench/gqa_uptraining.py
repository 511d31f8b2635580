"""The GQA paper's central claim on this toolkit: converting a trained MHA model to GQA / MQA by
mean-pooling key/value heads and "uptraining" it for ~5% of the original steps gets close to the MHA
model, and beats training GQA / MQA from scratch for the same total number of steps.

    python bench/gqa_uptraining.py --data ../shared/data/tinyshakespeare.txt          # ~10 minutes on 2 CPU cores
    python bench/gqa_uptraining.py --data ... --steps 500 --uptrain-fraction 0.05     # quicker

Uses ``configs/lm/shakespeare_char.yaml`` (char-level, 4 layers, 4 heads, width 128, context 64),
``train.py``'s ``run``, ``transformer.convert`` and ``init_from``; all runs share seed and data order.
Validation loss is measured on the same validation blocks for every row.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from transformer.cli import run  # noqa: E402
from transformer.convert import convert_checkpoint  # noqa: E402
from transformer.training.config import load_config  # noqa: E402

VARIANTS = {"gqa (2 kv heads)": ("gqa", 2), "mqa (1 kv head)": ("mqa", None)}


def attention_overrides(kind: str, kv: int | None) -> list[str]:
    return [f"model.attention.type={kind}", f"model.attention.num_kv_heads={kv if kv else 'null'}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--uptrain-fraction", type=float, default=0.05)
    parser.add_argument("--out", default=str(ROOT / "runs" / "gqa_uptraining"))
    args = parser.parse_args()
    up_steps = max(1, round(args.steps * args.uptrain_fraction))
    base = [f"data.path={args.data}", f"out_dir={args.out}", "trainer.progress_bar=false", "sample.max_new_tokens=0",
            f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}"]
    config = ROOT / "configs" / "lm" / "shakespeare_char.yaml"
    rows, started = [], time.time()

    mha = run(load_config(config, base + ["name=mha"] + attention_overrides("mha", None)))
    rows.append(("mha (4 kv heads)", "trained from scratch", args.steps, mha.val_loss))
    mha_ckpt = mha.run_dir / "checkpoints" / "last.ckpt"
    for label, (kind, kv) in VARIANTS.items():
        converted = Path(args.out) / f"converted-{kind}-{int(time.time())}.ckpt"
        result = convert_checkpoint(mha_ckpt, converted, to=kind, num_kv_heads=kv)
        rows.append((label, "converted from mha, no fine-tuning", args.steps, result["after"]))
        up = run(load_config(config, base + [f"name=uptrain-{kind}", f"init_from={converted}", f"trainer.max_steps={up_steps}",
                                             f"trainer.val_check_interval={up_steps}", f"optim.warmup_steps={max(1, up_steps // 10)}"]
                             + attention_overrides(kind, kv)))
        rows.append((label, f"converted + uptrained {up_steps} steps", args.steps + up_steps, up.val_loss))
        scratch = run(load_config(config, base + [f"name=scratch-{kind}", f"trainer.max_steps={args.steps + up_steps}",
                                                  f"trainer.val_check_interval={args.steps + up_steps}"]
                                  + attention_overrides(kind, kv)))
        rows.append((label, "trained from scratch", args.steps + up_steps, scratch.val_loss))

    print(f"\n# bench/gqa_uptraining.py {' '.join(sys.argv[1:])}  ({(time.time() - started) / 60:.1f} min)")
    print("| attention | how | total steps | validation loss |")
    print("|---|---|---:|---:|")
    for label, how, steps, loss in rows:
        print(f"| {label} | {how} | {steps} | {loss:.4f} |")


if __name__ == "__main__":
    main()
