"""Communication volume of one training step (forward + backward) per strategy, from the torch profiler, beside
the analytic volume: ``python bench/comm_volume.py [--world 2] [--layers 2] [--dim 64] [--seq 64] [--batch 4] [--kv-heads 2]``.

Runs ``world`` CPU processes on gloo. Each strategy's pieces are applied directly (DDP's bucketed all-reduce,
:func:`transformer.parallel.fsdp2.shard_model`, :func:`transformer.parallel.tensor_parallel.apply_tensor_parallel`,
:func:`transformer.parallel.context_parallel.apply_context_parallel` with DDP for the gradients), one step is
profiled with ``record_shapes``, and the message each rank hands to every ``gloo:*`` operation (its input
shape; fp32 except the ring's int64 positions) is summed. Counted per rank, in bytes:

- ``ddp``: all-reduce of every gradient: ``4·P``.
- ``fsdp2``: all-gather of each unit's shard before its forward and again before its backward (the root unit is
  not resharded after forward), then the gradient reduce-scatter — which gloo runs as an all-reduce of the
  whole unsharded gradient: ``4·(P/W + P_blocks/W + P)``.
- ``tp``: one all-reduce of ``[b, s, D]`` after each block's attention and MLP forward and one of their input
  gradients in backward: ``4 · 4·L·b·s·D``.
- ``cp``: per layer, forward: W - 1 passes of this rank's keys, values (``2·b·n·(s/W)·d`` floats) and positions
  (``s/W`` int64); backward: W - 1 passes of the same plus W passes of their gradients (a full turn brings them
  home); plus DDP's gradient all-reduce (``4·P``).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STRATEGIES = ("ddp", "fsdp2", "tp", "cp")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measured(prof) -> int:
    total = 0
    for event in prof.events():
        # a point-to-point transfer shows as the sender's gloo:send and the receiver's gloo:recv: count the sends
        if event.name.startswith("gloo:") and event.name != "gloo:recv" and event.input_shapes and event.input_shapes[0]:
            shape = event.input_shapes[0]
            elements = 1
            for n in shape:
                elements *= n
            total += elements * (8 if len(shape) == 1 and event.name == "gloo:send" else 4)  # ring positions: int64
    return total


def _analytic(kind, cfg, args, model, world) -> int:
    params = sum(p.numel() for p in model.parameters())
    blocks = sum(p.numel() for name, p in model.named_parameters() if ".blocks." in name)
    b, s, d_model, layers = args.batch, args.seq, cfg.embed_dim, cfg.num_layers
    if kind == "ddp":
        return 4 * params
    if kind == "fsdp2":
        return 4 * (params // world + blocks // world + params)
    if kind == "tp":
        return 4 * 4 * layers * b * s * d_model
    n, d = cfg.attention.num_kv_heads, cfg.embed_dim // cfg.num_heads
    block = 2 * b * n * (s // world) * d * 4 + (s // world) * 8
    grads = 2 * b * n * (s // world) * d * 4
    return layers * (2 * (world - 1) * block + world * grads) + 4 * params


def _worker(rank, world, port, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel
    from torch.profiler import ProfilerActivity, profile

    from transformer.config import ModelConfig
    from transformer.parallel.context_parallel import apply_context_parallel, shard_batch
    from transformer.parallel.fsdp2 import shard_model
    from transformer.parallel.tensor_parallel import apply_tensor_parallel
    from transformer.transformer_model import build_model

    cfg = ModelConfig(vocab_size=256, embed_dim=args.dim, num_heads=4, num_layers=args.layers, max_seq_len=args.seq,
                      norm="rmsnorm", mlp="swiglu", tie_embeddings=True,
                      attention={"type": "gqa", "num_kv_heads": args.kv_heads, "positional": "rope"})
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (args.batch, args.seq + 1), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:]
    rows = []
    for kind in STRATEGIES:
        torch.manual_seed(0)
        model = build_model(cfg)
        reference = build_model(cfg)
        shard = None
        if kind == "ddp":
            step_model = DistributedDataParallel(model)
        elif kind == "fsdp2":
            step_model = shard_model(model, init_device_mesh("cpu", (world,)))
        elif kind == "tp":
            step_model = apply_tensor_parallel(model, init_device_mesh("cpu", (world,)))
        else:
            shard = apply_context_parallel(model, dist.group.WORLD, rank, world)
            step_model = DistributedDataParallel(model)

        def step():
            if shard is None:
                step_model(x, y).loss.backward()
                return
            with shard.sharded(args.seq, x.device):
                xs, ys, positions = shard_batch(shard, x, y)
                step_model(xs, ys, position_ids=positions).loss.backward()

        step()  # warm-up (lazy initialisation: FSDP2's, DDP's buckets)
        model.zero_grad(set_to_none=True)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
        rows.append((kind, _measured(prof), _analytic(kind, cfg, args, reference, world)))
        dist.barrier()
    if rank == 0:
        queue.put(rows)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2, help="of 4 query heads; tp needs it divisible by --world")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(args.world, _port(), args, queue), nprocs=args.world, join=True)
    rows = queue.get()
    print(f"# {args.world} gloo processes, {args.layers} layers x {args.dim}, GQA 4/{args.kv_heads}, seq {args.seq}, batch {args.batch}, "
          f"fp32; bytes each rank hands to communication in one forward + backward")
    print("| strategy | measured (profiler) | analytic | measured / analytic |")
    print("|---|---|---|---|")
    for kind, measured, analytic in rows:
        print(f"| {kind} | {measured:,} | {analytic:,} | {measured / analytic:.3f} |")


if __name__ == "__main__":
    main()
