"""Generate text from a checkpoint, an export directory, or a Hugging Face directory with a tokenizer.

    python -m transformer.sample runs/x/checkpoints/last.ckpt --prompt "ROMEO:" --max-new-tokens 200
    python -m transformer.sample exports/x --prompt "def " --temperature 0 --max-new-tokens 80
    python -m transformer.sample exports/chat --chat "What is the capital of France?" --system "Be brief."

``--chat`` renders the question with the model's chat template (its ``tokenizer_config.json``, or
``--template chatml | llama3 | alpaca | FILE``), adds the assistant prompt, and stops at the end-of-turn
token (or end of text); only the answer is printed.

Past the model's context (``max_seq_len``), plain sampling keeps going over a sliding window: the newest
three quarters of the context are re-encoded from position 0 whenever it fills, which every positional
scheme handles as in training (``--context stop`` stops there instead). Either way a note on stderr says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .attention.cache_kinds import CACHE_KINDS
from .errors import guarded
from .generation import generate
from .training.weights import load_model, source_tokenizer


def sample(source: str | Path, prompt: str, *, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = 50,
           seed: int = 0, chat: bool = False, system: str | None = None, template: str | None = None,
           context: str = "slide", cache: str = "contiguous", prefill_chunk: int | None = None) -> str:
    """Text generated after ``prompt``; with ``chat`` the prompt is a user message and only the reply returns.

    Past the model's context, ``context="slide"`` keeps generating over a sliding window (see
    :mod:`transformer.generation`); ``"stop"`` stops there. Either way a note on stderr says so. ``cache``: the
    KV cache kind (contiguous, paged, int8, int4); ``prefill_chunk``: feed the prompt in chunks of that many tokens.
    """
    model, tokenizer_json = load_model(source)
    tokenizer = source_tokenizer(source, tokenizer_json)
    stop = None
    if chat:
        from .data.chat import END_OF_TURN, render, resolve_template, template_tokens

        text, name = resolve_template(template, tokenizer)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        rendered = render(text, messages, add_generation_prompt=True, tokens=template_tokens(tokenizer))
        ids = tokenizer.encode(rendered, add_special_tokens=False)
        stop = list(tokenizer.stop_ids)
        turn_end = END_OF_TURN.get(name)
        if turn_end and tokenizer.tok.token_to_id(turn_end) is not None:
            stop.append(tokenizer.tok.token_to_id(turn_end))
    else:
        ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
    limit = model.cfg.max_seq_len
    room = limit - len(ids)
    if room < 1:  # never drop the start of what the user wrote
        raise ValueError(f"the prompt is {len(ids)} tokens; the model's context is {limit}: shorten the prompt")
    if len(ids) + max_new_tokens > limit:
        if context == "stop" or chat:  # a reply is never cut from its own question
            print(f"note: stopping after {room} new tokens, where the model's {limit}-token context ends "
                  f"(asked for {max_new_tokens}{'' if chat else '; --context slide keeps going'})", file=sys.stderr)
            max_new_tokens = room
        else:
            print(f"note: the model's context is {limit} tokens; generating past it over a sliding window "
                  f"(the newest {limit - limit // 4} tokens re-encoded from position 0 every {limit // 4} tokens)",
                  file=sys.stderr)
    g = torch.Generator().manual_seed(seed)
    out = generate(model, torch.tensor([ids]), max_new_tokens, temperature=temperature, top_k=top_k,
                   eos_token_id=stop, generator=g, slide=True, cache=cache, prefill_chunk=prefill_chunk)
    new = out[0, len(ids):].tolist()
    if chat:
        return tokenizer.decode([t for t in new if t not in stop], skip_special_tokens=True)
    return tokenizer.decode(out[0].tolist())


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transformer.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a .ckpt file, an export directory, a Hugging Face directory or a GGUF file")
    parser.add_argument("--prompt", default="\n")
    parser.add_argument("--chat", metavar="QUESTION", help="ask QUESTION through the model's chat template; print the reply")
    parser.add_argument("--system", help="with --chat: a system message")
    parser.add_argument("--template", help="with --chat: chatml, llama3, alpaca or a Jinja file (default: the tokenizer's own)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context", choices=("slide", "stop"), default="slide",
                        help="past the model's context: keep generating over a sliding window (default) or stop there")
    parser.add_argument("--cache", choices=CACHE_KINDS, default="contiguous",
                        help="KV cache kind: contiguous (fastest), paged (blocks on demand), int8 / int4 (quantized, less memory)")
    parser.add_argument("--prefill-chunk", type=int, metavar="N", help="feed the prompt through the cache N tokens at a time")
    args = parser.parse_args(argv)
    if args.prefill_chunk is not None and args.prefill_chunk < 1:
        parser.error(f"--prefill-chunk {args.prefill_chunk} must be >= 1")
    if args.max_new_tokens < 0:
        parser.error(f"--max-new-tokens {args.max_new_tokens} must be >= 0")
    if args.temperature < 0:
        parser.error(f"--temperature {args.temperature} must be >= 0 (0 = greedy)")
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k {args.top_k} must be >= 1")
    if not Path(args.source).exists():
        raise FileNotFoundError(f"{args.source} does not exist (a .ckpt file, an export directory or a Hugging Face directory)")
    if (args.system or args.template) and args.chat is None:
        parser.error("--system and --template only apply with --chat")
    chat = args.chat is not None
    print(sample(args.source, args.chat if chat else args.prompt, max_new_tokens=args.max_new_tokens,
                 temperature=args.temperature, top_k=args.top_k, seed=args.seed, chat=chat, system=args.system,
                 template=args.template, context=args.context, cache=args.cache, prefill_chunk=args.prefill_chunk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
