"""Tensor parallelism (Megatron-LM's split, through DTensor's ``parallelize_module``) over the toolkit's blocks.

Per transformer block, over the 1-D tensor-parallel ``mesh`` of ``tp`` ranks::

    attention  qkv_proj  column-wise: rank r computes the queries, keys and values of its own heads
               out_proj  row-wise:    partial outputs of its heads, summed over the ranks (one all-reduce)
    MLA        q_proj / q_up, kv_up column-wise (their rows are per head already); out_proj row-wise;
               q_down, kv_down and their norms replicated (the latents are small and every head reads them)
    MLP        w_in      column-wise: its share of the hidden units (every expert's, under MoE)
               w_out     row-wise:    summed over the ranks (one all-reduce)

Norms, embeddings, the head and MoE routers stay replicated (each rank computes them on the same activations).

The fused projections need care: ``qkv_proj`` stacks its rows as ``[q (h·d) | k (n·d) | v (n·d)]`` and a gated
``w_in`` as ``[gate (F) | up (F)]``; a plain column-wise split would hand rank 0 all the queries. So the rows are
first reordered to the *rank layout* ``[q_0 | k_0 | v_0 | q_1 | k_1 | v_1 | ...]`` (``q_r``: rank r's heads, in
order), whose contiguous shard r is exactly rank r's ``[q | k | v]``; each rank's attention then runs with
``h / tp`` query and ``n / tp`` key/value heads. Outside the module the rows are always in the usual layout:
state-dict hooks (module and optimizer) turn the rank layout back on the way out and into it on the way in, so
checkpoints — single-file or ``torch.distributed.checkpoint`` shards — are those of an unsplit model and load at
any degree of parallelism.

MLA's decoupled RoPE key is one head shared by all query heads; every rank computes it whole but its heads use
only part of it, so its gradient is summed over the ranks on the way back (:class:`_SumGradOverRanks`, Megatron's
``f``). Under TP MLA decodes by re-expanding its latent (the absorbed path reads ``kv_up`` as a plain tensor).

What the plan does not split: linear, differential, sparse, neighbourhood and SwitchHead attention, ALiBi and
relative position biases (per-head tables), and key/value head counts that ``tp`` does not divide (MQA at
tp > 1): :func:`check_tensor_parallel` refuses them with the reason.

Shape legend: h query heads, n key/value heads, d head dim, F MLP hidden width, D embed_dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import FeedForward, MixtureOfExperts, TransformerBlock

SPLITTABLE_ATTENTION = ("mha", "gqa", "mqa", "mla")


def rank_layout_order(segments: list[int], tp: int) -> Tensor:
    """``[rows]`` indices taking a weight stacked as ``segments`` (row counts) to the rank layout: for each rank
    its share of every segment, in order. ``weight[order]`` is the rank layout; ``layout[order.argsort()]`` undoes it."""
    starts = [sum(segments[:i]) for i in range(len(segments))]
    order = [torch.arange(start + r * size // tp, start + (r + 1) * size // tp)
             for r in range(tp) for start, size in zip(starts, segments)]
    return torch.cat(order)


def check_tensor_parallel(model: nn.Module, tp: int) -> None:
    """One-line ``ValueError`` naming the setting the tensor-parallel plan cannot split ``tp`` ways."""
    for index, block in enumerate(_blocks(model)):
        attn = block.attn
        kind = getattr(attn, "attention_type", type(attn).__name__)
        where = f"layer {index}: model.attention" if len(_blocks(model)) > 1 else "model.attention"
        if kind not in SPLITTABLE_ATTENTION:
            raise ValueError(f"{where}.type={kind!r} has no tensor-parallel plan (its projections are not split per "
                             f"head); use one of {', '.join(SPLITTABLE_ATTENTION)} or trainer.strategy=fsdp2")
        if attn.position_bias is not None:
            raise ValueError(f"{where}.positional={attn.config.positional!r}: its per-head bias table is not split "
                             f"across tensor-parallel ranks; use rope (or model.position=learned), or trainer.strategy=fsdp2")
        if kind == "mla" and attn.num_heads % tp:
            raise ValueError(f"{where}: num_heads={attn.num_heads} must be divisible by "
                             f"trainer.tensor_parallel_size={tp} (each rank holds whole heads)")
        if kind != "mla" and (attn.num_heads % tp or attn.num_kv_heads % tp):
            raise ValueError(f"{where}: num_heads={attn.num_heads} and num_kv_heads={attn.num_kv_heads} must both be "
                             f"divisible by trainer.tensor_parallel_size={tp} (each rank holds whole heads)")
        if block.cross_attn is not None:
            raise ValueError("an encoder_decoder model has no tensor-parallel plan yet (cross-attention); use "
                             "trainer.strategy=fsdp2")
        for mlp in _feedforwards(block):
            hidden = mlp.w_out.in_features
            if hidden % tp:
                raise ValueError(f"model.mlp_hidden_dim={hidden} must be divisible by trainer.tensor_parallel_size={tp}")


def apply_tensor_parallel(model: nn.Module, mesh) -> nn.Module:
    """Split every block of ``model`` over the 1-D ``mesh`` (in place; see the module docstring)."""
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel, SequenceParallel,
                                                   parallelize_module)

    tp = mesh.size()
    check_tensor_parallel(model, tp)
    for block in _blocks(model):
        attn = block.attn
        h, n, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
        if attn.attention_type == "mla":
            plan = {"attn.q_up" if attn.q_lora_rank else "attn.q_proj": ColwiseParallel(),
                    "attn.kv_up": ColwiseParallel(), "attn.out_proj": RowwiseParallel()}
            group = mesh.get_group()
            attn.shared_key_hook = lambda t, group=group: _SumGradOverRanks.apply(t, group)
        else:
            _reorder_rows(attn.qkv_proj, [h * d, n * d, n * d], tp)
            plan = {"attn.qkv_proj": ColwiseParallel(), "attn.out_proj": RowwiseParallel()}
        if attn.attention_type != "mla" and attn.q_norm is not None:
            # one [d] weight shared by the heads of [b, s, heads, d]: each rank's heads give part of its gradient,
            # which SequenceParallel (its input sharded on the head dim) sums over the ranks
            plan["attn.q_norm"] = plan["attn.k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        for name, mlp in _named_feedforwards(block):
            if mlp.gated:
                hidden = mlp.w_out.in_features
                _reorder_rows(mlp.w_in, [hidden, hidden], tp)
            plan[f"{name}.w_in"], plan[f"{name}.w_out"] = ColwiseParallel(), RowwiseParallel()
        parallelize_module(block, mesh, plan)
        # each rank now runs attention over its own heads
        attn.num_heads, attn.num_kv_heads = h // tp, n // tp  # (MLA: n = h)
        if attn.attention_type != "mla":
            attn.q_size, attn.kv_size = (h // tp) * d, (n // tp) * d
    return model


class _SumGradOverRanks(torch.autograd.Function):
    """Identity forward; the backward sums the gradient over the tensor-parallel ranks (Megatron's ``f``): for an
    activation every rank computes whole while each rank's heads use only a part of it."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def row_orders(model: nn.Module) -> dict[int, Tensor]:
    """``id(parameter) -> rank-layout order`` of every reordered parameter of ``model`` as it is now (FSDP2
    replaces the parameter objects after the split, so the map is built from the modules, not kept)."""
    return {id(param): module._tp_row_order for module in model.modules() if hasattr(module, "_tp_row_order")
            for param in module.parameters(recurse=False)}


def register_optimizer_hooks(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Make ``optimizer.state_dict()`` / ``load_state_dict`` speak the usual row layout for the reordered weights'
    moments (Adam's ``exp_avg`` and ``exp_avg_sq`` have their parameter's shape and layout)."""

    def convert(opt, state_dict, to_usual):
        orders = row_orders(model)
        # state is keyed as the saved param_groups list their parameters (indices from state_dict(), FQNs from
        # torch.distributed.checkpoint's loader), in the order of the optimizer's own groups
        for group, saved in zip(opt.param_groups, state_dict["param_groups"]):
            for param, key in zip(group["params"], saved["params"]):
                if id(param) in orders and key in state_dict["state"]:
                    # a new dict: state_dict()'s entries are the optimizer's live state, which keeps the rank layout
                    state_dict["state"][key] = {
                        name: _relayout(value, orders[id(param)], to_usual=to_usual, like=param)
                        if isinstance(value, Tensor) and value.shape == param.shape else value
                        for name, value in state_dict["state"][key].items()}
        return state_dict

    optimizer.register_state_dict_post_hook(lambda opt, sd: convert(opt, sd, True))
    optimizer.register_load_state_dict_pre_hook(lambda opt, sd: convert(opt, sd, False))


def _reorder_rows(linear: nn.Linear, segments: list[int], tp: int) -> None:
    """Put ``linear``'s rows (weight and bias) in the rank layout and hook its state dict to the usual one."""
    order = rank_layout_order(segments, tp)
    with torch.no_grad():
        for param in linear.parameters(recurse=False):
            param.copy_(param[order])
    linear._tp_row_order = order

    def to_usual(module, state_dict, prefix, local_metadata):
        for name, param in module.named_parameters(recurse=False):
            if prefix + name in state_dict:
                state_dict[prefix + name] = _relayout(state_dict[prefix + name], order, to_usual=True, like=param)
        return state_dict

    def from_usual(module, state_dict, prefix, *args):
        for name, param in module.named_parameters(recurse=False):
            if prefix + name in state_dict:
                state_dict[prefix + name] = _relayout(state_dict[prefix + name], order, to_usual=False, like=param)

    linear._register_state_dict_hook(to_usual)
    linear.register_load_state_dict_pre_hook(from_usual)


def _relayout(value: Tensor, order: Tensor, *, to_usual: bool, like: Tensor) -> Tensor:
    """``value`` (a DTensor placed like ``like``, or a whole tensor) with its rows taken from the rank layout to
    the usual one (``to_usual``) or back; a DTensor comes back placed as it was (the usual layout sharded as
    DTensor shards anything), a whole tensor comes back whole."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    full = value.full_tensor() if isinstance(value, DTensor) else value
    index = order.argsort() if to_usual else order
    full = full.index_select(0, index.to(full.device))
    if isinstance(value, DTensor):
        return distribute_tensor(full, value.device_mesh, value.placements)
    if isinstance(like, DTensor) and not to_usual:  # a whole tensor going into a split parameter: its local rows
        return distribute_tensor(full.to(like.device), like.device_mesh, like.placements)
    return full


def _blocks(model: nn.Module) -> list[TransformerBlock]:
    return [m for m in model.modules() if isinstance(m, TransformerBlock)]


def _named_feedforwards(block: TransformerBlock) -> list[tuple[str, FeedForward]]:
    if isinstance(block.mlp, MixtureOfExperts):
        return [(f"mlp.experts.{i}", expert) for i, expert in enumerate(block.mlp.experts)]
    return [("mlp", block.mlp)]


def _feedforwards(block: TransformerBlock) -> list[FeedForward]:
    return [mlp for _, mlp in _named_feedforwards(block)]
