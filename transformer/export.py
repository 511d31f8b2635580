"""Export a training checkpoint to a self-contained directory, loadable without Lightning.

    python -m transformer.export runs/x/checkpoints/last.ckpt exports/x          # toolkit format
    python -m transformer.export runs/x/checkpoints/last.ckpt exports/x --hf     # + Hugging Face format in exports/x/hf
    python -m transformer.export runs/lora/checkpoints/last.ckpt exports/m --merge --hf   # adapters folded in
    python -m transformer.export runs/lora/checkpoints/last.ckpt exports/a --adapter      # a peft adapter
    python -m transformer.export tinyllama.Q4_K_M.gguf exports/tl --hf                    # a GGUF file, dequantized

The directory holds ``model.safetensors`` (this toolkit's parameter names), ``model_config.json``,
``tokenizer.json`` (+ ``tokenizer_config.json`` with special tokens and chat template) and
``run_config.json``. Load it with ``transformer.training.weights.load_model`` (or use it as
``init_from`` / with ``python -m transformer.sample``). ``--hf`` also writes a Llama / Qwen / Mistral /
Phi-3 / GPT-2 / BERT-format copy with its tokenizer and ``generation_config.json`` for ``transformers``.

An adapter checkpoint (LoRA / DoRA / QLoRA) holds only its adapters; its base model is found from the
reference the checkpoint records. ``--merge`` (the default for such a checkpoint) folds the adapters into
full weights; ``--adapter`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` that
``peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), DIR)`` loads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import guarded
from .training import checkpoint_keys as K
from .training.checkpoint_io import atomic_write_text, read_checkpoint
from .training.weights import EXPORT_CONFIG, EXPORT_TOKENIZER, EXPORT_WEIGHTS, load_model


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, hf: bool = False, overwrite: bool = False,
                      adapter: bool = False) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; the export is a directory: choose a new directory name")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory or pass --overwrite")
    from .interop.gguf import gguf_tokenizer, is_gguf

    if is_gguf(checkpoint):  # a llama.cpp file: its weights dequantized, its tokenizer from the metadata
        saved = {K.TOKENIZER_CONFIG: json.dumps(gguf_tokenizer(checkpoint).tokenizer_config(), indent=2)}
    else:
        saved = read_checkpoint(checkpoint)
    run_config = saved.get(K.RUN_CONFIG, {})
    if adapter:
        if K.BASE_MODEL not in saved:
            raise ValueError(f"{checkpoint} is not an adapter checkpoint (finetune.method={run_config.get('finetune', {}).get('method', 'full')}); "
                             f"export its full weights without --adapter")
        from .adapters.peft_format import save_peft_adapter

        model, _ = load_model(checkpoint, merge=False)
        save_peft_adapter(model, out, model.finetune, base=model.base_path)
        return out
    model, tokenizer = load_model(checkpoint)
    tokenizer_config = saved.get(K.TOKENIZER_CONFIG)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in _tied_alias_names(model)}
    files = {EXPORT_CONFIG: json.dumps(model.cfg.to_dict(), indent=2), "run_config.json": json.dumps(run_config, indent=2)}
    if tokenizer is not None:
        files[EXPORT_TOKENIZER] = tokenizer
    if tokenizer_config is not None:
        files["tokenizer_config.json"] = tokenizer_config
    tmp = out / f".{EXPORT_WEIGHTS}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / EXPORT_WEIGHTS)
    for name, text in files.items():
        atomic_write_text(out / name, text)
    loaded = None
    if tokenizer is not None:
        from .data.tokenizer import load_tokenizer

        loaded = load_tokenizer(out / EXPORT_TOKENIZER)  # with the tokenizer_config.json beside it
        if loaded.kind == "char":  # an older run's char file: rewritten as a tokenizers tokenizer.json
            loaded.save(out / EXPORT_TOKENIZER)
    if hf:
        from .interop import export_hf

        export_hf(model, out / "hf", overwrite=overwrite, tokenizer=loaded)
    return out


def _tied_alias_names(model) -> set[str]:
    from .training.weights import _tied_aliases

    return set(_tied_aliases(model))


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transformer.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a training checkpoint (.ckpt file, or a sharded .ckpt directory) or a GGUF file")
    parser.add_argument("out_dir")
    parser.add_argument("--hf", action="store_true", help="also write a Hugging Face-format copy in OUT_DIR/hf")
    parser.add_argument("--merge", action="store_true",
                        help="adapter checkpoints: fold the adapters into full weights (the default for them)")
    parser.add_argument("--adapter", action="store_true", help="adapter checkpoints: write a peft-format adapter instead")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.adapter and (args.merge or args.hf):
        parser.error("--adapter writes the adapter alone; it cannot be combined with --merge or --hf")
    out = export_checkpoint(args.checkpoint, args.out_dir, hf=args.hf, overwrite=args.overwrite, adapter=args.adapter)
    what = "peft adapter" if args.adapter else "model"
    print(f"exported {args.checkpoint} -> {out} ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
