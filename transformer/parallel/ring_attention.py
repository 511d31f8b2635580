"""Ring attention: exact softmax attention over a sequence split across the ranks of a process group.

Each rank holds a shard of the queries, keys and values. Over ``world`` steps the key/value blocks travel
around the ring (rank r sends to r + 1 and receives from r - 1, with ``torch.distributed`` point-to-point
ops); every rank scores its queries against the block it holds, and the partial results are merged with their
log-sum-exp (:func:`transformer.attention.block_sparse.merge`'s rule). The backward pass runs the ring again:
each block's key/value gradients travel with it and arrive back at their owner after a full turn, while the
query gradient stays local (the flash-attention backward, per block, from the saved log-sum-exp).

Causal load balance (zig-zag, as in Megatron-LM's context parallelism): the sequence is cut into ``2 * world``
chunks and rank r holds chunks r and ``2 * world - 1 - r``, so every rank has the same number of allowed
(query, key) pairs; :func:`zigzag_positions` gives the global positions of a shard and :func:`zigzag_shard` /
:func:`zigzag_unshard` cut a full sequence and put it back. Positions, not shard order, decide the causal mask,
so a contiguous split (``positions`` = a range) works too.

Shape legend: b batch, h query heads, n key/value heads (h = n · g), s local sequence, d head dim, e value dim.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def zigzag_positions(seq_len: int, rank: int, world: int, device=None) -> Tensor:
    """Global positions ``[s]`` of rank ``rank``'s zig-zag shard of a ``seq_len``-token sequence."""
    if seq_len % (2 * world):
        raise ValueError(f"sequence length {seq_len} must be divisible by 2 x {world} ranks for the zig-zag split")
    chunk = seq_len // (2 * world)
    first = torch.arange(rank * chunk, (rank + 1) * chunk, device=device)
    second = torch.arange((2 * world - 1 - rank) * chunk, (2 * world - rank) * chunk, device=device)
    return torch.cat([first, second])


def zigzag_shard(x: Tensor, rank: int, world: int, dim: int = -2) -> Tensor:
    """This rank's zig-zag shard of ``x`` along ``dim`` (the sequence)."""
    return x.index_select(dim, zigzag_positions(x.shape[dim], rank, world, x.device))


def zigzag_unshard(shards: list[Tensor], dim: int = -2) -> Tensor:
    """The full sequence from every rank's shard (rank order)."""
    world = len(shards)
    seq_len = shards[0].shape[dim] * world
    order = torch.cat([zigzag_positions(seq_len, r, world, shards[0].device) for r in range(world)])
    full = torch.cat(shards, dim=dim)
    return full.index_select(dim, torch.argsort(order))


class _Pass:
    """``tensors`` on their way to the next rank while the previous rank's arrive (same shapes); :meth:`wait`
    returns them. Started before this step's block is scored, so the transfer overlaps the compute."""

    def __init__(self, tensors: list[Tensor], group) -> None:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        nxt, prv = (rank + 1) % world, (rank - 1) % world
        if group is not None:  # ranks of the group -> global ranks
            nxt, prv = dist.get_global_rank(group, nxt), dist.get_global_rank(group, prv)
        self.sent = [t.contiguous() for t in tensors]  # kept alive until the sends complete
        self.received = [torch.empty_like(t) for t in self.sent]
        ops = [dist.P2POp(dist.isend, t, nxt, group) for t in self.sent]
        ops += [dist.P2POp(dist.irecv, r, prv, group) for r in self.received]
        self.requests = dist.batch_isend_irecv(ops)

    def wait(self) -> list[Tensor]:
        for req in self.requests:
            req.wait()
        return self.received


def _scores(q: Tensor, k: Tensor, scale: float, allowed: Tensor | None) -> Tensor:
    """``q`` ``[b, n, g, s, d]`` · ``k`` ``[b, n, t, d]`` -> scores ``[b, n, g, s, t]`` (at least fp32), masked to -inf."""
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("bngsd,bntd->bngst", q.to(acc), k.to(acc)) * scale
    return scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_pos, kv_pos, causal, scale, group):
        b, h, s, d = q.shape
        n = k.shape[1]
        qg = q.view(b, n, h // n, s, d)
        world = dist.get_world_size(group)
        acc = torch.promote_types(q.dtype, torch.float32)  # bf16 / fp16 inputs accumulate in fp32
        out = torch.zeros(b, n, h // n, s, v.shape[-1], dtype=acc, device=q.device)
        lse = torch.full((b, n, h // n, s), float("-inf"), dtype=acc, device=q.device)
        block_k, block_v, block_pos = k, v, kv_pos
        for step in range(world):
            if step < world - 1:  # the next block is on its way while this one is scored
                incoming = _Pass([block_k, block_v, block_pos], group)
            allowed = (q_pos[:, None] >= block_pos[None, :]) if causal else None  # [s, t]
            scores = _scores(qg, block_k, scale, allowed)
            block_lse = torch.logsumexp(scores, dim=-1)  # [b, n, g, s]; -inf where nothing is allowed
            new_lse = torch.logaddexp(lse, block_lse)
            safe = torch.where(torch.isfinite(new_lse), new_lse, torch.zeros_like(new_lse))
            p = torch.exp(scores - safe[..., None])
            out = out * torch.exp(lse - safe)[..., None] + torch.einsum("bngst,bnte->bngse", p, block_v.to(acc))
            lse = new_lse
            if step < world - 1:
                block_k, block_v, block_pos = incoming.wait()
        ctx.save_for_backward(q, k, v, q_pos, kv_pos, out, lse)
        ctx.causal, ctx.scale, ctx.group = causal, scale, group
        return out.view(b, h, s, -1).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, q_pos, kv_pos, out, lse = ctx.saved_tensors
        group, scale = ctx.group, ctx.scale
        b, h, s, d = q.shape
        n = k.shape[1]
        g = h // n
        acc = out.dtype
        qg = q.view(b, n, g, s, d).to(acc)
        dout = grad_out.reshape(b, n, g, s, -1).to(acc)
        delta = (dout * out).sum(-1)  # [b, n, g, s]: rowsum(dO ∘ O)
        safe_lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        dq = torch.zeros_like(qg)
        world = dist.get_world_size(group)
        block_k, block_v, block_pos = k, v, kv_pos
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        for step in range(world):
            if step < world - 1:  # the block goes on while its gradients are computed (not home again after the last)
                moving = _Pass([block_k, block_v, block_pos], group)
            allowed = (q_pos[:, None] >= block_pos[None, :]) if ctx.causal else None
            p = torch.exp(_scores(qg, block_k, scale, allowed) - safe_lse[..., None])  # [b, n, g, s, t]
            dv = dv + torch.einsum("bngst,bngse->bnte", p, dout)
            dp = torch.einsum("bngse,bnte->bngst", dout, block_v.to(acc))
            ds = p * (dp - delta[..., None]) * scale
            dq = dq + torch.einsum("bngst,bntd->bngsd", ds, block_k.to(acc))
            dk = dk + torch.einsum("bngst,bngsd->bntd", ds, qg)
            # the block's key/value gradients follow it; after a full turn they are home again
            if step < world - 1:
                block_k, block_v, block_pos = moving.wait()
            dk, dv = _Pass([dk, dv], group).wait()
        return (dq.view(b, h, s, d).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None)


def ring_attention(q: Tensor, k: Tensor, v: Tensor, *, positions: Tensor, causal: bool = True, scale: float | None = None,
                   group=None) -> Tensor:
    """Softmax attention of this rank's queries ``q`` ``[b, h, s, d]`` over every rank's keys / values
    ``k`` ``[b, n, s, d]``, ``v`` ``[b, n, s, e]`` (GQA: ``h`` a multiple of ``n``); ``positions`` ``[s]``: the
    global positions of this rank's tokens (:func:`zigzag_positions`), which the causal mask compares. Returns
    ``[b, h, s, e]``, differentiable in ``q``, ``k`` and ``v``. Every rank of ``group`` must call it together."""
    if not dist.is_initialized():
        raise RuntimeError("ring_attention needs torch.distributed initialised (a process group over the ranks "
                           "that share the sequence)")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key/value heads")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    positions = positions.to(q.device)
    return _RingAttention.apply(q, k, v, positions, positions, causal, scale, group)
