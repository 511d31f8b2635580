"""Gradient-norm clipping over parameters that live on different device meshes.

Under tensor parallelism the split projections are DTensors on the tensor-parallel mesh while norms and
embeddings are plain (replicated) tensors; under FSDP2 x TP some are 2-D DTensors and the rest 1-D.
``torch.nn.utils.clip_grad_norm_`` runs one fused kernel over all gradients and refuses such a mix, so the norm
is taken per group of alike gradients (plain, or one mesh + placements), each group's DTensor norm reduced to
the global value, and the groups combined: the same total norm as the unsplit model's.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor


def clip_grad_norm(parameters, max_norm: float, norm_type: float = 2.0) -> Tensor:
    """Scale the gradients in place so their total ``norm_type`` norm is at most ``max_norm``; returns the total
    norm before clipping (a plain tensor)."""
    from torch.distributed.tensor import DTensor
    from torch.nn.utils import clip_grads_with_norm_, get_total_norm

    groups: dict[object, list[Tensor]] = defaultdict(list)  # parameters with alike gradients
    for param in parameters:
        if param.grad is not None:
            grad = param.grad
            key = (grad.device_mesh, tuple(grad.placements)) if isinstance(grad, DTensor) else grad.device
            groups[key].append(param)
    norms = []
    for params in groups.values():
        norm = get_total_norm([p.grad for p in params], norm_type)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    if not norms:
        return torch.zeros(())
    total = get_total_norm([n.to(norms[0].device) for n in norms], norm_type)
    for params in groups.values():
        clip_grads_with_norm_(params, max_norm, total.to(params[0].grad.device))
    return total
