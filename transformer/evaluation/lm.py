"""The toolkit's own model and tokenizer as an lm-eval-harness model (``lm_eval.api.model.LM``).

Scores are those of lm-eval's ``hf`` backend on the same weights (the test compares them): the same
context / continuation split (:class:`~lm_eval.api.model.TemplateLM`), the same empty-context prefix token
(BOS, else EOS), the same rolling windows for ``loglikelihood_rolling``. What differs is how the work is done:

* requests are sorted longest first and **right-padded** into batches: under a causal mask a pad after a
  row's last token changes nothing before it, so no attention mask is needed (the fused causal kernel runs);
* the LM head runs only at the positions that are scored (``logits_for_targets``), not over the whole batch;
* requests whose inputs share a prefix — the choices of one question, or questions after one few-shot preamble —
  run it once into the KV cache and score their remainders against copies of it (:func:`shared_prefix_groups`);
* ``generate_until`` decodes with the KV cache, left-padded batches, and stops a row as soon as one of its
  stop strings appears in its text.

A context longer than the model's ``max_seq_len`` is refused (lm-eval's ``hf`` backend cuts it silently from
the left), unless the model has RoPE scaling configured (``model.attention.rope_scaling``): then scoring runs at
the longer length, which is what the scaling is for. Generation always stays within ``max_seq_len`` (the new
tokens are capped to the room left; a context that fills it is refused).

Shape legend: b batch, T padded length, n scored positions, V vocabulary.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import Tensor, nn

from ..transformer_model import IGNORE_INDEX
from ..generation import generate


MIN_SHARED = 16
"""Shortest common prefix (tokens) of rows with different contexts worth a forward of its own."""


def shared_prefix_groups(rows) -> tuple[list[tuple[list[int], list]], list]:
    """Split ``rows`` ``(index, input ids, continuation)`` into groups whose inputs share a prefix that ends before
    every member's first scored position, and the rows that share nothing worth running once.

    First the rows with the same input before their scored positions (the choices of one question: the whole
    context is shared); then, among the others, neighbours in token order with a long common prefix (requests after
    one few-shot preamble or system prompt): at least ``MIN_SHARED`` tokens and half of each member's own input."""
    exact: dict[tuple[int, ...], list] = defaultdict(list)
    for row in rows:
        exact[tuple(row[1][:len(row[1]) - len(row[2])])].append(row)
    groups = [(list(prefix), group) for prefix, group in exact.items() if len(group) > 1 and prefix]
    rest = sorted((r for prefix, g in exact.items() if not (len(g) > 1 and prefix) for r in g), key=lambda r: r[1])
    single, current, limit = [], [], 0

    def close():
        if len(current) > 1:
            groups.append((current[0][1][:limit], list(current)))
        else:
            single.extend(current)

    for row in rest:  # sorted by tokens: a run of rows with a common prefix is contiguous
        own = len(row[1]) - len(row[2])  # inputs before this row's first scored position
        if current:
            first = current[0][1]
            common = next((i for i, (a, b) in enumerate(zip(first, row[1])) if a != b), min(len(first), len(row[1])))
            joined = min(limit, common, own)
            if joined >= MIN_SHARED and 2 * joined >= max(len(r[1]) for r in current + [row]):
                current.append(row)
                limit = joined
                continue
            close()
        current, limit = [row], own
    if current:
        close()
    return groups, single


class ContextTooLong(ValueError):
    """A request does not fit the model's context and the model cannot extend it."""


def context_limit(cfg) -> int | None:
    """Longest input a model (its ``ModelConfig``) accepts for evaluation: ``max_seq_len``, or None (no limit)
    with RoPE scaling configured and no absolute position table."""
    att = cfg.attention
    if att.positional == "rope" and att.rope_scaling is not None and cfg.position == "none":
        return None
    return cfg.max_seq_len


class ToolkitLM(TemplateLM):
    """lm-eval model over a toolkit ``DecoderLM`` and its tokenizer (``BPETokenizer`` / ``CharTokenizer``).

    ``rank`` / ``world_size``: set by the training callback under DDP; lm-eval then gives each process its
    share of the documents and gathers every document's metric to rank 0 (a mean over all documents, never
    a mean of per-rank means)."""

    def __init__(self, model: nn.Module, tokenizer, *, batch_size: int = 16, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if getattr(model.cfg, "kind", "lm") != "lm":
            raise ValueError(f"evaluation scores decoder-only language models (model.kind=lm); this model is "
                             f"model.kind={model.cfg.kind}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.seed = seed
        self._rank, self._world_size = rank, world_size
        self._device = next(model.parameters()).device
        self._noted_long = False

    @classmethod
    def from_source(cls, source, *, device: str = "cpu", **options) -> "ToolkitLM":
        """From a checkpoint, an export, a Hugging Face directory or a GGUF file (as ``transformer.sample``)."""
        from ..training.weights import load_model, source_tokenizer

        model, tokenizer_json = load_model(source)
        return cls(model.to(device), source_tokenizer(source, tokenizer_json), **options)

    # ------------------------------------------------------------------ tokens
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.bos_id if getattr(self.tokenizer, "bos_id", None) is not None else self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self.model.cfg.max_seq_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """As lm-eval's ``hf`` backend: the tokenizer's own special tokens (e.g. a BOS), except when the string
        already starts with the BOS text."""
        if add_special_tokens is None:
            bos = self.tokenizer.bos_id
            add_special_tokens = not (bos is not None and string.startswith(self.tokenizer.decode([bos])))
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    @property
    def tokenizer_name(self) -> str:
        """A stable fingerprint of the tokenizer (lm-eval keys its request caches by it)."""
        import hashlib

        config = json.dumps(self.tokenizer.tokenizer_config(), sort_keys=True, default=str)
        return "toolkit-" + hashlib.sha256(config.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ checks
    def _check_length(self, tokens: int, what: str) -> None:
        limit = context_limit(self.model.cfg)
        if limit is None:
            if tokens > self.max_length and not self._noted_long:
                self._noted_long = True
                print(f"note: evaluating {tokens}-token inputs past max_seq_len={self.max_length} with RoPE scaling "
                      f"({self.model.cfg.attention.rope_scaling})", file=sys.stderr)
            return
        if tokens > limit:
            raise ContextTooLong(
                f"{what} is {tokens} tokens; the model's context (model.max_seq_len) is {limit}: shorten the task's "
                f"inputs, or evaluate a model with model.attention.rope_scaling configured")

    # ------------------------------------------------------------------ scoring
    def loglikelihood(self, requests, disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None,
                              **kwargs) -> list[tuple[float, bool]]:
        """``requests``: ``((context, continuation), context_ids, continuation_ids)``; returns per request the
        continuation's summed log-probability and whether greedy decoding would produce it exactly."""
        rows = []
        for index, (key, context, continuation) in enumerate(requests):
            if not continuation:
                raise ValueError(f"request {key!r}: the continuation is empty (nothing to score)")
            whole = list(context) + list(continuation)
            self._check_length(len(whole) - 1, f"context + continuation of {key!r}"[:200])
            rows.append((index, whole[:-1], whole[len(whole) - len(continuation):]))
        out: list[tuple[float, bool] | None] = [None] * len(rows)
        size = override_bs or self.batch_size
        shared, single = shared_prefix_groups(rows)
        single.sort(key=lambda r: -len(r[1]))  # longest first: the first batch shows an out-of-memory at once
        was_training = self.model.training
        self.model.eval()
        try:
            for prefix, group in shared:  # e.g. the choices of one question, or tasks with one preamble: it runs once
                for begin in range(0, len(group), size):
                    batch = group[begin:begin + size]
                    for (index, _, _), result in zip(batch, self._score_shared(prefix, batch)):
                        out[index] = result
            for begin in range(0, len(single), size):
                batch = single[begin:begin + size]
                for (index, _, _), result in zip(batch, self._score_batch(batch)):
                    out[index] = result
        finally:
            self.model.train(was_training)
        return out

    def _score_shared(self, prefix: tuple[int, ...], batch) -> list[tuple[float, bool]]:
        """Rows whose inputs share ``prefix``: the prefix once (batch 1, into the KV cache, no logits), then every
        row's remaining inputs ``[b, n]`` against a copy of that cache (right-padded: under the causal mask a pad
        after a row's tokens changes nothing before it). The same numbers as :meth:`_score_batch`, within rounding."""
        import copy

        n = max(len(ids) - len(prefix) for _, ids, _ in batch)  # the longest remainder after the prefix
        caches = self.model.new_caches(1, len(prefix) + n)
        self.model(torch.tensor([prefix], device=self._device), caches=caches, num_logits=1)
        index = torch.zeros(len(batch), dtype=torch.long, device=self._device)
        rows = []
        for cache in caches:  # one copy of the prefix per row (the copies' buffers are new tensors)
            row = copy.copy(cache)
            row.self_attn = copy.copy(cache.self_attn)
            row.self_attn.reorder(index)
            rows.append(row)
        inputs = torch.zeros(len(batch), n, dtype=torch.long)
        targets = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        for r, (_, ids, cont) in enumerate(batch):
            rest = ids[len(prefix):]  # the scored positions are its last len(cont)
            inputs[r, :len(rest)] = torch.tensor(rest)
            targets[r, len(rest) - len(cont):len(rest)] = torch.tensor(cont)
        return self._score(inputs.to(self._device), targets.to(self._device), batch, caches=rows)

    def _score_batch(self, batch) -> list[tuple[float, bool]]:
        T = len(batch[0][1])
        inputs = torch.zeros(len(batch), T, dtype=torch.long)
        targets = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
        for row, (_, ids, cont) in enumerate(batch):
            inputs[row, :len(ids)] = torch.tensor(ids)
            targets[row, len(ids) - len(cont):len(ids)] = torch.tensor(cont)  # right padding: no mask needed
        return self._score(inputs.to(self._device), targets.to(self._device), batch)

    def _score(self, inputs: Tensor, targets: Tensor, batch, caches=None) -> list[tuple[float, bool]]:
        """Summed log-probabilities of the targets (``-100`` elsewhere) per row, and whether all are the argmax."""
        logits = self.model(inputs, targets, caches=caches, logits_for_targets=True).logits  # [n, V], row-major
        scored = targets[targets != IGNORE_INDEX]
        logprobs = F.log_softmax(logits.float(), dim=-1)
        token_lp = logprobs.gather(-1, scored[:, None]).squeeze(-1)  # [n]
        greedy = logprobs.argmax(-1) == scored
        results, offset = [], 0
        for _, _, cont in batch:
            n = len(cont)
            results.append((float(token_lp[offset:offset + n].double().sum()), bool(greedy[offset:offset + n].all())))
            offset += n
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-probability of each whole string, in disjoint windows of ``max_seq_len`` tokens (as lm-eval's ``hf``)."""
        windows, owners = [], []
        for index, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append(((None, string[:40]), context, continuation))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[owner] += logprob
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with ``do_sample``) continuations, cut at the first of the ``until`` strings."""
        groups: dict[str, list[int]] = defaultdict(list)
        for index, req in enumerate(requests):  # requests with the same settings share batches
            groups[json.dumps(req.args[1], sort_keys=True, default=str)].append(index)
        out: list[str | None] = [None] * len(requests)
        for indices in groups.values():
            settings = dict(requests[indices[0]].args[1])
            indices.sort(key=lambda i: -len(requests[i].args[0]))
            for begin in range(0, len(indices), self.batch_size):
                chunk = indices[begin:begin + self.batch_size]
                for i, text in zip(chunk, self._generate_batch([requests[i].args[0] for i in chunk], settings)):
                    out[i] = text
        return out

    def _generate_batch(self, contexts: list[str], settings: dict) -> list[str]:
        until = settings.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        eos_text = self.tokenizer.decode([self.eot_token_id])
        if eos_text not in until:
            until.append(eos_text)
        max_new = int(settings.get("max_gen_toks", 256))
        encoded = [self.tok_encode(c) or [self.prefix_token_id] for c in contexts]
        longest = max(map(len, encoded))
        limit = self.max_length  # generation stays within max_seq_len, RoPE scaling or not (its cache is that long)
        max_new = min(max_new, limit - longest)
        if max_new < 1:
            raise ContextTooLong(f"the context {contexts[0][:60]!r} is {longest} tokens and fills the model's context "
                                 f"(model.max_seq_len={limit}): nothing can be generated after it; shorten the task's inputs")
        inputs = torch.zeros(len(encoded), longest, dtype=torch.long)
        mask = torch.zeros(len(encoded), longest, dtype=torch.long)
        for row, ids in enumerate(encoded):  # left padding: every row's next token is at the same position
            inputs[row, longest - len(ids):] = torch.tensor(ids)
            mask[row, longest - len(ids):] = 1
        tail = 2 * max(map(len, until)) + 4  # tokens decoded to look for a stop string (each is >= 1 byte)

        def stopped(tokens: Tensor) -> Tensor:
            new = tokens[:, longest:].tolist()
            return torch.tensor([any(u in self.tokenizer.decode(row[-tail:]) for u in until) for row in new])

        do_sample = bool(settings.get("do_sample", False)) and float(settings.get("temperature", 1.0)) > 0
        generator = torch.Generator(device=self._device).manual_seed(self.seed)
        tokens = generate(self.model, inputs.to(self._device), max_new,
                          temperature=float(settings.get("temperature", 1.0)) if do_sample else 0.0,
                          top_k=settings.get("top_k"), top_p=settings.get("top_p"), eos_token_id=self.eot_token_id,
                          attention_mask=mask.to(self._device), generator=generator, stop_when=stopped)
        texts = []
        for row in tokens[:, longest:].tolist():
            text = self.tokenizer.decode(row)
            for u in until:  # the earliest stop string ends the answer
                text = text.split(u)[0]
            texts.append(text)
        return texts

    # ------------------------------------------------------------------ distributed (lm-eval's evaluator calls these)
    def all_gather(self, tensor: Tensor) -> Tensor:
        if self._world_size == 1:
            return tensor
        import torch.distributed as dist

        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj, dst: int = 0):
        if self._world_size == 1:
            return [obj]
        import torch.distributed as dist

        parts = [None] * self._world_size
        dist.all_gather_object(parts, obj)
        return parts if self._rank == dst else None

    def barrier(self) -> None:
        if self._world_size > 1:
            import torch.distributed as dist

            dist.barrier()
