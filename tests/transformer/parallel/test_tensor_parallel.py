"""Tensor parallelism (and FSDP2 x TP) on CPU processes (gloo): the loss, the gradients, the weights and the
optimizer moments after AdamW steps with gradient clipping equal one process training the unsplit model (fp32,
within 1e-5), for GQA with SwiGLU, MHA with GELU, MLA (with and without a query latent) and a mixture of
experts; state dicts are in the usual row layout and load back into a split model."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from transformer.config import ModelConfig
from transformer.parallel.clip import clip_grad_norm
from transformer.transformer_model import build_model

from .test_ring_attention import _free_port

BASE = dict(vocab_size=64, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=16, norm="rmsnorm", tie_embeddings=True)
CONFIGS = {
    "gqa_swiglu": dict(BASE, mlp="swiglu", attention={"type": "gqa", "num_kv_heads": 2, "positional": "rope"}),
    "mha_gelu": dict(BASE, mlp="gelu", norm="layernorm", bias=True, position="learned",
                     attention={"type": "mha", "positional": "none"}),
    "mla": dict(BASE, mlp="swiglu", attention={"type": "mla", "positional": "rope", "kv_lora_rank": 16}),
    "mla_q_lora": dict(BASE, mlp="gelu", attention={"type": "mla", "positional": "rope", "kv_lora_rank": 16,
                                                    "q_lora_rank": 24, "rope_head_dim": 4}),
    "moe": dict(BASE, mlp="swiglu", moe_num_experts=2, moe_top_k=1, attention={"type": "gqa", "num_kv_heads": 2,
                                                                             "positional": "rope", "qk_norm": True}),
}


def _usual(name, tensor, model):
    """A full gradient of ``name`` in the usual row layout (DTensor gathered, rank layout undone)."""
    from torch.distributed.tensor import DTensor

    module = model.get_submodule(name.rpartition(".")[0])
    full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
    return full[module._tp_row_order.argsort()] if hasattr(module, "_tp_row_order") else full


def _steps(model, batches, optimizer, clip=clip_grad_norm):
    losses, grads = [], None
    for x, y in batches:
        out = model(x, y)
        optimizer.zero_grad()
        loss = out.loss + (0.01 * out.aux_loss if out.aux_loss is not None else 0)
        loss.backward()
        losses.append(out.loss.detach())
        norm = clip(model.parameters(), 0.5)
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
    return losses, grads, norm


def _worker(rank, world, port, name, dp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict, set_model_state_dict)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor

        from transformer.parallel.fsdp2 import shard_model
        from transformer.parallel.tensor_parallel import apply_tensor_parallel, register_optimizer_hooks

        torch.set_num_threads(1)
        tp = world // dp
        mesh = init_device_mesh("cpu", (dp, tp), mesh_dim_names=("data_parallel", "tensor_parallel"))
        cfg = ModelConfig(**CONFIGS[name])
        g = torch.Generator().manual_seed(0)
        batches = [(x[:, :-1], x[:, 1:]) for x in (torch.randint(0, 64, (4, 17), generator=g) for _ in range(3))]
        torch.manual_seed(0)
        reference = build_model(cfg)
        torch.manual_seed(0)
        split = apply_tensor_parallel(build_model(cfg), mesh["tensor_parallel"])
        if dp > 1:
            shard_model(split, mesh["data_parallel"])
        # eps well above fp32 rounding: Adam's first steps are ~sign(g), which would turn the rounding noise of a
        # near-zero gradient (an expert's unused hidden unit) into a full learning-rate step
        ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-5)
        opt = torch.optim.AdamW(split.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-5)
        register_optimizer_hooks(opt, split)
        ref_losses, ref_grads, ref_norm = _steps(reference, batches, ref_opt, clip=torch.nn.utils.clip_grad_norm_)
        dp_rank, per = mesh["data_parallel"].get_local_rank(), 4 // dp
        mine = [(x[dp_rank * per:(dp_rank + 1) * per], y[dp_rank * per:(dp_rank + 1) * per]) for x, y in batches]
        losses, grads, norm = _steps(split, mine, opt)
        for step, (ref, loss) in enumerate(zip(ref_losses, losses)):
            total = loss.clone()
            dist.all_reduce(total)  # tp copies of each data-parallel shard's mean
            assert abs(float(total) / world - float(ref)) < 1e-5, (step, float(total) / world, float(ref))
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        assert abs(float(norm) - float(ref_norm)) < 1e-5
        for key, grad in grads.items():
            assert (_usual(key, grad, split) - ref_grads[key]).abs().max() < 1e-5, key
        full = StateDictOptions(full_state_dict=True)
        state = get_model_state_dict(split, options=full)
        for key, tensor in reference.state_dict().items():
            assert (state[key] - tensor).abs().max() < 1e-5, f"{key} after 3 AdamW steps"
        moments = get_optimizer_state_dict(split, opt, options=full)["state"]
        ref_moments = get_optimizer_state_dict(reference, ref_opt, options=full)["state"]
        for key, entry in ref_moments.items():
            for moment in ("exp_avg", "exp_avg_sq"):
                assert (moments[key][moment] - entry[moment]).abs().max() < 1e-6, (key, moment)
        # taking the state dicts (a checkpoint) leaves the live state as it was: the next step still agrees
        (ref_loss,), _, _ = _steps(reference, batches[:1], ref_opt, clip=torch.nn.utils.clip_grad_norm_)
        (loss,), _, _ = _steps(split, mine[:1], opt)
        dist.all_reduce(loss)
        assert abs(float(loss) / world - float(ref_loss)) < 1e-5
        # the usual layout goes back into a freshly split model
        torch.manual_seed(1)
        fresh = apply_tensor_parallel(build_model(cfg), mesh["tensor_parallel"])
        if dp > 1:
            shard_model(fresh, mesh["data_parallel"])
        set_model_state_dict(fresh, reference.state_dict(), options=full)
        x, y = batches[0]
        assert abs(float(fresh(x, y).loss) - float(reference(x, y).loss)) < 1e-5
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_tensor_parallel_steps_equal_one_process(name):
    mp.spawn(_worker, args=(2, _free_port(), name, 1), nprocs=2, join=True)


def test_fsdp2_over_tensor_parallel_steps_equal_one_process():
    mp.spawn(_worker, args=(4, _free_port(), "gqa_swiglu", 2), nprocs=4, join=True)


def test_clip_grad_norm_equals_torchs_on_plain_tensors():
    import copy

    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b, x = copy.deepcopy(a), torch.randn(5, 4)
    for module in (a, b):
        module(x).pow(2).sum().backward()
    expected = torch.nn.utils.clip_grad_norm_(a.parameters(), 0.1)
    assert float(clip_grad_norm(b.parameters(), 0.1)) == pytest.approx(float(expected))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad)
    assert float(torch.nn.utils.get_total_norm([p.grad for p in b.parameters()])) == pytest.approx(0.1, rel=1e-4)


def test_rank_layout_order_puts_each_ranks_rows_together():
    from transformer.parallel.tensor_parallel import rank_layout_order

    # q: 4 rows, k: 2, v: 2 over 2 ranks -> [q0 q1 | k0 | v0 | q2 q3 | k1 | v1]
    assert rank_layout_order([4, 2, 2], 2).tolist() == [0, 1, 4, 6, 2, 3, 5, 7]


@pytest.mark.parametrize("overrides, match", [
    ({"attention": {"type": "mqa", "positional": "rope"}}, "num_kv_heads=1 must both be divisible"),
    ({"attention": {"type": "differential", "positional": "rope"}}, "'differential' has no tensor-parallel plan"),
    ({"attention": {"type": "gqa", "num_kv_heads": 2, "positional": "alibi"}}, "positional='alibi'"),
])
def test_settings_the_plan_cannot_split_are_refused(overrides, match):
    from transformer.parallel.tensor_parallel import check_tensor_parallel

    with pytest.raises(ValueError, match=match):
        check_tensor_parallel(build_model(ModelConfig(**dict(CONFIGS["gqa_swiglu"], **overrides))), 2)
