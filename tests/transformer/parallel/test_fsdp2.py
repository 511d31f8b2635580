"""FSDP2 on 2 CPU processes (gloo): the loss, the gradients and the weights after optimizer steps equal one
process training on the whole batch (fp32, within 1e-5)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from transformer.config import ModelConfig
from transformer.transformer_model import build_model

from .test_ring_attention import _free_port

CONFIG = dict(vocab_size=64, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=16, norm="rmsnorm", mlp="swiglu",
              tie_embeddings=True, attention={"type": "gqa", "num_kv_heads": 2, "positional": "rope"})


def _steps(model, batches, lr=1e-2):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    losses = []
    for x, y in batches:
        out = model(x, y)
        opt.zero_grad()
        out.loss.backward()
        losses.append(out.loss.detach())
        grads = {n: p.grad for n, p in model.named_parameters()}
        opt.step()
    return losses, grads


def _worker(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        from transformer.parallel.fsdp2 import full_state_dict, shard_model

        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(0)
        batches = [(x[:, :-1], x[:, 1:]) for x in (torch.randint(0, 64, (4, 17), generator=g) for _ in range(3))]
        torch.manual_seed(0)
        reference = build_model(ModelConfig(**CONFIG))
        torch.manual_seed(0)
        sharded = shard_model(build_model(ModelConfig(**CONFIG)), init_device_mesh("cpu", (world,)))
        ref_losses, ref_grads = _steps(reference, batches)
        per = 4 // world  # this rank's rows of every batch
        losses, grads = _steps(sharded, [(x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]) for x, y in batches])
        for ref, mine in zip(ref_losses, losses):  # every row has the same token count: the mean of means is exact
            total = mine.clone()
            dist.all_reduce(total)
            assert abs(float(total) / world - float(ref)) < 1e-5
        for name, grad in grads.items():
            full = grad.full_tensor()
            assert (full - ref_grads[name]).abs().max() < 1e-5, name
        state = full_state_dict(sharded)
        for name, tensor in reference.state_dict().items():
            assert (state[name] - tensor).abs().max() < 1e-5, f"{name} after 3 AdamW steps"
    finally:
        dist.destroy_process_group()


def test_fsdp2_steps_equal_one_process_on_the_whole_batch():
    mp.spawn(_worker, args=(2, _free_port()), nprocs=2, join=True)


def test_a_model_without_blocks_is_refused():
    from transformer.parallel.fsdp2 import shard_model

    with pytest.raises(ValueError, match="no transformer blocks"):
        shard_model(torch.nn.Linear(2, 2), mesh=None)
