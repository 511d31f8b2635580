"""FSDP2 (``torch.distributed.fsdp.fully_shard``) over the toolkit's models: one shard group per transformer block.

Each :class:`~transformer.layers.TransformerBlock` becomes its own FSDP unit (its parameters are all-gathered just
for its forward and backward, then freed), and the root takes the rest (embeddings, final norm, head — tied
embeddings stay one parameter). Gradients are reduce-scattered, averaged over the data-parallel ranks, so a step
on ``world`` shards of a batch equals one step on the whole batch. ``mixed_precision="bf16"``: parameters are
cast to bf16 for compute and gradients reduced in fp32 (the policy torchtitan and torchtune use).

Shape legend: none (modules are sharded in place).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import TransformerBlock


def shard_model(model: nn.Module, mesh, *, mixed_precision: str | None = None, reshard_after_forward: bool = True) -> nn.Module:
    """``fully_shard`` every transformer block of ``model``, then ``model`` itself, over the 1-D ``mesh``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if mixed_precision not in (None, "bf16"):
        raise ValueError(f"mixed_precision={mixed_precision!r}: None (fp32) or 'bf16'")
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision == "bf16"
              else MixedPrecisionPolicy())
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no transformer blocks to shard")
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded parameters and buffers (every rank gets them; collective: all ranks must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
