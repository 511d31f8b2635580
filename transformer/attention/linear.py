"""Linear attention (Katharopoulos et al. 2020), optionally with a per-head decay (RetNet, Sun et al. 2023).

Softmax is replaced by a positive feature map ``phi(x) = elu(x) + 1``, so attention becomes a running sum::

    S_t = gamma S_{t-1} + phi(k_t) v_t^T          [d, d_v] state per key/value head
    z_t = gamma z_{t-1} + phi(k_t)                [d] normaliser
    out_t = phi(q_t) S_t / (phi(q_t) . z_t + eps)

``gamma = 1`` is the original; ``linear_decay=True`` uses RetNet's fixed ``gamma_j = 1 - 2^(-5-j)`` for key/value
head ``j``, so old tokens fade at a different rate per head. Decoding carries ``(S, z)``: a constant-size state
(:class:`LinearState`) instead of a KV cache that grows with the context.

Full sequences use the **chunked parallel form**: inside a chunk of C tokens the causal sum is a masked
``[C, C]`` product (quadratic in C only), and between chunks the state is carried, so time and memory are
linear in the length. Non-causal (encoder) layers use the global sums ``phi(q) (sum phi(k) v^T)``.
Padding: padded keys get ``phi(k) = 0`` and so add nothing. Queries and keys carry no positions (the state
has none): use ``positional: none`` and absolute positions (``model.position``) or the decay.

Shape legend: b batch, s new tokens, h heads, n_kv key/value heads, g = h / n_kv, d head width, C chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import AttentionConfig
from .gqa import GroupQueryAttention
from .kv_cache import CacheBase
from .masks import AttentionMask

EPS = 1e-6  # the reference implementation's normaliser epsilon
DEFAULT_CHUNK = 64


def feature_map(x: Tensor) -> Tensor:
    """``elu(x) + 1``: positive, so the normaliser never vanishes (Katharopoulos et al. 2020, eq. 7)."""
    return F.elu(x) + 1.0


class LinearState(CacheBase):
    """Decoding state of one linear attention layer: ``S`` ``[b, n_kv, d, d_v]`` and ``z`` ``[b, n_kv, d]`` in fp32
    (sums over thousands of tokens lose too much in bf16), plus ``length`` (tokens seen)."""

    def __init__(self, batch_size: int, max_seq_len: int, heads: int, width: int, value_width: int, *, device=None) -> None:
        super().__init__(batch_size, max_seq_len)
        self.state = torch.zeros(batch_size, heads, width, value_width, dtype=torch.float32, device=device)
        self.normaliser = torch.zeros(batch_size, heads, width, dtype=torch.float32, device=device)

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]

    def advance(self, s: int) -> None:
        if self.length + s > self.max_seq_len:
            raise ValueError(f"linear attention state: {self.length} seen + {s} new tokens exceeds max_seq_len={self.max_seq_len}")
        self.length += s

    def reset(self) -> None:
        self.length = 0
        self.state.zero_()
        self.normaliser.zero_()

    def reorder(self, index: Tensor) -> None:
        self.state, self.normaliser = self.state.index_select(0, index), self.normaliser.index_select(0, index)

    def bytes_per_token(self) -> int:
        return 0  # a token adds nothing: the state has a fixed size

    def allocated_bytes(self) -> int:
        return (self.state.numel() + self.normaliser.numel()) * self.state.element_size()

    def used_bytes(self) -> int:
        return self.allocated_bytes()


class LinearAttention(GroupQueryAttention):
    """``LinearAttention(embed_dim, num_heads, num_groups=None, **options)``; options ``linear_decay`` and
    ``linear_chunk``. Self-attention only."""

    attention_type = "linear"
    supports_cross_attention = False

    def __init__(self, embed_dim: int, num_heads: int, num_groups: int | None = None, apply_causal_mask: bool = False, **options) -> None:
        decay, chunk = options.pop("linear_decay", None), options.pop("linear_chunk", None)
        probe = AttentionConfig.from_options(dict(options))
        probe.check_family("linear", type(self).__name__)
        if probe.positional != "none":
            raise ValueError(f"linear attention takes positional='none', got positional={probe.positional!r}: its state keeps no "
                             f"positions (use model.position=learned or sinusoidal, or linear_decay for recency)")
        if probe.sliding_window is not None:
            raise ValueError("linear attention has no sliding_window (its state covers every past token); use linear_decay to fade old tokens")
        if probe.dropout:
            raise ValueError("linear attention forms no attention weights to drop out; set attention dropout to 0")
        super().__init__(embed_dim, num_heads, num_groups, apply_causal_mask, **options)
        self.chunk = chunk or DEFAULT_CHUNK
        self.decay = bool(decay)
        if self.decay and not self.causal:
            raise ValueError("linear_decay needs a causal layer: the decay runs forward in time")
        gammas = 1.0 - 2.0 ** (-5.0 - torch.arange(self.num_kv_heads, dtype=torch.float64)) if self.decay else torch.ones(self.num_kv_heads, dtype=torch.float64)
        self.register_buffer("log_gamma", gammas.log().float(), persistent=False)  # [n_kv]

    # ------------------------------------------------------------------ caches and reports
    def new_cache(self, batch_size: int, max_seq_len: int, *, dtype=torch.float32, device=None, kind: str = "contiguous",
                  **options) -> LinearState:
        """A :class:`LinearState`. Any cache ``kind`` gives the same exact state: there are no keys/values to page
        or quantize (the softmax layers of a hybrid model use the kind)."""
        return LinearState(batch_size, max_seq_len, self.num_kv_heads, self.head_dim, self.head_dim, device=device)

    def cache_streams(self) -> list[tuple[int, int]]:
        return []

    def kv_cache_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        return 0

    def kv_cache_bytes(self, seq_len: int, dtype: torch.dtype = torch.float32) -> int:
        """The fp32 state ``n_kv * d * (d_v + 1)`` per sequence, whatever the length."""
        return self.num_kv_heads * self.head_dim * (self.head_dim + 1) * 4

    def attention_flops_per_token(self, seq_len: int) -> float:
        """Chunked form: the ``[C, C]`` products inside a chunk plus reading and updating the state."""
        h, d = self.num_heads, self.head_dim
        return 2.0 * h * (2 * d) * min(self.chunk, seq_len) + 2.0 * (h + self.num_kv_heads) * d * (d + 1)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, memory: Tensor | None = None, *, attention_mask: AttentionMask | Tensor | None = None,
                cache: LinearState | None = None, rope=None, need_weights: bool = False) -> Tensor:
        """``x`` ``[b, s, D]`` -> ``[b, s, D]``; ``attention_mask`` as for any layer (only its padding is used);
        ``cache``: a :class:`LinearState` carried across calls."""
        if memory is not None:
            raise ValueError("linear attention has no cross-attention")
        if need_weights:
            raise ValueError("linear attention forms no attention weights (need_weights=True)")
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"attention input must be [batch, seq, {self.embed_dim}], got {tuple(x.shape)}")
        b, s, _ = x.shape
        h, n_kv, d = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv_proj(x).view(b, s, h + 2 * n_kv, d).split([h, n_kv, n_kv], dim=2)
        q = feature_map(q.transpose(1, 2).float()).view(b, n_kv, h // n_kv, s, d)  # [b, n_kv, g, s, d]
        k = feature_map(k.transpose(1, 2).float())  # [b, n_kv, s, d]
        v = v.transpose(1, 2).float()  # [b, n_kv, s, d]
        real = _new_token_padding(attention_mask, s)
        if real is not None:
            k = k * real[:, None, :, None].to(k.dtype)  # padded keys contribute nothing
        if cache is not None:
            cache.advance(s)
            state, normaliser = cache.state, cache.normaliser
        else:
            state = normaliser = None
        if not self.causal:
            out, state, normaliser = _global(q, k, v, state, normaliser)
            self.last_dispatch = "linear:global"
        elif s == 1 and state is not None:
            out, state, normaliser = self.recurrent_step(q, k, v, state, normaliser)
            self.last_dispatch = "linear:recurrent"
        else:
            out, state, normaliser = self.chunked(q, k, v, state, normaliser)
            self.last_dispatch = "linear:chunked"
        if cache is not None:
            cache.state, cache.normaliser = state, normaliser
        out = out.reshape(b, h, s, d).to(x.dtype)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, h * d))

    def recurrent_step(self, q: Tensor, k: Tensor, v: Tensor, state: Tensor, normaliser: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One token: ``S = gamma S + phi(k) v^T``, ``z = gamma z + phi(k)``, ``out = phi(q) S / (phi(q) z + eps)``."""
        gamma = self.log_gamma.exp()[None, :, None]  # [1, n_kv, 1]
        state = gamma[..., None] * state + k[:, :, 0, :, None] * v[:, :, 0, None, :]  # [b, n_kv, d, d_v]
        normaliser = gamma * normaliser + k[:, :, 0]  # [b, n_kv, d]
        num = torch.einsum("bngsd,bnde->bngse", q, state)
        den = torch.einsum("bngsd,bnd->bngs", q, normaliser)[..., None] + EPS
        return num / den, state, normaliser

    def chunked(self, q: Tensor, k: Tensor, v: Tensor, state: Tensor | None, normaliser: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Causal outputs for ``s`` tokens from the state before them; returns ``(out, state, normaliser)`` after.
        Whole chunks of ``linear_chunk`` first, then the remainder as one shorter chunk (no padding, so the
        carried state decays by exactly the tokens seen)."""
        b, n_kv, g, s, d = q.shape
        if state is None:
            state, normaliser = q.new_zeros(b, n_kv, d, v.shape[-1]), q.new_zeros(b, n_kv, d)
        C = min(self.chunk, s)
        full = s - s % C
        outs = []
        for begin, end, size in ((0, full, C), (full, s, s - full)):
            if end > begin:
                out, state, normaliser = self._chunks(q[:, :, :, begin:end], k[:, :, begin:end], v[:, :, begin:end],
                                                      state, normaliser, size)
                outs.append(out)
        return torch.cat(outs, dim=3) if len(outs) > 1 else outs[0], state, normaliser

    def _chunks(self, q: Tensor, k: Tensor, v: Tensor, state: Tensor, normaliser: Tensor, C: int) -> tuple[Tensor, Tensor, Tensor]:
        """The chunked parallel form over ``s = n * C`` tokens."""
        b, n_kv, g, s, d = q.shape
        n = s // C
        qc = q.reshape(b, n_kv, g, n, C, d)
        kc, vc = k.reshape(b, n_kv, n, C, d), v.reshape(b, n_kv, n, C, -1)
        log_gamma = self.log_gamma[:, None, None]  # [n_kv, 1, 1]
        t = torch.arange(C, device=q.device, dtype=torch.float32)
        distance = t[:, None] - t[None, :]  # [C, C]: i - j
        within = torch.where(distance >= 0, (log_gamma * distance.clamp(min=0)).exp(), torch.zeros((), device=q.device))  # [n_kv, C, C]
        scores = torch.einsum("bngcid,bncjd->bngcij", qc, kc) * within[None, :, None, None]  # [b, n_kv, g, n, C, C]
        num = torch.einsum("bngcij,bncje->bngcie", scores, vc)
        den = scores.sum(-1)  # [b, n_kv, g, n, C]
        # Each chunk's own contribution to the state after it, then the state entering each chunk (a short scan).
        to_end = (log_gamma * (C - 1 - t)).exp().view(1, n_kv, 1, C, 1)  # gamma^(C-1-j)
        delta_state = torch.einsum("bncjd,bncje->bncde", kc * to_end, vc)  # [b, n_kv, n, d, d_v]
        delta_norm = (kc * to_end).sum(3)  # [b, n_kv, n, d]
        chunk_decay = (self.log_gamma * C).exp()[None, :, None]  # [1, n_kv, 1]
        entering_s, entering_z = [], []
        for c in range(n):
            entering_s.append(state)
            entering_z.append(normaliser)
            state = chunk_decay[..., None] * state + delta_state[:, :, c]
            normaliser = chunk_decay * normaliser + delta_norm[:, :, c]
        S0, z0 = torch.stack(entering_s, 2), torch.stack(entering_z, 2)  # [b, n_kv, n, d, d_v], [b, n_kv, n, d]
        qd = qc * (log_gamma * (t + 1)).exp().view(1, n_kv, 1, 1, C, 1)  # phi(q_i) gamma^(i+1): the carried state's weight
        num = num + torch.einsum("bngcid,bncde->bngcie", qd, S0)
        den = den + torch.einsum("bngcid,bncd->bngci", qd, z0)
        return (num / (den[..., None] + EPS)).reshape(b, n_kv, g, s, -1), state, normaliser


def _global(q: Tensor, k: Tensor, v: Tensor, state: Tensor | None, normaliser: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Non-causal: every query reads the sums over all keys (plus any carried state)."""
    kv = torch.einsum("bnsd,bnse->bnde", k, v)
    z = k.sum(2)
    if state is not None:
        kv, z = kv + state, z + normaliser
    num = torch.einsum("bngsd,bnde->bngse", q, kv)
    den = torch.einsum("bngsd,bnd->bngs", q, z)[..., None] + EPS
    return num / den, kv, z


def _new_token_padding(mask: AttentionMask | Tensor | None, s: int) -> Tensor | None:
    """``[b, s]`` bool, True = real, for the ``s`` new tokens (the last columns of a padding mask), or None."""
    if isinstance(mask, AttentionMask):
        if mask.documents is not None:
            raise ValueError("linear attention cannot keep packed documents apart (its state spans them); "
                             "turn off document masking for this model")
        padding = mask.key_padding
    else:
        padding = mask
    if padding is None:
        return None
    return padding[:, -s:].to(torch.bool)

