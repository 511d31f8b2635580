"""A stack of transformer blocks: builds the mask and RoPE tables once per forward and runs the blocks.

:class:`~transformer.encoder.Encoder` and :class:`~transformer.decoder.Decoder` are this stack with
their causal / cross-attention flags fixed. Shape legend: b batch, s new positions, L positions after
the cache (``cache length + s``), m memory length, D embed_dim.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import AttentionMask
from .config import ModelConfig
from .layers import LayerCache, StackContext, TransformerBlock, make_norm


class StackOutput(NamedTuple):
    hidden: Tensor  # [b, s, D]
    aux_loss: Tensor | None  # summed MoE load-balancing loss, None without experts


class TransformerStack(nn.Module):
    def __init__(self, cfg: ModelConfig, *, causal: bool, cross_attention: bool = False, num_layers: int | None = None) -> None:
        super().__init__()
        num_layers = num_layers or cfg.num_layers
        self.causal = causal
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg, causal=causal, cross_attention=cross_attention, num_layers=num_layers, index=i)
            for i in range(num_layers)
        )
        # Pre-norm stacks end with a norm (the residual stream is never normalised otherwise).
        self.final_norm = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()
        self.gradient_checkpointing = cfg.gradient_checkpointing

    def forward(
        self,
        x: Tensor,
        attention_mask: Tensor | None = None,
        *,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        caches: Sequence[LayerCache] | None = None,
        position_ids: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> StackOutput:
        """``x`` ``[b, s, D]``; ``attention_mask`` ``[b, L]`` (1 = real token, covering cached positions);
        ``memory`` ``[b, m, D]`` and ``memory_mask`` ``[b, m]`` for cross-attention; ``caches`` from
        the model's ``new_caches``; ``position_ids`` ``[b, s]`` (RoPE positions restarting per packed document)
        and ``document_ids`` ``[b, s]`` (attention only within a document) for packed sequences."""
        b, s, _ = x.shape
        past = caches[0].self_attn.length if caches else 0
        # Masks and RoPE tables are built once per distinct layer setting and shared (even an empty mask: layers
        # then skip building their own).
        ctx = StackContext(s, self.causal, x.device, padding_mask=attention_mask, document_ids=document_ids,
                           position_ids=position_ids, past=past)
        if memory is not None:
            ctx.memory = memory
            if memory_mask is not None:
                ctx.memory_mask = AttentionMask.build(s, memory.shape[1], padding_mask=memory_mask)
        aux_total = None
        for i, block in enumerate(self.blocks):
            cache = caches[i] if caches else None
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, aux = checkpoint(block, x, ctx, cache, use_reentrant=False)
            else:
                x, aux = block(x, ctx, cache)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        return StackOutput(self.final_norm(x), aux_total)

    def new_caches(self, batch_size: int, max_seq_len: int, *, memory_len: int | None = None, dtype=torch.float32, device=None,
                   kind: str = "contiguous", **options) -> list[LayerCache]:
        """One :class:`LayerCache` per block (with a cross-attention cache of ``memory_len`` if cross). ``kind`` /
        ``options`` choose the self-attention caches (``transformer.attention.cache_kinds``); the memory's
        cross-attention cache is written once and stays contiguous."""
        caches = []
        for block in self.blocks:
            cross = None
            if block.cross_attn is not None:
                if memory_len is None:
                    raise ValueError("this stack has cross-attention: new_caches needs memory_len")
                cross = block.cross_attn.new_cache(batch_size, memory_len, dtype=dtype, device=device)
            own = block.attn.new_cache(batch_size, max_seq_len, dtype=dtype, device=device, kind=kind, **options)
            caches.append(LayerCache(own, cross))
        return caches

    def kv_cache_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        """Self-attention cache bytes one more token costs, summed over blocks."""
        return sum(block.attn.kv_cache_bytes_per_token(dtype) for block in self.blocks)

    def kv_cache_bytes(self, seq_len: int, dtype: torch.dtype = torch.float32) -> int:
        """Self-attention decoding state of one sequence of ``seq_len`` tokens, summed over blocks (each layer's
        own rule: rolling windows are capped, linear attention's state is constant)."""
        return sum(block.attn.kv_cache_bytes(seq_len, dtype) for block in self.blocks)
