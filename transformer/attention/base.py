"""What every attention layer shares: option handling, positions, masks, backend dispatch, init.

A subclass only says how queries, keys and values are projected (:meth:`AttentionLayer.project`)
and what it caches (:meth:`AttentionLayer.new_cache`); the forward pass is written once, here.

Shape legend: b batch, s query length, m memory (cross-attention source) length, L keys after the
cache, D embed_dim, h num_heads, n_kv num_kv_heads, d head_dim, d_v value head dim.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from torch import Tensor, nn

from .block_sparse import band_tile, banded_sdpa
from .config import AttentionConfig
from .kv_cache import CacheBase
from .masks import AttentionMask, resolve_mask
from .positional import ALiBi, RelativePositionBias, RotaryEmbedding
from .sdpa import ATTENTION_BACKENDS, AttentionResult

log = logging.getLogger(__name__)

Rope = tuple[Tensor, Tensor]  # (cos, sin), each [s, r] or [b, 1, s, r]


class AttentionLayer(nn.Module):
    """Base class: ``[b, s, D] -> [b, s, D]`` self- or cross-attention."""

    attention_type = "base"

    def __init__(self, embed_dim: int, num_heads: int, config: AttentionConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.num_kv_heads, self.head_dim = config.resolve_heads(embed_dim, num_heads)
        self.causal, self.sliding_window = config.causal, config.sliding_window
        self.backend = config.backend
        self.context_shard = None  # transformer.parallel.context_parallel: set on layers that run the ring
        self._kernel = ATTENTION_BACKENDS[config.backend]
        self.last_dispatch: str | None = None
        """The kernel path of the latest forward, e.g. ``"sdpa:is_causal"`` (see ``sdpa.py``)."""
        self.rotary: RotaryEmbedding | None = None
        self.position_bias: nn.Module | None = None
        if config.positional == "alibi":
            self.position_bias = ALiBi(num_heads)
        elif config.positional == "relative":
            self.position_bias = RelativePositionBias(
                num_heads,
                bidirectional=not config.causal,
                num_buckets=config.relative_buckets,
                max_distance=config.relative_max_distance,
            )

    def _make_rotary(self, dim: int, fraction: float) -> None:
        cfg = self.config
        if cfg.positional == "rope":
            self.rotary = RotaryEmbedding(
                dim, theta=cfg.rope_theta, fraction=fraction, scaling=cfg.rope_scaling, scaling_factor=cfg.rope_scaling_factor,
                low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                original_max_len=cfg.rope_original_max_len,
            )

    # ------------------------------------------------------------------ to be provided by subclasses
    def project(self, x: Tensor, memory: Tensor | None, rope: Rope | None, cache: CacheBase | None) -> tuple[Tensor, Tensor, Tensor]:
        """-> q ``[b, h, s, d_qk]``, k ``[b, n_kv|h, L, d_qk]``, v ``[b, n_kv|h, L, d_v]`` (cache applied)."""
        raise NotImplementedError

    def cache_streams(self) -> list[tuple[int, int]]:
        """What one cached token holds: ``[(heads, width), ...]`` per stream (keys and values, or MLA's latent)."""
        raise NotImplementedError

    def new_cache(self, batch_size: int, max_seq_len: int, *, dtype=torch.float32, device=None, kind: str = "contiguous",
                  **options) -> CacheBase:
        """A cache of :meth:`cache_streams` for ``batch_size`` rows of up to ``max_seq_len`` tokens; ``kind`` and
        ``options`` as in :func:`~.cache_kinds.new_kv_cache` (contiguous, paged, int8, int4)."""
        from .cache_kinds import new_kv_cache  # the cache kinds import nothing from the layers

        return new_kv_cache(kind, batch_size, max_seq_len, self.cache_streams(), dtype=dtype, device=device,
                            window=self.sliding_window, **options)

    def kv_cache_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes one cached token holds (per sequence); a sliding-window layer stops adding them at its window."""
        raise NotImplementedError

    def kv_cache_bytes(self, seq_len: int, dtype: torch.dtype = torch.float32) -> int:
        """Decoding-state bytes per sequence after ``seq_len`` tokens with the contiguous cache: every token's
        keys/values, or only the last ``window - 1`` of a sliding-window layer (its rolling buffer)."""
        kept = seq_len if not self.sliding_window else min(seq_len, self.sliding_window - 1)
        return kept * self.kv_cache_bytes_per_token(dtype)

    def attention_flops_per_token(self, seq_len: int) -> float:
        """Forward matmul FLOPs of the scores and the weighted values for one query over a context of
        ``seq_len`` (PaLM's convention: every key of the context, causal or not), capped by the window."""
        keys = seq_len if not self.sliding_window else min(seq_len, self.sliding_window)
        qk = self.head_dim + getattr(self, "rope_head_dim", 0)
        return 2.0 * self.num_heads * (qk + getattr(self, "v_head_dim", self.head_dim)) * keys

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    # ------------------------------------------------------------------ the one forward pass
    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        *,
        attention_mask: AttentionMask | Tensor | None = None,
        cache: CacheBase | None = None,
        rope: Rope | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from ``x`` ``[b, s, D]`` to itself, or to ``memory`` ``[b, m, D]`` (cross-attention).

        ``attention_mask``: an :class:`AttentionMask` built once by the model, or a ``[b, L]`` padding
        mask (1 = real token) from which one is built here with this layer's causal / window settings.
        ``cache``: from :meth:`new_cache`; new keys/values are appended (for cross-attention it is
        filled on the first call and reused after). ``rope``: precomputed ``(cos, sin)`` for the query
        positions; computed here when omitted. Returns ``[b, s, D]``, plus weights ``[b, h, s, L]``
        with ``need_weights=True`` (eager backend only).
        """
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"attention input must be [batch, seq, {self.embed_dim}], got {tuple(x.shape)}")
        cross = memory is not None
        b, s, _ = x.shape
        if cross:
            rope = None  # positions of two different sequences are not comparable
        elif self.rotary is not None and rope is None:
            start = cache.length if cache is not None else 0
            rope = self.rotary.for_range(start, s, x.device)
        q, k, v = self.project(x, memory, rope, cache)
        if k.dtype != q.dtype:  # read back from a cache kept in another dtype (fp32 cache, FSDP2's bf16 compute)
            k, v = k.to(q.dtype), v.to(q.dtype)
        kv_len = k.shape[-2]
        if isinstance(attention_mask, Tensor) and not cross and attention_mask.dim() == 2 and cache is not None \
                and attention_mask.shape[1] == cache.length > kv_len:
            attention_mask = attention_mask[:, -kv_len:]  # a rolling window cache returns only the last keys
        mask = resolve_mask(
            attention_mask,
            q_len=s,
            kv_len=kv_len,
            causal=self.causal and not cross,
            window=None if cross else self.sliding_window,
            device=x.device,
        )
        bias = None if cross else self._score_bias(mask, s, kv_len)
        result = self.attend(q, k, v, mask, bias, need_weights=need_weights)
        if result.dispatch != self.last_dispatch:
            if not torch.compiler.is_compiling():  # a logger call inside a compiled graph is a graph break
                log.debug("%s(backend=%s) dispatched to %s", type(self).__name__, self.backend, result.dispatch)
            self.last_dispatch = result.dispatch
        out = self.merge_heads(result.output, cache)
        return (out, result.weights) if need_weights else out

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask | None, bias: Tensor | None, *,
               need_weights: bool = False) -> AttentionResult:
        """Softmax attention through the configured backend. Mechanisms that combine or restrict the attention
        maps (differential, sparse, neighbourhood) override this and keep the rest of the forward pass."""
        shard = self.context_shard
        if shard is not None and shard.positions is not None:  # a context-parallel shard: the ring over the group
            return AttentionResult(shard.attend(q, k, v, causal=self.causal, scale=self.scale), None, "ring")
        if self._window_band_applies(q, k, v, mask, bias, need_weights):
            return self._window_band(q, k, v, mask)
        return self._run_kernel(q, k, v, mask, bias, need_weights=need_weights)

    def _window_band_applies(self, q, k, v, mask, bias, need_weights) -> bool:
        """A full sequence much longer than its sliding window: only the band of each query tile is computed, instead
        of a dense ``[s, s]`` mask through sdpa (3x MHA's time and ``s^2`` memory at 16 K, ``bench/RESULTS.md``)."""
        if (self.backend != "sdpa" or mask is None or not mask.window_active or bias is not None or need_weights
                or mask.documents is not None or mask.q_offset != 0 or q.shape[2] != k.shape[2]
                or q.shape[-1] != v.shape[-1] or (self.training and self.config.dropout)):
            return False
        width = mask.window if mask.causal else 2 * mask.window - 1  # keys a query may see
        return q.shape[2] >= 4 * (2 * mask.window + band_tile(width))

    def _window_band(self, q, k, v, mask: AttentionMask) -> AttentionResult:
        """Causal: keys ``i - W < j <= i``; bidirectional: ``|i - j| < W`` — the same keys the dense mask allows."""
        s, window = q.shape[2], mask.window
        width = window if mask.causal else 2 * window - 1  # keys a query may see
        tile = band_tile(width)
        firsts = torch.arange(-(-s // tile), device=q.device)[None] * tile  # [1, n]: first query of each tile
        if mask.causal:
            span, allow = window + tile - 1, (lambda i, j: (j <= i) & (i - j < window))
        else:
            span, allow = 2 * window + tile - 2, (lambda i, j: (i - j).abs() < window)
        with self.kernel_choice(q, mask):
            out = banded_sdpa(q, k, v, tile=tile, starts=firsts - (window - 1), span=span, scale=self.scale,
                              key_real=mask.key_padding, allow=allow)
        dispatch = "sdpa:window_band" + ("" if self.config.sdpa_kernel is None else f"[{self.config.sdpa_kernel}]")
        return AttentionResult(out, None, dispatch)

    def _run_kernel(self, q, k, v, mask, bias, *, need_weights: bool = False) -> AttentionResult:
        """The backend call, inside torch's kernel restriction when ``sdpa_kernel`` is set."""
        dropout = self.config.dropout if self.training else 0.0
        with self.kernel_choice(q, mask):
            result = self._kernel(q, k, v, mask, bias, scale=self.scale, dropout_p=dropout, need_weights=need_weights)
        return result if self.config.sdpa_kernel is None else result._replace(dispatch=f"{result.dispatch}[{self.config.sdpa_kernel}]")

    @contextlib.contextmanager
    def kernel_choice(self, q: Tensor, mask: AttentionMask | None = None):
        """Restrict ``F.scaled_dot_product_attention`` to the ``sdpa_kernel`` option's kernel (no-op when unset);
        a kernel that cannot run the call becomes a one-line ``ValueError`` naming the option."""
        if self.config.sdpa_kernel is None:
            yield
            return
        from torch.nn.attention import SDPBackend, sdpa_kernel

        chosen = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                  "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}[self.config.sdpa_kernel]
        try:
            with sdpa_kernel([chosen]):
                yield
        except RuntimeError as err:
            if "No viable backend" not in str(err) and "No available kernel" not in str(err):
                raise
            raise ValueError(f"attention sdpa_kernel={self.config.sdpa_kernel!r} cannot run this call (device {q.device.type}, "
                             f"dtype {str(q.dtype).removeprefix('torch.')}, "
                             f"{'masked' if mask is not None and not mask.is_empty else 'no mask'}); choose another kernel "
                             f"or leave sdpa_kernel unset") from None

    def merge_heads(self, output: Tensor, cache: CacheBase | None) -> Tensor:
        """Attention output ``[b, h, s, d_v]`` -> ``[b, s, D]`` through the output projection. ``cache`` is
        what :meth:`project` saw: MLA's absorbed decode (``mla.py``) up-projects its values here."""
        b, _, s, _ = output.shape
        return self.out_proj(output.transpose(1, 2).reshape(b, s, -1))  # [b, s, h*d_v] -> [b, s, D]

    def _score_bias(self, mask: AttentionMask | None, q_len: int, kv_len: int) -> Tensor | None:
        """``[1, h, s, L]`` additive bias for ALiBi / relative positions (queries are the last s keys)."""
        if self.position_bias is None:
            return None
        q_offset = kv_len - q_len
        if isinstance(self.position_bias, ALiBi) and mask is not None:
            key = ("alibi", self.num_heads, q_offset)  # parameter-free: compute once, share across layers
            if key not in mask.memo:
                mask.memo[key] = self.position_bias(q_len, kv_len, q_offset)
            return mask.memo[key]
        return self.position_bias(q_len, kv_len, q_offset)

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """normal(0, init_std) for projections, ``init_std / sqrt(2 * num_layers)`` for the output
        projection (GPT-2's scaled residual init), zero biases, unit norm weights."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                std = self.config.output_init_std() if module is self.out_proj else self.config.init_std
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.RMSNorm) and module.weight is not None:
                nn.init.ones_(module.weight)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, self.config.init_std)

    def extra_repr(self) -> str:
        cfg = self.config
        parts = [
            f"embed_dim={self.embed_dim}", f"num_heads={self.num_heads}", f"num_kv_heads={self.num_kv_heads}",
            f"head_dim={self.head_dim}", f"causal={self.causal}", f"backend={self.backend}", f"positional={cfg.positional}",
        ]
        if self.sliding_window:
            parts.append(f"sliding_window={self.sliding_window}")
        return ", ".join(parts)
