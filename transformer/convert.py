"""Convert a checkpoint's attention to fewer (or more) key/value heads and report what it costs.

    python -m transformer.convert runs/mha/checkpoints/last.ckpt converted/gqa2.ckpt --to gqa --num-kv-heads 2
    python -m transformer.convert runs/mha/checkpoints/last.ckpt converted/mqa.ckpt --to mqa

MHA -> GQA / MQA mean-pools the key and value heads of each group (the GQA paper's uptraining
recipe); GQA -> MHA repeats them. The output is a weights-only checkpoint (no optimizer state) whose
run config names the new attention; fine-tune ("uptrain") it with
``python train.py --config <the run's config> init_from=converted/gqa2.ckpt model.attention.type=gqa model.attention.num_kv_heads=2``.
Unless ``--no-eval``, the validation loss is measured before and after the conversion on the
checkpoint's own validation data.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from .errors import guarded
from .training import checkpoint_keys as K
from .training.checkpoint_io import CheckpointError, atomic_save, read_checkpoint
from .training.config import run_config_from_dict, to_container
from .training.weights import load_model, load_weights
from .transformer_model import build_model


def convert_checkpoint(source: str | Path, out: str | Path, *, to: str, num_kv_heads: int | None = None,
                       evaluate: bool = True, eval_batches: int | None = None) -> dict:
    """Write the converted checkpoint; return ``{"before": loss, "after": loss}`` (None without eval)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new path (nothing is overwritten)")
    existing = next((parent for parent in out.parents if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise NotADirectoryError(f"{existing} is a file, not a folder: choose another path for {out.name}")
    if to not in ("mha", "gqa", "mqa"):
        raise ValueError(f"--to {to!r}: conversion works between mha, gqa and mqa")
    if to == "gqa" and not num_kv_heads:
        raise ValueError("--to gqa needs --num-kv-heads")
    checkpoint = read_checkpoint(source)
    if K.RUN_CONFIG not in checkpoint:
        raise CheckpointError(f"{source} has no run config; it was not written by this toolkit's trainer")
    if (checkpoint[K.RUN_CONFIG] or {}).get("task", "lm") != "lm":
        raise CheckpointError(f"{source} is a {checkpoint[K.RUN_CONFIG].get('task')!r} checkpoint; conversion works on "
                              f"language-model checkpoints")
    run_cfg = run_config_from_dict(checkpoint[K.RUN_CONFIG])
    if run_cfg.model.attention.type not in ("mha", "gqa", "mqa"):
        raise ValueError(f"{source} uses attention type {run_cfg.model.attention.type!r}; only mha/gqa/mqa convert")
    new_cfg = copy.deepcopy(run_cfg)
    new_cfg.model.attention.type = to
    new_cfg.model.attention.num_kv_heads = num_kv_heads if to == "gqa" else None
    new_cfg = run_config_from_dict(to_container(new_cfg))  # re-validate (e.g. heads divisible)
    source_model, _ = load_model(source)
    model = build_model(new_cfg.model)
    report = load_weights(model, checkpoint[K.STATE_DICT])
    if not report.clean:
        raise CheckpointError("conversion left keys unconverted — " + report.format().replace("\n", ";"))
    result = {"before": None, "after": None, "converted_keys": len(report.converted)}
    if evaluate:
        from .training.evaluate import validation_loss

        result["before"] = validation_loss(source_model, run_cfg, max_batches=eval_batches)
        result["after"] = validation_loss(model, new_cfg, max_batches=eval_batches)
    out.parent.mkdir(parents=True, exist_ok=True)  # folders made only once the conversion has succeeded
    atomic_save({K.STATE_DICT: {f"model.{k}": v for k, v in model.state_dict().items()},
                 K.RUN_CONFIG: to_container(new_cfg), K.TOKENIZER: checkpoint.get(K.TOKENIZER),
                 K.CONVERTED_FROM: str(source), K.GLOBAL_STEP: checkpoint.get(K.GLOBAL_STEP, 0)}, out)
    return result


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transformer.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--to", required=True, choices=["mha", "gqa", "mqa"])
    parser.add_argument("--num-kv-heads", type=int)
    parser.add_argument("--no-eval", action="store_true", help="skip measuring validation loss")
    parser.add_argument("--eval-batches", type=int, default=None, help="validation batches (default: the run's limit)")
    args = parser.parse_args(argv)
    result = convert_checkpoint(args.checkpoint, args.out, to=args.to, num_kv_heads=args.num_kv_heads,
                                evaluate=not args.no_eval, eval_batches=args.eval_batches)
    print(f"wrote {args.out} ({result['converted_keys']} attention projections converted)")
    if result["before"] is not None:
        print(f"validation loss before conversion: {result['before']:.4f}\n"
              f"validation loss after conversion:  {result['after']:.4f} ({result['after'] - result['before']:+.4f}, "
              f"before any fine-tuning)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
