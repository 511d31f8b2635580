"""A KV cache that stores old tokens as int8 or int4 codes, with the newest tokens kept exact.

Why: the cache, not the weights, bounds how many tokens and sequences fit at long context. Storing each
cached number in 8 or 4 bits instead of 16 / 32 cuts that memory 2-8x; the price is a small error in the
attention over old tokens (KIVI, Liu et al. 2024; the same per-token group scheme as llama.cpp's Q8_0 /
Q4_1 blocks).

Layout, per stream ``[b, n, S, w]`` (the same streams as :class:`~.kv_cache.KVCache`):

- every token's ``w`` numbers are split into groups of ``g`` (``group_size``, or ``w`` when ``w`` is not a
  multiple of it); each group has its own fp16 scale;
- **int8**: symmetric, ``code = round(x / s)`` in ``[-127, 127]``, ``s = absmax / 127``;
  error ``|x - x̂| <= s / 2`` (plus fp16 rounding of ``s``);
- **int4**: asymmetric, ``code = round((x - min) / s)`` in ``[0, 15]``, ``s = (max - min) / 15``, two codes
  per byte, an fp16 ``min`` per group; error ``|x - x̂| <= s / 2`` (plus fp16 rounding of ``s`` and ``min``);
- the newest ``residual`` tokens stay in the cache dtype, unquantized: the most recent keys get the most
  attention, and a token is quantized once, when it leaves that window.

Bytes per token and stream: ``n * (w * bits / 8 + (w / g) * 2 * (1 if bits == 8 else 2))``; with ``g = 32``
int8 is ``1.0625 w`` bytes and int4 ``0.625 w`` against ``4 w`` in fp32 (``bytes_per_token``). The residual
window adds a constant ``residual * n * w * itemsize`` per stream and sequence.

Each call returns the whole cache dequantized (``[b, n, L, w]`` in the cache dtype): attention kernels take
dense tensors, so decoding is slower than the contiguous cache (a fused dequantizing kernel would avoid the
copy; ``bench/generate.py`` reports the speed).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .kv_cache import CacheBase


def _group(w: int, group_size: int) -> int:
    return group_size if w % group_size == 0 else w


class QuantizedKVCache(CacheBase):
    """``QuantizedKVCache(batch_size, max_seq_len, streams, bits=8|4, group_size=32, residual=32)``."""

    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        streams: Sequence[tuple[int, int]],
        *,
        bits: int = 8,
        group_size: int = 32,
        residual: int = 32,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(batch_size, max_seq_len)
        if bits not in (8, 4):
            raise ValueError(f"quantized KV cache: bits={bits!r}; use 8 (int8) or 4 (int4)")
        if group_size < 1 or residual < 0:
            raise ValueError(f"quantized KV cache: group_size={group_size} must be >= 1 and residual={residual} >= 0")
        if bits == 4 and any(w % 2 for _, w in streams):
            raise ValueError(f"int4 KV cache packs two numbers per byte: stream widths {[w for _, w in streams]} must be even")
        self.bits, self.residual, self.dtype = bits, residual, dtype
        self.groups = [_group(w, group_size) for _, w in streams]
        code_width = [w if bits == 8 else w // 2 for _, w in streams]
        code_dtype = torch.int8 if bits == 8 else torch.uint8
        self.codes = [torch.zeros(batch_size, n, max_seq_len, cw, dtype=code_dtype, device=device)
                      for (n, _), cw in zip(streams, code_width)]
        # [b, n, S, w / g, 1 | 2]: the scale (and for int4 the group minimum) of each group, fp16
        self.params = [torch.zeros(batch_size, n, max_seq_len, w // g, 1 if bits == 8 else 2, dtype=torch.float16, device=device)
                       for (n, w), g in zip(streams, self.groups)]
        self.tails = [torch.zeros(batch_size, n, 0, w, dtype=dtype, device=device) for n, w in streams]
        self.streams = list(streams)
        self.quantized = 0  # tokens stored as codes; the rest (<= residual) are in self.tails

    # ------------------------------------------------------------------ quantize / dequantize one block
    def quantize(self, x: Tensor, g: int) -> tuple[Tensor, Tensor]:
        """``x`` ``[b, n, t, w]`` -> codes ``[b, n, t, w | w/2]``, params ``[b, n, t, w/g, 1|2]`` (fp16)."""
        xg = x.float().unflatten(-1, (-1, g))  # [b, n, t, w/g, g]
        if self.bits == 8:
            scale = (xg.abs().amax(-1, keepdim=True) / 127).clamp_min(1e-7).half()  # [..., w/g, 1]
            codes = (xg / scale.float()).round().clamp_(-127, 127).to(torch.int8).flatten(-2)
            return codes, scale
        low = xg.amin(-1, keepdim=True).half()
        scale = ((xg.amax(-1, keepdim=True) - low.float()) / 15).clamp_min(1e-7).half()
        codes = ((xg - low.float()) / scale.float()).round().clamp_(0, 15).to(torch.uint8).flatten(-2)  # [..., w]
        packed = codes[..., 0::2] | (codes[..., 1::2] << 4)  # two 4-bit codes per byte: even channel low
        return packed, torch.cat((scale, low), dim=-1)

    def dequantize(self, codes: Tensor, params: Tensor, g: int) -> Tensor:
        """Inverse of :meth:`quantize`, in the cache dtype: ``[b, n, t, w]``."""
        if self.bits == 8:
            xg = codes.float().unflatten(-1, (-1, g)) * params.float()
        else:
            unpacked = torch.stack((codes & 0xF, codes >> 4), dim=-1).flatten(-2)  # [b, n, t, w]
            scale, low = params.float().unbind(-1)
            xg = unpacked.float().unflatten(-1, (-1, g)) * scale[..., None] + low[..., None]
        return xg.flatten(-2).to(self.dtype)

    # ------------------------------------------------------------------ the cache interface
    def update(self, *new: Tensor) -> tuple[Tensor, ...]:
        s = self._check_update(new, self.streams)
        for i, tensor in enumerate(new):
            tail = torch.cat((self.tails[i], tensor.to(self.dtype)), dim=-2)
            excess = tail.shape[-2] - self.residual
            if excess > 0:  # the oldest tokens leave the exact window: quantize them once
                codes, params = self.quantize(tail[:, :, :excess], self.groups[i])
                self.codes[i][:, :, self.quantized : self.quantized + excess] = codes
                self.params[i][:, :, self.quantized : self.quantized + excess] = params
                tail = tail[:, :, excess:].clone()
            self.tails[i] = tail
        self.length += s
        self.quantized = self.length - self.tails[0].shape[-2]
        return self.cached()

    def cached(self) -> tuple[Tensor, ...]:
        q = self.quantized
        return tuple(torch.cat((self.dequantize(c[:, :, :q], p[:, :, :q], g), tail), dim=-2)
                     for c, p, g, tail in zip(self.codes, self.params, self.groups, self.tails))

    def reset(self) -> None:
        self.length = self.quantized = 0
        self.tails = [t[:, :, :0] for t in self.tails]

    def reorder(self, index: Tensor) -> None:
        self.codes = [c.index_select(0, index) for c in self.codes]
        self.params = [p.index_select(0, index) for p in self.params]
        self.tails = [t.index_select(0, index) for t in self.tails]

    @property
    def batch_size(self) -> int:
        return self.codes[0].shape[0]

    def bytes_per_token(self) -> int:
        """Bytes one more quantized token costs (all streams, one sequence); the residual window is extra."""
        return sum(c.shape[1] * c.shape[3] * c.element_size() + p.shape[1] * p.shape[3] * p.shape[4] * p.element_size()
                   for c, p in zip(self.codes, self.params))

    def allocated_bytes(self) -> int:
        tail_bytes = sum(self.batch_size * n * self.residual * w * torch.empty((), dtype=self.dtype).element_size()
                         for n, w in self.streams)
        return sum(t.numel() * t.element_size() for t in (*self.codes, *self.params)) + tail_bytes
