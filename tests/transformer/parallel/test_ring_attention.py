"""Ring attention on 2 and 4 CPU processes (gloo): forward and backward equal full attention on the whole
sequence (``scaled_dot_product_attention`` and autograd), causal and not, MHA and GQA, zig-zag and contiguous
shards."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from transformer.parallel.ring_attention import ring_attention, zigzag_positions, zigzag_shard, zigzag_unshard


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _case(rank, world, *, causal, heads, kv_heads, zigzag, seed, dtype=torch.float64):
    torch.manual_seed(seed)
    b, s, d = 2, 8 * world, 8
    q = torch.randn(b, heads, s, d, dtype=dtype)
    k, v = torch.randn(b, kv_heads, s, d, dtype=dtype), torch.randn(b, kv_heads, s, d, dtype=dtype)
    grad = torch.randn(b, heads, s, d, dtype=dtype)
    # reference: the whole sequence on one process
    fq, fk, fv = (t.clone().requires_grad_() for t in (q, k, v))
    g = heads // kv_heads
    ref = F.scaled_dot_product_attention(fq, fk.repeat_interleave(g, 1), fv.repeat_interleave(g, 1), is_causal=causal)
    ref.backward(grad)
    # this rank's shard
    if zigzag:
        positions, cut = zigzag_positions(s, rank, world), (lambda t: zigzag_shard(t, rank, world))
    else:
        positions = torch.arange(rank * s // world, (rank + 1) * s // world)
        cut = lambda t: t[:, :, positions]  # noqa: E731
    lq, lk, lv = (cut(t).clone().requires_grad_() for t in (q, k, v))
    out = ring_attention(lq, lk, lv, positions=positions, causal=causal)
    out.backward(cut(grad))
    gathered = {}
    for name, tensor in (("out", out.detach()), ("dq", lq.grad), ("dk", lk.grad), ("dv", lv.grad)):
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        if zigzag:
            gathered[name] = zigzag_unshard(parts)
        else:
            gathered[name] = torch.cat(parts, dim=2)
    for name, expected in (("out", ref), ("dq", fq.grad), ("dk", fk.grad), ("dv", fv.grad)):
        err = (gathered[name] - expected.detach()).abs().max().item()
        assert err < (1e-10 if dtype == torch.float64 else 1e-5), f"{name}: max |ring - full| = {err:.2e} (world {world}, causal {causal}, {heads}/{kv_heads} heads)"


def _worker(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        for i, (causal, heads, kv, zigzag) in enumerate([(True, 4, 4, True), (True, 4, 2, True), (False, 4, 1, True),
                                                         (True, 4, 2, False), (False, 4, 4, False)]):
            _case(rank, world, causal=causal, heads=heads, kv_heads=kv, zigzag=zigzag, seed=i)
        _case(rank, world, causal=True, heads=4, kv_heads=2, zigzag=True, seed=9, dtype=torch.float32)  # fp32: within 1e-5
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_ring_attention_equals_full_attention(world):
    mp.spawn(_worker, args=(world, _free_port()), nprocs=world, join=True)


def test_zigzag_shards_balance_causal_work_and_round_trip():
    x = torch.arange(32).view(1, 1, 32, 1)
    shards = [zigzag_shard(x, r, 4) for r in range(4)]
    assert torch.equal(zigzag_unshard(shards), x)
    pairs = [int(sum(p + 1 for p in zigzag_positions(32, r, 4))) for r in range(4)]  # allowed keys per rank, causal
    assert len(set(pairs)) == 1
    with pytest.raises(ValueError, match="divisible by 2 x 4"):
        zigzag_positions(30, 0, 4)


def test_ring_attention_needs_a_process_group():
    with pytest.raises(RuntimeError, match="torch.distributed initialised"):
        ring_attention(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), positions=torch.arange(4))
