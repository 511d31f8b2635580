"""Attention kernels behind one signature, picked by name from :data:`ATTENTION_BACKENDS`.

Every backend takes

    query ``[b, h, q, d]``, key ``[b, n_kv, k, d]``, value ``[b, n_kv, k, d_v]``,
    mask (:class:`~transformer.attention.masks.AttentionMask` or None),
    bias (``[1|b, h, q, k]`` additive score bias or None),
    scale, dropout_p, need_weights

and returns an :class:`AttentionResult` whose ``dispatch`` names the path that really ran (for
example ``"sdpa:is_causal"``), so nobody has to guess whether a fused kernel was usable. ``h`` must
be a multiple of ``n_kv``: grouped heads are handled without materialising repeated keys/values.

A backend that cannot do what was asked raises; nothing silently falls back to a slower path.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import AttentionMask

log = logging.getLogger(__name__)


class AttentionResult(NamedTuple):
    output: Tensor  # [b, h, q, d_v]
    weights: Tensor | None  # [b, h, q, k] when need_weights
    dispatch: str  # which path ran, e.g. "sdpa:is_causal", "eager", "flex:compiled"


Backend = Callable[..., AttentionResult]


def _check_heads(query: Tensor, key: Tensor) -> int:
    h, n_kv = query.shape[1], key.shape[1]
    if h % n_kv:
        raise ValueError(f"query has {h} heads, which is not a multiple of the {n_kv} key/value heads")
    return h // n_kv


# ---------------------------------------------------------------------------------------- eager
def eager_attention(query, key, value, mask, bias, *, scale, dropout_p=0.0, need_weights=False) -> AttentionResult:
    """Explicit ``softmax(q k^T * scale + bias)`` in fp32: the readable reference, and the one
    backend that returns the attention weights."""
    b, h, q_len, d = query.shape
    n_kv, kv_len = key.shape[1], key.shape[2]
    groups = _check_heads(query, key)
    # Group query heads under their shared key/value head instead of repeating K/V: [b, n_kv, g, q, d].
    q = query.float().reshape(b, n_kv, groups, q_len, d)
    scores = torch.matmul(q, key.float()[:, :, None].transpose(-1, -2)) * scale  # [b, n_kv, g, q, k]
    scores = scores.reshape(b, h, q_len, kv_len)
    if bias is not None:
        scores = scores + bias.float()
    if mask is not None and mask.kernel_mask is not None:
        scores = scores.masked_fill(~mask.kernel_mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None and mask.rows_with_keys is not None:
        weights = weights * mask.rows_with_keys  # rows with no key attend to nothing
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = torch.matmul(weights.reshape(b, n_kv, groups, q_len, kv_len), value.float()[:, :, None])
    out = out.reshape(b, h, q_len, value.shape[-1]).to(query.dtype)
    return AttentionResult(out, weights.to(query.dtype) if need_weights else None, "eager")


# ----------------------------------------------------------------------------------------- sdpa
def sdpa_attention(query, key, value, mask, bias, *, scale, dropout_p=0.0, need_weights=False) -> AttentionResult:
    """``torch.nn.functional.scaled_dot_product_attention``, arranged so fused kernels stay usable:
    no mask when nothing is masked, ``is_causal=True`` instead of a causal mask, ``enable_gqa``
    instead of repeated K/V, and an explicit mask only when padding / windows / biases need one."""
    if need_weights:
        raise ValueError("backend='sdpa' cannot return attention weights; use backend='eager' for inspection")
    groups = _check_heads(query, key)
    kwargs = dict(dropout_p=dropout_p, scale=scale, enable_gqa=groups > 1)
    d_qk, d_v = query.shape[-1], value.shape[-1]
    if d_v != d_qk:
        # Fused CPU/GPU kernels need one head width for q, k and v (MLA has d_v < d_qk); zero-padding
        # the narrower side keeps them (3x faster than the math fallback at s=4096) and changes nothing:
        # zero value columns give zero output columns, zero q/k columns add nothing to the scores.
        if d_v < d_qk:
            value = F.pad(value, (0, d_qk - d_v))
        else:
            query, key = F.pad(query, (0, d_v - d_qk)), F.pad(key, (0, d_v - d_qk))
        result = sdpa_attention(query, key, value, mask, bias, scale=scale, dropout_p=dropout_p)
        return AttentionResult(result.output[..., :d_v], None, result.dispatch + "+pad")
    if groups > 1 and query.shape[2] == 1:
        return _one_query_grouped(query, key, value, mask, bias, scale=scale, dropout_p=dropout_p)
    if bias is None and (mask is None or mask.is_empty):
        return AttentionResult(F.scaled_dot_product_attention(query, key, value, **kwargs), None, "sdpa:no_mask")
    if bias is None and mask.is_plain_causal:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, **kwargs)
        return AttentionResult(out, None, "sdpa:is_causal")
    allowed = None if mask is None else mask.kernel_mask
    if bias is None:
        attn_mask, dispatch = allowed, "sdpa:bool_mask"
    else:
        attn_mask = bias.to(query.dtype)
        if allowed is not None:
            attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
        dispatch = "sdpa:float_bias"
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, **kwargs)
    if mask is not None:
        out = mask.zero_empty_rows(out)
    return AttentionResult(out, None, dispatch)


def _one_query_grouped(query, key, value, mask, bias, *, scale, dropout_p) -> AttentionResult:
    """A decode step (one query per head) with grouped heads: the ``g`` query heads that share a key/value
    head become ``g`` query rows of that head, ``[b, h, 1, d] -> [b, n_kv, g, d]``. Exact, because masks have
    no head dimension and one query row per head; the kernel then reads each key/value head once instead of
    once per query head (``enable_gqa`` on CPU: 2.4x slower for MLA's absorbed decode at 512 cached tokens,
    ``bench/RESULTS.md``)."""
    b, h, _, d = query.shape
    n_kv = key.shape[1]
    allowed = None if mask is None or mask.is_empty else mask.kernel_mask  # [b|1, 1, 1, k]
    if bias is None:
        attn_mask, dispatch = allowed, "sdpa:grouped_rows" + ("" if allowed is None else "+bool_mask")
    else:
        attn_mask = bias.to(query.dtype)  # [1|b, h|1, 1, k]
        if attn_mask.shape[1] == h:
            attn_mask = attn_mask.reshape(attn_mask.shape[0], n_kv, h // n_kv, attn_mask.shape[-1])  # heads -> rows
        if allowed is not None:
            attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
        dispatch = "sdpa:grouped_rows+float_bias"
    out = F.scaled_dot_product_attention(query.reshape(b, n_kv, h // n_kv, d), key, value, attn_mask=attn_mask,
                                         dropout_p=dropout_p, scale=scale)
    out = out.reshape(b, h, 1, value.shape[-1])
    if mask is not None:
        out = mask.zero_empty_rows(out)
    return AttentionResult(out, None, dispatch)


# ----------------------------------------------------------------------------------------- flex
_compiled_flex: Callable | None = None


def flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _flex_kernel() -> Callable:
    """``torch.compile(flex_attention)``, compiled on first use (never at import)."""
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def flex_attention_backend(query, key, value, mask, bias, *, scale, dropout_p=0.0, need_weights=False) -> AttentionResult:
    """FlexAttention: masks become a sparse block mask (whole masked tiles are skipped) and biases a
    ``score_mod``; compiled into a fused kernel. Built once per mask object and shared by layers."""
    if not flex_available():
        raise ValueError(f"backend='flex' needs torch>=2.5 with FlexAttention; installed torch is {torch.__version__}")
    if need_weights:
        raise ValueError("backend='flex' cannot return attention weights; use backend='eager' for inspection")
    if dropout_p > 0.0:
        raise ValueError("backend='flex' does not support attention dropout; set dropout=0 or use backend='sdpa'")
    if query.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        raise ValueError(
            f"backend='flex' has no backward pass on CPU in torch {torch.__version__}; "
            "train on CPU with backend='sdpa' (flex on CPU is for inference under torch.no_grad())"
        )
    from torch.nn.attention.flex_attention import create_block_mask

    groups = _check_heads(query, key)
    block_mask = None
    if mask is not None and not mask.is_empty:
        key_ = ("flex_block_mask", query.device)
        if key_ not in mask.memo:
            batch = None if mask.key_padding is None else query.shape[0]
            mask.memo[key_] = create_block_mask(
                mask.mask_mod(), batch, None, mask.q_len, mask.kv_len, device=query.device
            )
        block_mask = mask.memo[key_]
    score_mod = None
    if bias is not None:
        bias_ = bias.to(query.dtype)
        per_batch = bias_.shape[0] > 1

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias_[b if per_batch else 0, h, q_idx, kv_idx]

    out = _flex_kernel()(query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=groups > 1)
    if mask is not None:
        out = mask.zero_empty_rows(out)
    return AttentionResult(out, None, "flex:compiled")


ATTENTION_BACKENDS: dict[str, Backend] = {
    "sdpa": sdpa_attention,
    "eager": eager_attention,
    "flex": flex_attention_backend,
}


# ------------------------------------------------------------------------- seed-compatible function
def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    *,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax attention on ``[batch, heads, seq, head_dim]`` tensors (the original design's API).

    **Mask convention: ``mask`` is boolean with True = may NOT attend** (the opposite of
    ``torch.nn.functional.scaled_dot_product_attention``). The original example builds a causal mask
    as ``torch.triu(torch.ones(T, T), diagonal=1).bool()``. It broadcasts to ``[b, h, q, k]``.
    A query whose keys are all masked gets a zero output (not NaN).

    Key/value may have fewer heads than the query (grouped-query attention). Returns the output
    ``[b, h, q, d_v]``, and the attention weights ``[b, h, q, k]`` too when ``return_weights``.
    """
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True = may not attend), got dtype {mask.dtype}")
    q_len, kv_len = query.shape[-2], key.shape[-2]
    if mask is not None and mask.shape[-2:] != (q_len, kv_len):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; its last two dims must be ({q_len}, {kv_len})")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    spec = None
    if mask is not None:
        spec = _ExplicitMask(~mask)
    result = eager_attention(query, key, value, spec, None, scale=scale, dropout_p=dropout_p, need_weights=return_weights)
    return (result.output, result.weights) if return_weights else result.output


class _ExplicitMask:
    """Adapts an arbitrary boolean "allowed" tensor to the parts of AttentionMask the eager kernel reads."""

    def __init__(self, allowed: Tensor) -> None:
        rows = allowed.any(dim=-1, keepdim=True)
        self.rows_with_keys = None if bool(rows.all()) else rows
        self.kernel_mask = allowed if self.rows_with_keys is None else allowed | ~rows
