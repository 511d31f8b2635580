"""NF4 storage of frozen base weights for QLoRA, through ``torchao`` (which runs on CPU as well as GPU).

``torchao``'s ``NF4Tensor`` keeps 4-bit codes per weight, one scale per ``block_size`` weights, and the
scales themselves double-quantised to int8 per ``scaler_block_size`` blocks (the QLoRA paper's recipe).
``torchao`` is an optional dependency (the ``finetune`` extra); asking for ``qlora`` without it is a
one-line error naming the package.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _nf4():
    import logging

    # torchao logs a warning per optional CUDA / triton kernel it cannot load: noise on a CPU machine, and NF4
    # needs none of them.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import NF4Tensor, linear_nf4, to_nf4
    except ImportError:
        try:
            from torchao.dtypes.nf4tensor import NF4Tensor, linear_nf4, to_nf4  # torchao < 0.15
        except ImportError:
            raise ImportError("finetune.method=qlora needs the torchao package (NF4 weights): "
                              "pip install 'transformer-toolkit[finetune]'") from None
    return NF4Tensor, linear_nf4, to_nf4


def require_torchao() -> None:
    _nf4()


def is_quantized(weight: Tensor) -> bool:
    return type(weight).__name__ == "NF4Tensor" or type(getattr(weight, "data", None)).__name__ == "NF4Tensor"


def _scaler_block(blocks: int, wanted: int = 256) -> int:
    """The largest divisor of ``blocks`` up to ``wanted``: torchao needs the scales to split evenly."""
    for size in range(min(wanted, blocks), 0, -1):
        if blocks % size == 0:
            return size
    return 1


def quantize_nf4(weight: Tensor, block_size: int = 64) -> Tensor:
    """``weight`` ``[o, i]`` as an NF4 tensor (same shape; ``F.linear`` dequantises on the fly)."""
    _, _, to_nf4 = _nf4()
    if weight.numel() % block_size:
        raise ValueError(f"finetune.quant_block_size={block_size} does not divide a weight of {weight.numel()} "
                         f"elements {tuple(weight.shape)}; choose a divisor (64, 32, ...)")
    return to_nf4(weight.detach().contiguous(), block_size, _scaler_block(weight.numel() // block_size))


def quantize_linear(linear: nn.Linear, block_size: int = 64) -> None:
    """Replace ``linear.weight`` by its frozen NF4 form, in place."""
    linear.weight = nn.Parameter(quantize_nf4(linear.weight.data, block_size), requires_grad=False)


def dequantize(weight: Tensor) -> Tensor:
    return weight.get_original_weight() if is_quantized(weight) else weight


def linear_any(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear`` for a plain or NF4 weight (the NF4 product dequantises, in the input's dtype)."""
    if is_quantized(weight):
        _, linear_nf4, _ = _nf4()
        out = linear_nf4(x, weight)
        return out if bias is None else out + bias
    return F.linear(x, weight, bias)


def weight_bytes(weight: Tensor) -> int:
    """Bytes a weight occupies: codes + scales for NF4, ``numel * element_size`` otherwise."""
    if is_quantized(weight):
        parts = ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean", "nf4")
        return sum(getattr(weight, p).numel() * getattr(weight, p).element_size() for p in parts if hasattr(weight, p))
    return weight.numel() * weight.element_size()
