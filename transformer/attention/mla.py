"""Multi-head latent attention (DeepSeek-V2, Liu et al. 2024).

Keys and values are reconstructed per head from a small shared latent ``c_kv`` (``kv_lora_rank``
wide); only that latent and one shared RoPE key (``rope_head_dim`` wide) are cached, so a token
costs ``(kv_lora_rank + rope_head_dim)`` numbers per layer instead of MHA's ``2 * h * d``. RoPE is
"decoupled": it rotates a separate ``rope_head_dim`` slice of every query and the shared key, because
a rotation cannot be absorbed into the latent up-projection.

::

    x ──W_dq──> c_q ──norm──W_uq──> [q_nope | q_rope] ──RoPE(q_rope)
    x ──W_dkv─> [c_kv | k_rope] ──RoPE(k_rope)          (cache: [c_kv after norm | k_rope], one stream)
                 c_kv ──W_ukv──> [k_nope | v] per head;  k = [k_nope | k_rope shared by all heads]

**Absorbed decode.** Training expands ``c_kv`` into per-head keys and values. Decoding with a cache does not
need to: for head ``i``, ``q_nope_i · k_nope_i = q_nope_i · (W_uk_i c) = (W_uk_i^T q_nope_i) · c``, and
``Σ_j p_j W_uv_i c_j = W_uv_i Σ_j p_j c_j``. So the query is mapped into latent space once (``[b, h, s, r]``),
all heads attend over the one cached stream ``[c_kv | k_rope]`` as a single shared key/value head (MQA over
the latent; the value is the same tensor, its rope columns dropped after attention), and ``W_uv`` is applied
to the ``[b, h, s, r]`` result. Nothing of size ``[b, h, L, d]`` is built per step. This costs
``s·h·r·(d + d_v) + s·L·h·(2r + d_r)`` multiply-adds against ``L·h·r·(d + d_v) + s·L·h·(d + d_r + d_v)``
expanded, so it is used (``mla_absorb=None``) when a cache is given and the query is shorter than
``r (d + d_v) / (2r - d - d_v)`` tokens (every decode step; short prefill chunks), and never in training.
A ``kv_up`` wrapped by adapters or holding quantized weights is always expanded (its weight is not one
dense matrix).

Without ``q_lora_rank`` queries come from one projection. Other positional schemes (``alibi``,
``relative``, ``none``) work too; then ``rope_head_dim`` is 0 and there is no decoupled key.

Shape legend: b batch, s query length, m source length, L cached length, D embed_dim, h heads,
d nope head dim (``head_dim``), d_r rope head dim, d_v value head dim, r kv_lora_rank.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..fused_ops import RMSNorm
from .base import AttentionLayer, Rope
from .config import AttentionConfig
from .kv_cache import CacheBase
from .positional import apply_rotary


class MultiHeadLatentAttention(AttentionLayer):
    """``MultiHeadLatentAttention(embed_dim, num_heads, apply_causal_mask=False, **options)``.

    MLA options: ``kv_lora_rank`` (default ``4 * head_dim``), ``q_lora_rank`` (default: none),
    ``rope_head_dim`` (default ``head_dim // 2`` with RoPE, else 0), ``v_head_dim`` (default ``head_dim``),
    ``mla_absorb`` (``None``: by operation count, ``always``, ``never``; see the module docstring).
    """

    attention_type = "mla"

    def __init__(self, embed_dim: int, num_heads: int, apply_causal_mask: bool = False, **options) -> None:
        for name in ("num_kv_heads", "num_groups"):
            if options.get(name) not in (None, num_heads):
                raise ValueError(
                    f"MLA reconstructs keys/values for all {num_heads} heads from its latent; "
                    f"{name}={options[name]} does not apply (size the cache with kv_lora_rank)"
                )
            options.pop(name, None)
        if apply_causal_mask:
            options.setdefault("causal", True)
        config = AttentionConfig.from_options(options)
        config.check_family("mla", type(self).__name__)
        if config.qk_norm:
            raise ValueError("MLA already RMS-normalises its query and key/value latents; qk_norm does not apply")
        if config.rope_fraction != 1.0:
            raise ValueError("MLA rotates a decoupled slice of rope_head_dim dims; set rope_head_dim instead of rope_fraction")
        super().__init__(embed_dim, num_heads, config)
        d, h = self.head_dim, num_heads
        self.kv_lora_rank = config.kv_lora_rank or 4 * d
        self.q_lora_rank = config.q_lora_rank
        if config.positional == "rope":
            self.rope_head_dim = d // 2 if config.rope_head_dim is None else config.rope_head_dim
            if self.rope_head_dim < 2 or self.rope_head_dim % 2:
                raise ValueError(f"MLA with RoPE needs an even rope_head_dim >= 2, got rope_head_dim={self.rope_head_dim}")
        else:
            if config.rope_head_dim:
                raise ValueError(f"rope_head_dim={config.rope_head_dim} needs positional='rope', got positional={config.positional!r}")
            self.rope_head_dim = 0
        self.v_head_dim = config.v_head_dim or d
        qk_dim = d + self.rope_head_dim
        if self.q_lora_rank:
            self.q_down = nn.Linear(embed_dim, self.q_lora_rank, bias=config.bias)
            self.q_norm = RMSNorm(self.q_lora_rank, eps=config.norm_eps)
            self.q_up = nn.Linear(self.q_lora_rank, h * qk_dim, bias=False)
        else:
            self.q_proj = nn.Linear(embed_dim, h * qk_dim, bias=config.bias)
        self.kv_down = nn.Linear(embed_dim, self.kv_lora_rank + self.rope_head_dim, bias=config.bias)  # [c_kv | k_rope]
        self.kv_norm = RMSNorm(self.kv_lora_rank, eps=config.norm_eps)
        self.kv_up = nn.Linear(self.kv_lora_rank, h * (d + self.v_head_dim), bias=False)  # [k_nope | v] per head
        self.out_proj = nn.Linear(h * self.v_head_dim, embed_dim, bias=config.bias)
        self._make_rotary(self.rope_head_dim, 1.0)
        self.shared_key_hook = None
        """Set by tensor parallelism (``transformer.parallel.tensor_parallel``): applied to the rope key, which
        every rank computes whole and its own heads use in part (the hook sums its gradient over the ranks)."""
        r, dv = self.kv_lora_rank, self.v_head_dim
        excess = 2 * r - d - dv  # per query and key: what attending over the latent costs beyond expanded heads
        self.absorb_below = math.inf if excess <= 0 else r * (d + dv) / excess
        """Query lengths below this attend over the latent when a cache is given (``mla_absorb=None``)."""
        self.reset_parameters()

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim + self.rope_head_dim)

    def absorbs(self, s: int, cache: CacheBase | None) -> bool:
        """Whether ``s`` queries with ``cache`` take the absorbed path (module docstring)."""
        mode = self.config.mla_absorb
        if cache is None or mode == "never" or type(self.kv_up) is not nn.Linear:
            return False
        if type(self.kv_up.weight) not in (torch.Tensor, nn.Parameter):  # a quantized tensor subclass
            return False
        return mode == "always" or s < self.absorb_below

    def _up_weights(self) -> tuple[Tensor, Tensor]:
        """``W_uk`` ``[h, d, r]`` and ``W_uv^T`` ``[h, r, d_v]``: views of ``kv_up.weight`` ``[h * (d + d_v), r]``."""
        w = self.kv_up.weight.view(self.num_heads, self.head_dim + self.v_head_dim, self.kv_lora_rank)
        return w[:, : self.head_dim], w[:, self.head_dim :].transpose(1, 2)

    def project(self, x: Tensor, memory: Tensor | None, rope: Rope | None, cache: CacheBase | None) -> tuple[Tensor, Tensor, Tensor]:
        b, s, _ = x.shape
        h, d, d_r, d_v, r = self.num_heads, self.head_dim, self.rope_head_dim, self.v_head_dim, self.kv_lora_rank
        q = self.q_up(self.q_norm(self.q_down(x))) if self.q_lora_rank else self.q_proj(x)
        q_nope, q_rope = q.view(b, s, h, d + d_r).transpose(1, 2).split([d, d_r], dim=-1)  # [b, h, s, d], [b, h, s, d_r]
        if rope is not None:
            q_rope = apply_rotary(q_rope, *rope)

        if memory is not None and cache is not None and cache.length > 0:
            (stream,) = cache.cached()  # cross-attention: the memory's latent was cached on the first step
        else:
            source = x if memory is None else memory
            latent, k_rope = self.kv_down(source).split([r, d_r], dim=-1)  # [b, m, r], [b, m, d_r]
            latent = self.kv_norm(latent)[:, None]  # [b, 1, m, r]
            k_rope = k_rope[:, None]  # [b, 1, m, d_r]: one rope key shared by every head
            if self.shared_key_hook is not None and d_r:
                k_rope = self.shared_key_hook(k_rope)
            if rope is not None:
                k_rope = apply_rotary(k_rope, *rope)
            stream = torch.cat((latent, k_rope), dim=-1) if d_r else latent  # [b, 1, m, r + d_r]
            if cache is not None:
                (stream,) = cache.update(stream)  # [b, 1, L, r + d_r]
        L = stream.shape[-2]
        if self.absorbs(s, cache):
            w_uk, _ = self._up_weights()
            q_latent = torch.matmul(q_nope, w_uk)  # [b, h, s, d] @ [h, d, r] -> [b, h, s, r]
            q = torch.cat((q_latent, q_rope), dim=-1) if d_r else q_latent  # [b, h, s, r + d_r]
            return q, stream, stream  # one shared key/value head; merge_heads drops the value's rope columns
        latent, k_rope = stream.split([r, d_r], dim=-1)  # [b, 1, L, r], [b, 1, L, d_r]
        kv = self.kv_up(latent[:, 0]).view(b, L, h, d + d_v).transpose(1, 2)  # [b, h, L, d + d_v]
        k_nope, v = kv.split([d, d_v], dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1) if d_r else q_nope  # [b, h, s, d + d_r]
        k = torch.cat((k_nope, k_rope.expand(b, h, L, d_r)), dim=-1) if d_r else k_nope  # [b, h, L, d + d_r]
        return q, k, v

    def merge_heads(self, output: Tensor, cache: CacheBase | None) -> Tensor:
        """Absorbed path: ``output`` ``[b, h, s, r + d_r]`` is attention over the latent stream; keep its latent
        columns and apply ``W_uv`` per head -> ``[b, h, s, d_v]`` before the output projection."""
        if self.absorbs(output.shape[-2], cache):
            _, w_uv_t = self._up_weights()
            output = torch.matmul(output[..., : self.kv_lora_rank], w_uv_t)  # [b, h, s, r] @ [h, r, d_v]
        return super().merge_heads(output, cache)

    def cache_streams(self) -> list[tuple[int, int]]:
        """One stream ``[c_kv | k_rope]`` (normalised latent, shared rope key): ``r + d_r`` numbers per token. One
        buffer, so the absorbed path reads it as key and value without a copy."""
        return [(1, self.kv_lora_rank + self.rope_head_dim)]

    def kv_cache_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        return (self.kv_lora_rank + self.rope_head_dim) * torch.empty((), dtype=dtype).element_size()
