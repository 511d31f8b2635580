"""Autoregressive generation with the KV cache: :func:`generate` for decoder-only LMs and
:func:`generate_seq2seq` for encoder-decoders (the encoder runs once; cross-attention keys/values
of its memory are cached on the first step).

Batched prompts of different lengths are **left-padded** with an ``attention_mask`` (1 = real
token). ``temperature=0`` is greedy decoding. With greedy decoding the cache changes nothing:
``use_cache=False`` recomputes the whole sequence each step and yields the same tokens.

Past the model's context (``max_seq_len``) :func:`generate` stops with an error, or with ``slide=True`` keeps
going over a sliding window: when the window is full, the newest ``max_seq_len - max_seq_len // 4`` tokens are
re-encoded from position 0 (a fresh cache) and decoding continues. Every positional scheme (learned
positions, RoPE, ALiBi, relative biases) then sees what it saw in training, a window that starts at
position 0; the price is one prefill every ``max_seq_len // 4`` tokens.

Shape legend: b batch, s prompt length, n new tokens, V vocab.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def sample_next(logits: Tensor, *, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None) -> Tensor:
    """``[b, V]`` logits -> ``[b]`` token ids (argmax when ``temperature == 0``)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def prefill(model: nn.Module, input_ids: Tensor, caches, attention_mask: Tensor | None = None, chunk: int | None = None) -> Tensor:
    """Run ``input_ids`` ``[b, s]`` through the model, appending to ``caches``; returns the last position's
    logits ``[b, V]``.

    With ``chunk``, the tokens go in slices of ``chunk``: each attends to the cache so far plus itself
    (bottom-right causal), which is exactly what one pass computes, but activations and attention scores
    are ``[b, chunk, ...]`` instead of ``[b, s, ...]``, so a long prompt's peak memory is bounded by the
    chunk (``bench/generate.py`` measures it). ``attention_mask`` ``[b, cached + s]`` covers the cached keys
    too, as for any call with a cache."""
    if caches is None:
        raise ValueError("prefill needs the model's KV caches (model.new_caches(batch, length)): chunks read the keys of earlier chunks from them")
    s = input_ids.shape[1]
    if s < 1 or (chunk is not None and chunk < 1):
        raise ValueError(f"prefill needs at least one token and a chunk >= 1 (got {s} tokens, chunk={chunk})")
    chunk = s if chunk is None else chunk
    done = 0 if attention_mask is None else attention_mask.shape[1] - s  # keys already in the cache
    for begin in range(0, s, chunk):
        end = min(begin + chunk, s)
        mask = None if attention_mask is None else attention_mask[:, : done + end]
        logits = model(input_ids[:, begin:end], attention_mask=mask, caches=caches, num_logits=1).logits[:, -1]
    return logits


def _check(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")


@torch.inference_mode()
def generate(
    model: nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | list[int] | None = None,
    *,
    attention_mask: Tensor | None = None,
    use_cache: bool = True,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    slide: bool = False,
    prefill_chunk: int | None = None,
    cache: str = "contiguous",
    cache_options: dict | None = None,
    stop_when=None,
) -> Tensor:
    """Extend ``input_ids`` ``[b, s]`` by up to ``max_new_tokens``; returns ``[b, s + n]``.

    Sequences that produced ``eos_token_id`` (one id, or several: end of text and end of turn) are padded
    (with ``pad_token_id``, else the first EOS id) until all are done. Asking for more than
    ``model.cfg.max_seq_len`` positions in total is an error before any work, never a silent wrap-around,
    unless ``slide`` (see the module docstring). ``prefill_chunk``: feed the prompt through the cache
    ``prefill_chunk`` tokens at a time (:func:`prefill`). ``cache``: the KV cache kind (``contiguous``,
    ``paged``, ``int8``, ``int4``; ``transformer.attention.cache_kinds``) with ``cache_options`` (``block_size``;
    ``group_size``, ``residual``). Contiguous and paged give the same tokens; int8 / int4 trade a small error
    for memory.
    """
    _check(max_new_tokens, temperature, top_k, top_p)
    if prefill_chunk is not None and (isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1):
        raise ValueError(f"prefill_chunk={prefill_chunk!r} must be a positive number of tokens (or None: the whole prompt at once)")
    if prefill_chunk is not None and not use_cache:
        raise ValueError("prefill_chunk needs the KV cache (use_cache=True): without it every step re-reads the whole sequence")
    b, s = input_ids.shape
    limit = model.cfg.max_seq_len
    if s + max_new_tokens > limit and not slide:
        raise ValueError(f"prompt length {s} + max_new_tokens {max_new_tokens} = {s + max_new_tokens} exceeds "
                         f"model.max_seq_len={limit}; generate fewer tokens or pass slide=True (a sliding context)")
    keep = limit - limit // 4  # tokens re-encoded when the window slides
    was_training = model.training
    model.eval()
    try:
        # Without padding there is nothing to mask beyond causality: pass no mask at all (fast path).
        mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.to(input_ids.dtype)
        start = s - keep if s > limit else 0  # the window is tokens[:, start:]
        if not use_cache and (cache != "contiguous" or cache_options):
            raise ValueError(f"cache={cache!r} needs the KV cache (use_cache=True)")

        def new_caches(window_mask: Tensor | None, length: int):
            starts = None if window_mask is None else (window_mask == 0).long().cumprod(dim=1).sum(dim=1)  # left padding per row
            return model.new_caches(b, length, kind=cache, row_starts=starts, **(cache_options or {}))

        caches = new_caches(None if mask is None else mask[:, start:], min(s + max_new_tokens, limit)) if use_cache else None
        tokens, step_input = input_ids, input_ids[:, start:]
        finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        stops = None
        if eos_token_id is not None:
            stops = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=input_ids.device)
        fill = pad_token_id if pad_token_id is not None else (0 if stops is None else int(stops[0]))
        track = stops is not None or stop_when is not None
        for _ in range(max_new_tokens):
            if tokens.shape[1] - start > limit:  # the window is full: slide it and re-encode from position 0
                start = tokens.shape[1] - keep
                step_input = tokens[:, start:]
                caches = new_caches(None if mask is None else mask[:, start:], limit) if use_cache else None
            window_mask = None if mask is None else mask[:, start:]
            if use_cache:
                logits = prefill(model, step_input, caches, window_mask, prefill_chunk)
            else:
                logits = model(tokens[:, start:], attention_mask=window_mask, num_logits=1).logits[:, -1]
            next_token = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            if track:
                next_token = torch.where(finished, torch.full_like(next_token, fill), next_token)
            if stops is not None:
                finished |= torch.isin(next_token, stops)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if stop_when is not None:
                finished |= stop_when(tokens).to(finished.device)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_input = next_token[:, None]
            if track and bool(finished.all()):
                break
        return tokens
    finally:
        model.train(was_training)


@torch.inference_mode()
def generate_seq2seq(
    model: nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    *,
    attention_mask: Tensor | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    cache: str = "contiguous",
    cache_options: dict | None = None,
) -> Tensor:
    """Decode from the encoder's memory of ``input_ids`` ``[b, s]``; returns decoder ids ``[b, 1 + n]``
    starting with the decoder start token. ``cache`` / ``cache_options``: the decoder self-attention cache kind,
    as in :func:`generate` (the memory's cross-attention cache is written once and stays contiguous)."""
    _check(max_new_tokens, temperature, top_k, top_p)
    if max_new_tokens + 1 > model.cfg.max_seq_len:
        raise ValueError(f"1 + max_new_tokens {max_new_tokens} exceeds model.max_seq_len={model.cfg.max_seq_len}")
    was_training = model.training
    model.eval()
    try:
        b = input_ids.shape[0]
        memory = model.encode(input_ids, attention_mask)  # once
        tokens = torch.full((b, 1), model.decoder_start_token_id, dtype=input_ids.dtype, device=input_ids.device)
        if not use_cache and (cache != "contiguous" or cache_options):
            raise ValueError(f"cache={cache!r} needs the KV cache (use_cache=True)")
        caches = model.new_caches(b, max_new_tokens + 1, memory_len=memory.shape[1], kind=cache,
                                  **(cache_options or {})) if use_cache else None
        finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            step = tokens[:, -1:] if use_cache else tokens
            logits = model(input_ids, attention_mask=attention_mask, decoder_input_ids=step, memory=memory,
                           caches=caches, num_logits=1).logits[:, -1]
            next_token = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            if eos_token_id is not None:
                next_token = torch.where(finished, torch.full_like(next_token, eos_token_id), next_token)
                finished |= next_token == eos_token_id
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if eos_token_id is not None and bool(finished.all()):
                break
        return tokens
    finally:
        model.train(was_training)
