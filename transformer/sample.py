"""Generate text from a checkpoint, an export directory, or a Hugging Face directory with a tokenizer.

    python -m transformer.sample runs/x/checkpoints/last.ckpt --prompt "ROMEO:" --max-new-tokens 200
    python -m transformer.sample exports/x --prompt "def " --temperature 0 --max-new-tokens 80
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from .data.tokenizer import load_tokenizer
from .errors import guarded
from .generation import generate
from .training.checkpoint_io import CheckpointError
from .training.weights import load_model


def sample(source: str | Path, prompt: str, *, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = 50,
           seed: int = 0) -> str:
    model, tokenizer_json = load_model(source)
    if tokenizer_json is None:
        candidate = Path(source) / "tokenizer.json"
        if not candidate.is_file():
            raise CheckpointError(f"{source} carries no tokenizer (tokenizer.json); cannot turn text into ids")
        tokenizer_json = candidate.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.json").write_text(tokenizer_json)
        tokenizer = load_tokenizer(Path(tmp) / "tokenizer.json")
    ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
    room = model.cfg.max_seq_len - len(ids)
    if room < 1:
        raise ValueError(f"the prompt is {len(ids)} tokens; the model's context is {model.cfg.max_seq_len}")
    g = torch.Generator().manual_seed(seed)
    out = generate(model, torch.tensor([ids]), min(max_new_tokens, room), temperature=temperature, top_k=top_k,
                   eos_token_id=None, generator=g)
    return tokenizer.decode(out[0].tolist())


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transformer.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a .ckpt file, an export directory, or a Hugging Face directory")
    parser.add_argument("--prompt", default="\n")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.max_new_tokens < 0:
        parser.error(f"--max-new-tokens {args.max_new_tokens} must be >= 0")
    if args.temperature < 0:
        parser.error(f"--temperature {args.temperature} must be >= 0 (0 = greedy)")
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k {args.top_k} must be >= 1")
    if not Path(args.source).exists():
        raise FileNotFoundError(f"{args.source} does not exist (a .ckpt file, an export directory or a Hugging Face directory)")
    print(sample(args.source, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                 top_k=args.top_k, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
