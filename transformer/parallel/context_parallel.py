"""Context parallelism: each sequence of a batch split across the ``cp`` ranks of a group, attention by ring.

Every rank of a context-parallel group receives the same batch and keeps its zig-zag shard of each sequence
(chunks ``r`` and ``2·cp - 1 - r`` of ``2·cp``: equal causal work per rank); everything but attention is per
token and runs on the shard alone, with the tokens' global positions (RoPE, learned positions). Attention runs
:func:`~transformer.parallel.ring_attention.ring_attention` over the group: the key/value blocks travel round the
ring, merged by their log-sum-exp, so each rank's outputs are those of full attention over the whole sequence.
Each rank's loss is the mean over its shard's tokens (all shards the same size), so averaging gradients over
the data- and context-parallel ranks — FSDP2 over both — gives the gradient of the whole batch's mean loss.

Only while :meth:`ContextShard.sharded` is active do attention layers use the ring: generation and any
forward on whole sequences run as usual. What is not supported (refused by :func:`check_context_parallel`):
attention types other than mha / gqa / mqa, sliding windows, ALiBi / relative biases, packed documents
with document masks, and fine-tuning data whose loss skips tokens (shards would weigh unequally).

Shape legend: b batch, s sequence (whole), s/cp local shard.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..layers import TransformerBlock
from .ring_attention import ring_attention, zigzag_positions

RING_ATTENTION = ("mha", "gqa", "mqa")


class ContextShard:
    """The context-parallel group of this rank and, while a sharded forward runs, its tokens' global positions."""

    def __init__(self, group, rank: int, size: int) -> None:
        self.group, self.rank, self.size = group, rank, size
        self.positions: Tensor | None = None  # [s/cp] while sharded, else None

    @contextlib.contextmanager
    def sharded(self, seq_len: int, device):
        """Within: attention layers run the ring with this rank's positions (``[s/cp]``, yielded)."""
        if seq_len % (2 * self.size):
            raise ValueError(f"data.block_size={seq_len} must be divisible by 2 x trainer.context_parallel_size="
                             f"{self.size} (each rank takes two equal chunks of every sequence)")
        self.positions = zigzag_positions(seq_len, self.rank, self.size, device)
        try:
            yield self.positions
        finally:
            self.positions = None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
        """``[b, h, s/cp, d]`` queries over the whole sequence's keys / values (their shards on the ring)."""
        return ring_attention(q, k, v, positions=self.positions, causal=causal, scale=scale, group=self.group)

    def mean(self, value: Tensor) -> Tensor:
        """The mean of a per-shard scalar over the group (the whole sequences' loss, for logging)."""
        import torch.distributed as dist

        total = value.detach().clone()
        dist.all_reduce(total, group=self.group)
        return total / self.size


def check_context_parallel(model: nn.Module, cp: int) -> None:
    """One-line ``ValueError`` naming a setting whose attention the ring cannot compute."""
    for index, block in enumerate(m for m in model.modules() if isinstance(m, TransformerBlock)):
        attn, where = block.attn, f"layer {index}: model.attention"
        kind = getattr(attn, "attention_type", type(attn).__name__)
        if kind not in RING_ATTENTION:
            raise ValueError(f"{where}.type={kind!r} has no ring-attention form; trainer.context_parallel_size={cp} "
                             f"needs one of {', '.join(RING_ATTENTION)}")
        if attn.sliding_window is not None or attn.position_bias is not None:
            setting = (f"sliding_window={attn.sliding_window}" if attn.sliding_window is not None
                       else f"positional={attn.config.positional!r}")
            raise ValueError(f"{where}.{setting} is not supported under trainer.context_parallel_size={cp} (the ring "
                             f"computes plain causal attention); use rope or learned positions without a window")
        if block.cross_attn is not None:
            raise ValueError(f"an encoder_decoder model is not supported under trainer.context_parallel_size={cp}")


def apply_context_parallel(model: nn.Module, group, rank: int, size: int) -> ContextShard:
    """Give every attention layer of ``model`` the group's :class:`ContextShard` (``model.context_shard`` too)."""
    check_context_parallel(model, size)
    shard = ContextShard(group, rank, size)
    for block in (m for m in model.modules() if isinstance(m, TransformerBlock)):
        block.attn.context_shard = shard
    model.context_shard = shard
    return shard


def shard_batch(shard: ContextShard, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """This rank's zig-zag shard of inputs and targets ``[b, s] -> [b, s/cp]`` and their global positions
    ``[b, s/cp]`` (call inside :meth:`ContextShard.sharded`)."""
    positions = shard.positions
    return x[:, positions], y[:, positions], positions.expand(x.shape[0], -1).to(torch.long)
