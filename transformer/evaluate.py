"""Evaluate a trained model on lm-eval-harness tasks and the built-in probes, offline.

    python -m transformer.evaluate runs/x-20261204-101500 --tasks probes
    python -m transformer.evaluate runs/x/checkpoints/last.ckpt --tasks passkey_128,assoc_recall,length_extrapolation
    python -m transformer.evaluate exports/x --tasks my_task --include-path tasks/ --out results/x
    python -m transformer.evaluate exports/x --tasks length_extrapolation --text data/valid.txt

SOURCE: a run directory (its best checkpoint, else ``last.ckpt``), a checkpoint, an export directory, a Hugging
Face directory or a GGUF file. Tasks: ``probes`` (passkey retrieval, associative recall and copying at a quarter,
half and all of the context, and length extrapolation), one probe (``passkey``; ``passkey_256`` at 256 tokens),
``length_extrapolation`` (validation loss at 1x, 2x, 4x the trained context), or any lm-eval task: task YAMLs in
``--include-path`` over local files (``dataset_path: json`` + ``dataset_kwargs: {data_files: ...}``), or
lm-eval's built-in tasks (those download their data, so they fail offline).

The results table is printed and written, as JSON and Markdown (``eval-<time>.json`` / ``.md``, never
replacing an earlier one), to ``<run>/eval/`` for a run directory or a checkpoint inside one, else to
``--out`` (default: ``<directory>/eval`` for a directory source).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .errors import guarded


def resolve_source(source: Path) -> tuple[Path, Path | None]:
    """(model file or directory to load, the run directory it belongs to or None)."""
    from .training.run_dir import best_or_last_checkpoint

    if source.is_dir() and (source / "config.yaml").is_file() and (source / "checkpoints").is_dir():
        ckpt = best_or_last_checkpoint(source)
        if ckpt is None:
            raise FileNotFoundError(f"run directory {source} holds no checkpoint (checkpoints/step*.ckpt or last.ckpt)")
        return ckpt, source
    if source.is_file() and source.parent.name == "checkpoints" and (source.parent.parent / "config.yaml").is_file():
        return source, source.parent.parent
    return source, None


def run_config_of(model_path: Path):
    """The run config a checkpoint or an export carries (None for a Hugging Face directory or a GGUF file)."""
    import json

    from .training import checkpoint_keys as K
    from .training.checkpoint_io import read_checkpoint
    from .training.config import run_config_from_dict

    if model_path.is_dir():
        path = model_path / "run_config.json"
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    elif model_path.suffix == ".ckpt":
        data = read_checkpoint(model_path).get(K.RUN_CONFIG)
    else:
        data = None
    return run_config_from_dict(data) if data and data.get("task", "lm") == "lm" and "data" in data else None


def validation_tokens_for(model_path: Path, text: str | None, tokenizer):
    """A function giving the tokens that length extrapolation reads: ``--text`` tokenised, else the run's split."""
    import numpy as np

    def from_text():
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"--text {text} does not exist")
        return np.asarray(tokenizer.encode(path.read_text(encoding="utf-8")), dtype=np.int64)

    if text is not None:
        return from_text
    cfg = run_config_of(model_path)
    if cfg is None:
        return None

    def from_run():
        from .data import LMDataModule

        data = LMDataModule(cfg.data, seed=cfg.seed, cache_root=f"{cfg.out_dir}/.cache")
        return data.prepare().tokens("val")

    return from_run


def _csv_ints(value: str, what: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated whole numbers, got {value!r}") from None
    if not items or min(items) < 1:
        raise argparse.ArgumentTypeError(f"{what} must be positive whole numbers, got {value!r}")
    return items


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transformer.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a run directory, a .ckpt file, an export or Hugging Face directory, or a GGUF file")
    parser.add_argument("--tasks", required=True, help="comma-separated: probes, passkey[_N], assoc_recall[_N], copying[_N], "
                                                       "length_extrapolation, or lm-eval task names")
    parser.add_argument("--include-path", help="a directory of lm-eval task YAMLs (over local data files)")
    parser.add_argument("--limit", type=float, help="at most this many documents per task (a fraction < 1: that share)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--probe-lengths", type=lambda v: _csv_ints(v, "--probe-lengths"),
                        help="context lengths (tokens) of the probes (default: a quarter, half and all of max_seq_len)")
    parser.add_argument("--probe-docs", type=int, default=200, help="documents per probe task (default 200)")
    parser.add_argument("--factors", type=lambda v: _csv_ints(v, "--factors"), default=[1, 2, 4],
                        help="length extrapolation: multiples of the trained context (default 1,2,4)")
    parser.add_argument("--blocks", type=int, default=8, help="length extrapolation: blocks of the longest length (default 8)")
    parser.add_argument("--text", help="length extrapolation: a text file to read instead of the run's validation split")
    parser.add_argument("--out", help="where the results go (default: <run>/eval, or <directory>/eval)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probes' documents and of sampling")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    args = parser.parse_args(argv)
    for name in ("batch_size", "probe_docs", "blocks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    if args.limit is not None and args.limit <= 0:
        parser.error(f"--limit {args.limit:g} must be > 0")
    source = Path(args.source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist (a run directory, a checkpoint, an export or Hugging Face "
                                f"directory, or a GGUF file)")
    model_path, run_dir = resolve_source(source)
    out = Path(args.out) if args.out else (run_dir / "eval" if run_dir else (source / "eval" if source.is_dir() else None))
    if out is None:
        parser.error(f"{source} is a file outside a run directory: give --out DIR for the results")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; the results go into a directory")

    from .evaluation.lm import ToolkitLM
    from .evaluation.runner import evaluate, results_markdown, write_results

    lm = ToolkitLM.from_source(model_path, batch_size=args.batch_size, seed=args.seed, device=args.device)
    names = [t for t in args.tasks.split(",") if t.strip()]
    with tempfile.TemporaryDirectory(prefix="tt-eval-") as work:
        results = evaluate(lm, names, work_dir=Path(work), include_path=args.include_path,
                           probe_lengths=args.probe_lengths, probe_docs=args.probe_docs, seed=args.seed,
                           limit=int(args.limit) if args.limit and args.limit >= 1 else args.limit,
                           validation_tokens=validation_tokens_for(model_path, args.text, lm.tokenizer),
                           factors=tuple(args.factors), blocks=args.blocks)
    header = {"source": str(source), "model": str(model_path), "tasks": ",".join(names), "probe_docs": args.probe_docs,
              "seed": args.seed, "limit": args.limit, "max_seq_len": lm.model.cfg.max_seq_len}
    paths = write_results(results, header, out)
    print(results_markdown(results, header))
    print(f"results: {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
