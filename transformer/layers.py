"""Building blocks of the models: norms, MLPs (dense, gated, mixture of experts), the transformer
block, token embeddings and pooling. Every piece is chosen by a ``ModelConfig`` field.

Shape legend: b batch, s sequence, D embed_dim, F MLP hidden width, E experts, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import AttentionMask, get_attention, sinusoidal_table
from .attention.kv_cache import CacheBase
from .attention.registry import attention_class  # entries: transformer/attention/registry.py
from .config import ModelConfig
from .fused_ops import RMSNorm, swiglu_mlp

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}  # "swiglu" (silu(gate) * up) is fused_ops.swiglu_mlp


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, bias=cfg.bias)


class FeedForward(nn.Module):
    """``[b, s, D] -> [b, s, D]``: ``w_out(act(w_in x))``, or gated ``w_out(act(gate) * up)`` for SwiGLU.

    The gated form keeps gate and up in one ``w_in`` of width ``2F`` ([gate; up]) so both come
    from a single matmul.
    """

    def __init__(self, dim: int, hidden: int, activation: str, *, bias: bool, init_std: float = 0.02, out_std: float | None = None) -> None:
        super().__init__()
        self.gated = activation == "swiglu"
        self.act = None if self.gated else _ACTIVATIONS[activation]
        self.w_in = nn.Linear(dim, hidden * (2 if self.gated else 1), bias=bias)
        self.w_out = nn.Linear(hidden, dim, bias=bias)
        with torch.no_grad():  # output projection scaled by depth, like attention's (GPT-2)
            for linear, std in ((self.w_in, init_std), (self.w_out, init_std if out_std is None else out_std)):
                nn.init.normal_(linear.weight, 0.0, std)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            return swiglu_mlp(x, self.w_in, self.w_out)
        return self.w_out(self.act(self.w_in(x)))


class MixtureOfExperts(nn.Module):
    """Top-k token-choice mixture of :class:`FeedForward` experts (Shazeer et al. 2017, Switch).

    Returns the mixed output and the Switch Transformer load-balancing loss
    ``E * sum_e f_e * P_e`` (f: fraction of routed slots per expert, P: mean router probability),
    which is 1.0 for perfectly balanced routing.
    """

    def __init__(self, dim: int, hidden: int, activation: str, *, num_experts: int, top_k: int, bias: bool, **init) -> None:
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(dim, num_experts, bias=False)
        nn.init.normal_(self.router.weight, 0.0, init.get("init_std", 0.02))
        self.experts = nn.ModuleList(FeedForward(dim, hidden, activation, bias=bias, **init) for _ in range(num_experts))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # [n, D]
        probs = torch.softmax(self.router(tokens).float(), dim=-1)  # [n, E]
        weights, chosen = probs.topk(self.top_k, dim=-1)  # [n, k]
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            token_idx, slot = (chosen == e).nonzero(as_tuple=True)
            if token_idx.numel():
                out.index_add_(0, token_idx, expert(tokens[token_idx]) * weights[token_idx, slot, None])
        routed = F.one_hot(chosen, self.num_experts).float().sum(1).mean(0) / self.top_k  # f_e, sums to 1
        aux = self.num_experts * (routed * probs.mean(0)).sum()
        return out.view(shape), aux


@dataclass
class StackContext:
    """What every block of one forward shares, built once by the stack: the mask and RoPE tables of each
    distinct layer setting (a local/global pattern has two masks; layers with equal RoPE share one table)."""

    q_len: int  # s: new positions in this forward
    causal: bool
    device: torch.device
    padding_mask: Tensor | None = None  # [b, past + s], 1 = real token
    document_ids: Tensor | None = None  # [b, s] packed documents
    position_ids: Tensor | None = None  # [b, s] RoPE positions (packed documents restart at 0)
    past: int = 0  # tokens already cached
    memory: Tensor | None = None  # [b, m, D] encoder output for cross-attention
    memory_mask: AttentionMask | None = None
    masks: dict = field(default_factory=dict)
    ropes: dict = field(default_factory=dict)

    def mask_for(self, window: int | None, kv_len: int) -> AttentionMask:
        """The mask of a layer with this sliding ``window`` reading ``kv_len`` keys (fewer than ``past + s``
        when its cache is a rolling window: the padding mask's last ``kv_len`` columns apply)."""
        key = (window, kv_len)
        if key not in self.masks:
            padding = self.padding_mask
            if padding is not None and padding.shape[1] == self.past + self.q_len > kv_len:
                padding = padding[:, -kv_len:]
            self.masks[key] = AttentionMask.build(self.q_len, kv_len, causal=self.causal, window=window,
                                                  padding_mask=padding, device=self.device, document_ids=self.document_ids)
        return self.masks[key]

    def rope_for(self, rotary) -> tuple[Tensor, Tensor] | None:
        """``(cos, sin)`` of ``rotary`` (a RoPE module) at this forward's positions, shared by equal modules."""
        if rotary is None:
            return None
        if rotary.signature not in self.ropes:
            self.ropes[rotary.signature] = (rotary(self.position_ids) if self.position_ids is not None
                                            else rotary.for_range(self.past, self.q_len, self.device))
        return self.ropes[rotary.signature]


@dataclass
class LayerCache:
    """Per-block decoding state: self-attention cache, and the cross-attention cache of the memory."""

    self_attn: CacheBase
    cross_attn: CacheBase | None = None


def self_attention(cfg: ModelConfig, *, index: int, num_layers: int, causal: bool) -> nn.Module:
    """Layer ``index`` (0-based) of a stack of ``num_layers``: its self-attention as the block builds it (the
    default, or this depth's pattern entry / override). Also what ``transformer.scaling`` measures."""
    att = cfg.layer_attention(index, num_layers)
    options = att.layer_options()
    options.update(causal=causal, num_layers=num_layers, init_std=cfg.init_std, layer_index=index)
    return get_attention(att.type, cfg.embed_dim, cfg.num_heads, **options)


class TransformerBlock(nn.Module):
    """Self-attention (+ optional cross-attention) + MLP, each a residual branch; pre- or post-norm."""

    def __init__(self, cfg: ModelConfig, *, causal: bool, cross_attention: bool, num_layers: int, index: int = 0) -> None:
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.residual_scale = cfg.residual_scale
        self.attn = self_attention(cfg, index=index, num_layers=num_layers, causal=causal)
        self.norm1 = make_norm(cfg)
        self.cross_attn = None
        if cross_attention:  # the model's default type; no positions across two sequences, never causal
            cross = cfg.attention.layer_options()
            cross.update(causal=False, positional="none", sliding_window=None, num_layers=num_layers, init_std=cfg.init_std,
                         layer_index=index)
            if not getattr(attention_class(cfg.attention.type), "supports_cross_attention", True):
                raise ValueError(f"model.attention.type={cfg.attention.type!r} has no cross-attention; an encoder_decoder "
                                 f"needs a softmax type (mha, mqa, gqa, mla, differential) as model.attention.type and the "
                                 f"others through model.attention_pattern / attention_layers")
            self.cross_attn = get_attention(cfg.attention.type, cfg.embed_dim, cfg.num_heads, **cross)
            self.norm_cross = make_norm(cfg)
        init = dict(init_std=cfg.init_std, out_std=cfg.init_std / math.sqrt(2 * num_layers))
        if cfg.moe_num_experts:
            self.mlp = MixtureOfExperts(cfg.embed_dim, cfg.mlp_hidden_dim, cfg.mlp, num_experts=cfg.moe_num_experts,
                                        top_k=cfg.moe_top_k, bias=cfg.bias, **init)
        else:
            self.mlp = FeedForward(cfg.embed_dim, cfg.mlp_hidden_dim, cfg.mlp, bias=cfg.bias, **init)
        self.norm2 = make_norm(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def _residual(self, x: Tensor, norm: nn.Module, branch) -> Tensor:
        h = branch(norm(x) if self.pre_norm else x)
        if self.training and self.dropout.p > 0:
            h = self.dropout(h)
        if self.residual_scale != 1.0:
            h = h * self.residual_scale
        return x + h if self.pre_norm else norm(x + h)

    def forward(self, x: Tensor, ctx: StackContext, cache: LayerCache | None = None) -> tuple[Tensor, Tensor | None]:
        """``[b, s, D] -> ([b, s, D], load-balancing aux loss or None)`` (MoE MLP and SwitchHead attention)."""
        own = None if cache is None else cache.self_attn
        kv_len = ctx.q_len if own is None else own.keys_after(ctx.q_len)
        mask = ctx.mask_for(self.attn.sliding_window, kv_len)
        x = self._residual(x, self.norm1, lambda h: self.attn(h, attention_mask=mask, rope=ctx.rope_for(self.attn.rotary), cache=own))
        aux = getattr(self.attn, "last_aux_loss", None)
        if self.cross_attn is not None:
            x = self._residual(x, self.norm_cross, lambda h: self.cross_attn(
                h, ctx.memory, attention_mask=ctx.memory_mask, cache=None if cache is None else cache.cross_attn))
        if isinstance(self.mlp, MixtureOfExperts):
            def moe_branch(h):
                nonlocal aux
                out, mlp_aux = self.mlp(h)
                aux = mlp_aux if aux is None else aux + mlp_aux
                return out
            x = self._residual(x, self.norm2, moe_branch)
        else:
            x = self._residual(x, self.norm2, self.mlp)
        return x, aux


class TokenEmbedding(nn.Module):
    """Token ids ``[b, s]`` -> ``[b, s, D]``: token (+ absolute position) (+ token type), norm, dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        nn.init.normal_(self.tokens.weight, 0.0, cfg.init_std)
        self.positions = None
        if cfg.position == "learned":
            self.positions = nn.Embedding(cfg.max_seq_len, cfg.embed_dim)
            nn.init.normal_(self.positions.weight, 0.0, cfg.init_std)
        elif cfg.position == "sinusoidal":
            self.register_buffer("sinusoidal", sinusoidal_table(cfg.max_seq_len, cfg.embed_dim), persistent=False)
        self.position_kind = cfg.position
        self.max_seq_len = cfg.max_seq_len
        self.token_types = nn.Embedding(cfg.type_vocab_size, cfg.embed_dim) if cfg.type_vocab_size else None
        if self.token_types is not None:
            nn.init.normal_(self.token_types.weight, 0.0, cfg.init_std)
        self.norm = make_norm(cfg) if cfg.embedding_norm else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None, token_type_ids: Tensor | None = None) -> Tensor:
        x = self.tokens(input_ids)
        if self.position_kind != "none":
            if position_ids is None:  # static check: no device sync in the training step
                if input_ids.shape[1] > self.max_seq_len:
                    raise ValueError(f"sequence length {input_ids.shape[1]} exceeds model.max_seq_len={self.max_seq_len}")
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)
            elif int(position_ids.max()) >= self.max_seq_len:
                raise ValueError(f"position {int(position_ids.max())} is beyond model.max_seq_len={self.max_seq_len}")
            x = x + (self.positions(position_ids) if self.positions is not None else self.sinusoidal[position_ids].to(x.dtype))
        if self.token_types is not None:
            x = x + self.token_types(torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


def pool(hidden: Tensor, attention_mask: Tensor | None, method: str) -> Tensor:
    """``[b, s, D] -> [b, D]``: first token, mean over real tokens, or last real token.

    ``attention_mask`` ``[b, s]`` (1 = real) is honoured by ``mean`` and ``last`` (right padding
    or left padding alike); ``cls`` takes position 0, where a CLS token is expected.
    """
    if method == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(1) if method == "mean" else hidden[:, -1]
    mask = attention_mask.to(hidden.dtype)  # [b, s]
    if method == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    if method == "last":  # the real token with the highest index
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (positions * attention_mask.to(torch.long)).argmax(1)  # [b]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling={method!r}; choose 'cls', 'mean' or 'last'")
