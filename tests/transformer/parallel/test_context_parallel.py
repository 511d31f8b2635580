"""Context parallelism on CPU processes (gloo): each rank runs its zig-zag shard of every sequence through the
model with ring attention; the mean of the ranks' losses and of their gradients equals one process on the whole
sequences (fp32, within 1e-5), for GQA with RoPE and MHA with learned positions, on 2 and 4 ranks."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from transformer.config import ModelConfig
from transformer.transformer_model import build_model

from .test_ring_attention import _free_port

BASE = dict(vocab_size=64, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=32, norm="rmsnorm", mlp="swiglu",
            tie_embeddings=True)
CONFIGS = {
    "gqa_rope": dict(BASE, attention={"type": "gqa", "num_kv_heads": 2, "positional": "rope"}),
    "mha_learned": dict(BASE, position="learned", attention={"type": "mha", "positional": "none"}),
}


def _worker(rank, world, port, name):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from transformer.parallel.context_parallel import apply_context_parallel, shard_batch

        torch.set_num_threads(1)
        cfg = ModelConfig(**CONFIGS[name])
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, 64, (2, 33), generator=g)
        x, y = tokens[:, :-1], tokens[:, 1:]
        torch.manual_seed(0)
        reference = build_model(cfg)
        torch.manual_seed(0)
        model = build_model(cfg)
        shard = apply_context_parallel(model, dist.group.WORLD, rank, world)
        ref = reference(x, y).loss
        ref.backward()
        with shard.sharded(x.shape[1], x.device):
            xs, ys, positions = shard_batch(shard, x, y)
            out = model(xs, ys, position_ids=positions)
            out.loss.backward()
        assert xs.shape[1] == 32 // world
        assert abs(float(shard.mean(out.loss)) - float(ref)) < 1e-5
        for (key, p), q in zip(model.named_parameters(), reference.parameters()):
            grad = p.grad.clone()
            dist.all_reduce(grad)
            assert (grad / world - q.grad).abs().max() < 1e-5, key
        assert model.decoder.blocks[0].attn.last_dispatch == "ring"
        # outside the sharded context the model runs whole sequences as usual (generation, samples)
        assert abs(float(model(x, y).loss) - float(ref)) < 1e-6
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name, world", [("gqa_rope", 2), ("mha_learned", 2),
                                         pytest.param("gqa_rope", 4, marks=pytest.mark.slow)])
def test_sharded_sequences_give_the_whole_sequences_loss_and_gradients(name, world):
    mp.spawn(_worker, args=(world, _free_port(), name), nprocs=world, join=True)


@pytest.mark.parametrize("attention, match", [
    ({"type": "mla", "positional": "rope"}, "'mla' has no ring-attention form"),
    ({"type": "gqa", "num_kv_heads": 2, "positional": "rope", "sliding_window": 8}, "sliding_window=8"),
    ({"type": "gqa", "num_kv_heads": 2, "positional": "alibi"}, "positional='alibi'"),
])
def test_settings_the_ring_cannot_compute_are_refused(attention, match):
    from transformer.parallel.context_parallel import check_context_parallel

    with pytest.raises(ValueError, match=match):
        check_context_parallel(build_model(ModelConfig(**dict(BASE, attention=attention))), 2)


def test_a_block_size_the_zigzag_cannot_split_is_refused():
    from transformer.parallel.context_parallel import ContextShard

    with pytest.raises(ValueError, match="data.block_size=30 must be divisible by 2 x trainer.context_parallel_size=4"):
        with ContextShard(None, 0, 4).sharded(30, "cpu"):
            pass
