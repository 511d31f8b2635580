"""Options shared by every attention layer: one name, one default, one docstring each.

Layers take ``embed_dim`` and ``num_heads`` positionally (they belong to the model) and every other
option as a keyword that lands in :class:`AttentionConfig`. The model config (``transformer.config``)
embeds the same dataclass, so a YAML key such as ``model.attention.sliding_window`` is exactly the
keyword a user passes to ``get_attention``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..validation import choice, in_range, known_keys, positive_int

POSITIONAL_SCHEMES = ("none", "rope", "alibi", "relative")
BACKENDS = ("sdpa", "eager", "flex")
ROPE_SCALINGS = ("linear", "ntk", "llama3")
MLA_ABSORB = ("always", "never")
SPARSE_PATTERNS = ("topk", "strided", "fixed")
SDPA_KERNELS = ("flash", "efficient", "math", "cudnn")

# Options that only one family of layers reads. Each defaults to None ("not set"); a layer of another family
# that is given one raises (see AttentionConfig.check_family), and the model config leaves unset ones out.
FAMILY_OPTIONS: dict[str, str] = {
    "kv_lora_rank": "mla", "q_lora_rank": "mla", "rope_head_dim": "mla", "v_head_dim": "mla", "mla_absorb": "mla",
    "linear_decay": "linear", "linear_chunk": "linear",
    "diff_lambda_init": "differential",
    "sparse_pattern": "sparse", "sparse_top_k": "sparse", "sparse_stride": "sparse", "sparse_summary": "sparse",
    "neighborhood_size": "neighborhood",
    "switchhead_experts": "switchhead", "switchhead_top_k": "switchhead",
}


@dataclass
class AttentionConfig:
    """Every attention option except the model-owned ``embed_dim`` / ``num_heads``."""

    num_kv_heads: int | None = None
    """Key/value heads. ``None`` means ``num_heads`` (MHA); 1 is MQA; a divisor of ``num_heads`` is GQA."""
    head_dim: int | None = None
    """Per-head width. ``None`` means ``embed_dim // num_heads`` (which must then divide exactly)."""
    bias: bool = False
    """Bias on the input and output projections."""
    qkv_bias: bool | None = None
    """Bias on the query/key/value projection only (``None``: same as ``bias``). Qwen2 uses
    ``qkv_bias=True`` with ``bias=False``."""
    dropout: float = 0.0
    """Dropout on the attention weights, applied only in training mode."""
    causal: bool = False
    """Each query attends only to keys at its own or earlier positions."""
    sliding_window: int | None = None
    """Local attention: a query attends to at most this many keys (itself and the W-1 before it when
    causal; keys at distance < W on either side when not)."""
    qk_norm: bool = False
    """RMS-normalise queries and keys per head before positions are applied (stabilises training)."""
    backend: str = "sdpa"
    """Kernel: ``sdpa`` (torch fused kernels), ``eager`` (explicit fp32 softmax, can return weights),
    ``flex`` (FlexAttention, compiled on first use)."""
    sdpa_kernel: str | None = None
    """``backend=sdpa`` only: restrict torch's kernel choice to ``flash``, ``efficient`` (memory-efficient),
    ``math`` or ``cudnn`` (``None``: torch picks). A kernel that cannot run the call (``efficient`` and ``cudnn``
    exist on CUDA only; flash needs fp16/bf16 on CUDA) is an error, not a fallback; ``last_dispatch`` ends with
    ``[kernel]``."""
    positional: str = "none"
    """Position scheme applied inside attention: ``none``, ``rope``, ``alibi`` or ``relative`` (T5 buckets)."""
    rope_theta: float = 10000.0
    """RoPE base period."""
    rope_fraction: float = 1.0
    """Fraction of each head's dimensions that RoPE rotates (GPT-NeoX style partial rotary)."""
    rope_scaling: str | None = None
    """Context extension: ``linear`` (position interpolation), ``ntk`` (NTK-aware base scaling) or ``llama3``
    (Llama-3.1's per-frequency scaling: long wavelengths divided by the factor, short ones kept, a smooth
    blend between)."""
    rope_scaling_factor: float = 1.0
    """How many times longer than the trained context the scaled RoPE should reach."""
    rope_low_freq_factor: float = 1.0
    """``llama3`` scaling: wavelengths above ``rope_original_max_len / rope_low_freq_factor`` are scaled fully."""
    rope_high_freq_factor: float = 4.0
    """``llama3`` scaling: wavelengths below ``rope_original_max_len / rope_high_freq_factor`` are kept."""
    rope_original_max_len: int | None = None
    """``llama3`` scaling: the context length the model was pre-trained at (Llama-3.1: 8192)."""
    relative_buckets: int = 32
    """T5 relative bias: number of learned buckets."""
    relative_max_distance: int = 128
    """T5 relative bias: distance beyond which all offsets share the last bucket."""
    kv_lora_rank: int | None = None
    """MLA: width of the compressed key/value latent that is cached. ``None`` means ``4 * head_dim``."""
    q_lora_rank: int | None = None
    """MLA: width of the compressed query (``None``: queries are projected directly)."""
    rope_head_dim: int | None = None
    """MLA: width of the decoupled RoPE part of each query/key. ``None`` means ``head_dim // 2``."""
    v_head_dim: int | None = None
    """MLA: per-head value width. ``None`` means ``head_dim``."""
    mla_absorb: str | None = None
    """MLA with a KV cache: attend over the cached latent directly, with the key up-projection folded into the
    query and the value up-projection applied after attention (DeepSeek-V2's absorbed decode). ``None``: when
    the operation count says it is cheaper (decode steps and short chunks); ``always``; ``never`` (expand keys
    and values from the latent, as in training)."""
    linear_decay: bool | None = None
    """Linear attention: decay the state by a fixed per-head factor each step, ``gamma_h = 1 - 2^(-5-h)`` as in
    RetNet (Sun et al. 2023), so old tokens fade (``None``/``False``: no decay, Katharopoulos et al. 2020)."""
    linear_chunk: int | None = None
    """Linear attention: tokens per chunk of the chunked parallel form used for full sequences (``None``: 64).
    Quadratic work inside a chunk, a recurrent state between chunks: memory and time are linear in length."""
    diff_lambda_init: float | None = None
    """Differential attention: the initial lambda (``None``: ``0.8 - 0.6 * exp(-0.3 * (layer - 1))`` with the
    1-based layer depth, the paper's schedule)."""
    sparse_pattern: str | None = None
    """Sparse attention: ``topk`` (each query keeps its ``sparse_top_k`` largest scores), ``strided`` (the
    previous ``sparse_stride`` keys and every ``sparse_stride``-th key before them) or ``fixed`` (keys of the
    query's own block of ``sparse_stride`` plus the last ``sparse_summary`` keys of every block), Child et al. 2019.
    ``None``: ``topk``."""
    sparse_top_k: int | None = None
    """Sparse ``topk``: keys kept per query (``None``: 32). Must not exceed the sequence length."""
    sparse_stride: int | None = None
    """Sparse ``strided`` / ``fixed``: the stride / block length l (``None``: 32)."""
    sparse_summary: int | None = None
    """Sparse ``fixed``: summary keys c at the end of each block that every later query sees (``None``: 1)."""
    neighborhood_size: int | None = None
    """Neighbourhood attention: keys per query (the kernel size, Hassani et al. 2023). A query attends to the
    window centred on it, shifted inward at the sequence edges so every query sees this many keys; causal layers
    see the previous ``neighborhood_size - 1`` keys and themselves."""
    switchhead_experts: int | None = None
    """SwitchHead: value and output projection experts per head (``None``: 4), Csordas et al. 2023."""
    switchhead_top_k: int | None = None
    """SwitchHead: experts each token uses per head (``None``: 2)."""
    layer_index: int = 0
    """Depth of this layer in its stack (0-based), set by the model: differential attention's lambda schedule
    and the per-layer pattern read it."""
    norm_eps: float = 1e-6
    """Epsilon of the RMS norms used by ``qk_norm`` and MLA's latent norms."""
    init_std: float = 0.02
    """Std of the normal initialisation of projection weights."""
    num_layers: int = 1
    """Depth of the stack this layer belongs to: the output projection starts at
    ``init_std / sqrt(2 * num_layers)`` so the residual stream's variance does not grow with depth."""

    def __post_init__(self) -> None:
        choice("attention positional", self.positional, POSITIONAL_SCHEMES)
        choice("attention backend", self.backend, BACKENDS)
        if self.rope_scaling is not None:
            choice("attention rope_scaling", self.rope_scaling, ROPE_SCALINGS)
        if self.mla_absorb is not None:
            choice("attention mla_absorb", self.mla_absorb, MLA_ABSORB)
        if self.sparse_pattern is not None:
            choice("attention sparse_pattern", self.sparse_pattern, SPARSE_PATTERNS)
        if self.sdpa_kernel is not None:
            choice("attention sdpa_kernel", self.sdpa_kernel, SDPA_KERNELS)
            if self.backend != "sdpa":
                raise ValueError(f"attention sdpa_kernel={self.sdpa_kernel!r} chooses among torch's sdpa kernels; it needs "
                                 f"backend='sdpa', not backend={self.backend!r}")
        if self.diff_lambda_init is not None:
            in_range("attention diff_lambda_init", self.diff_lambda_init, 0.0, 1.0, high_open=True)
        in_range("attention dropout", self.dropout, 0.0, 1.0, high_open=True)
        in_range("attention rope_fraction", self.rope_fraction, 0.0, 1.0, low_open=True)
        in_range("attention rope_scaling_factor", self.rope_scaling_factor, 1.0)
        if self.rope_scaling == "llama3":
            positive_int("attention rope_original_max_len (needed by rope_scaling=llama3)", self.rope_original_max_len)
            if not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
                raise ValueError(f"attention rope_low_freq_factor={self.rope_low_freq_factor} must be > 0 and below "
                                 f"rope_high_freq_factor={self.rope_high_freq_factor}")
        for name in ("num_kv_heads", "head_dim", "sliding_window", "kv_lora_rank", "q_lora_rank", "v_head_dim",
                     "linear_chunk", "sparse_top_k", "sparse_stride", "sparse_summary", "neighborhood_size",
                     "switchhead_experts", "switchhead_top_k"):
            positive_int(f"attention {name}", getattr(self, name), optional=True)
        if self.rope_head_dim is not None:
            in_range("attention rope_head_dim", self.rope_head_dim, 0)
        positive_int("attention num_layers", self.num_layers)
        if isinstance(self.layer_index, bool) or not isinstance(self.layer_index, int) or not 0 <= self.layer_index:
            raise ValueError(f"attention layer_index={self.layer_index!r} must be an integer >= 0")

    def check_family(self, family: str, layer: str) -> None:
        """Raise if an option of another family of layers (``FAMILY_OPTIONS``) is set on a ``family`` layer."""
        for name, owner in FAMILY_OPTIONS.items():
            if owner != family and getattr(self, name) is not None:
                raise ValueError(f"attention option {name} is for attention type '{owner}', not {layer}; remove it "
                                 f"or set the type to '{owner}'")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "AttentionConfig":
        """Build from keyword options, naming any unknown option and the closest known one."""
        check_known_keys(options, cls, what="attention option")
        return cls(**options)

    def resolve_heads(self, embed_dim: int, num_heads: int) -> tuple[int, int]:
        """Return ``(num_kv_heads, head_dim)`` after checking they fit ``embed_dim`` / ``num_heads``."""
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim={embed_dim!r} must be a positive integer")
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads={num_heads!r} must be a positive integer")
        num_kv_heads = num_heads if self.num_kv_heads is None else self.num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}: "
                f"every key/value head must serve the same number of query heads"
            )
        head_dim = self.head_dim
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(
                    f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}; pass head_dim explicitly"
                )
            head_dim = embed_dim // num_heads
        return num_kv_heads, head_dim

    def output_init_std(self) -> float:
        return self.init_std / math.sqrt(2 * self.num_layers)


def check_known_keys(keys, schema: type, *, what: str, prefix: str = "") -> None:
    """``ValueError`` naming the first of ``keys`` that the dataclass ``schema`` lacks, with the closest known name."""
    known_keys(keys, schema, prefix=prefix, what=what)


def merge_alias(options: dict[str, Any], alias: str, canonical: str, value: Any, default: Any) -> None:
    """Fold a seed-compatible alias (``num_groups``, ``apply_causal_mask``) into ``options[canonical]``.

    Both given with different values is an error rather than a silent preference.
    """
    if value == default:
        return
    if options.get(canonical) not in (None, value):
        raise ValueError(f"{alias}={value!r} conflicts with {canonical}={options[canonical]!r}; pass only one")
    options[canonical] = value


def pin_kv_heads(options: dict, value: int, layer: str) -> None:
    """Pin ``num_kv_heads``; a caller asking for another count gets an error, not a silent override."""
    for name in ("num_kv_heads", "num_groups"):
        given = options.pop(name, None)
        if given is not None and given != value:
            raise ValueError(f"{layer} has num_kv_heads={value} by definition; got {name}={given} (use attention type 'gqa')")
    options["num_kv_heads"] = value
