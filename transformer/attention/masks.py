"""Attention masks, built once per forward from small predicates and shared by every layer.

Convention (everywhere inside this package): a boolean mask is **True = may attend**, the
convention of ``torch.nn.functional.scaled_dot_product_attention``. Padding masks follow Hugging
Face's ``attention_mask``: ``[b, s]`` with **1/True = real token, 0/False = padding**. The only
exception is the seed-compatible ``transformer.attention.sdpa.scaled_dot_product_attention``, whose
``mask`` argument is True = *may not* attend (see its docstring).

Positions: keys occupy positions ``0 .. kv_len-1``; queries occupy ``q_offset .. q_offset+q_len-1``.
The default ``q_offset = kv_len - q_len`` aligns queries with the *last* keys, which is right both
for a plain forward (``q_len == kv_len``) and for decoding with a KV cache (a few new queries
against all cached keys). ``torch``'s own ``is_causal=True`` aligns to the top-left instead, which
is why it is only used when the two alignments coincide.

Shapes: b batch, h heads, q query length, k key length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor


@dataclass(eq=False)
class AttentionMask:
    """The masking predicates of one attention call; tensors are materialised lazily and memoised."""

    q_len: int
    kv_len: int
    q_offset: int
    causal: bool = False
    window: int | None = None
    key_padding: Tensor | None = None  # [b, k] bool, True = real token
    device: torch.device | None = None
    documents: Tensor | None = None  # [b, k] document index per position (packing): attend within a document only
    pattern: Tensor | None = None  # [b|1, 1, q, k] bool, True = may attend: a layer's own sparsity pattern (sparse.py)
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)
    """Per-forward cache for things derived from this mask (e.g. an ALiBi bias shared by all layers)."""

    @classmethod
    def build(
        cls,
        q_len: int,
        kv_len: int | None = None,
        *,
        causal: bool = False,
        window: int | None = None,
        padding_mask: Tensor | None = None,
        q_offset: int | None = None,
        device: torch.device | str | None = None,
        document_ids: Tensor | None = None,
    ) -> "AttentionMask":
        """Validate and combine the predicates. ``padding_mask``: ``[b, kv_len]``, 1/True = real token.
        ``document_ids``: ``[b, kv_len]`` ints; packed sequences attend only within their own document (the
        block-diagonal mask of packed fine-tuning), combined with the causal / window predicates."""
        kv_len = q_len if kv_len is None else kv_len
        q_offset = kv_len - q_len if q_offset is None else q_offset
        if not causal and window is None:
            q_offset = 0  # only causal / window predicates compare positions (cross-attention has neither)
        elif q_offset < 0:
            raise ValueError(f"attention mask: q_offset={q_offset} must be >= 0 (q_len={q_len}, kv_len={kv_len})")
        if window is not None and window < 1:
            raise ValueError(f"attention mask: sliding window={window} must be >= 1")
        key_padding = None
        if padding_mask is not None:
            if padding_mask.dim() != 2 or padding_mask.shape[1] != kv_len:
                raise ValueError(
                    f"attention padding mask has shape {tuple(padding_mask.shape)}; expected [batch, {kv_len}] "
                    f"(one entry per key, 1 = real token, 0 = padding)"
                )
            key_padding = padding_mask.to(torch.bool)
            if bool(key_padding.all()):
                key_padding = None  # nothing padded: keep the fused no-mask / is_causal paths open
            device = padding_mask.device
        if document_ids is not None:
            if document_ids.dim() != 2 or document_ids.shape[1] != kv_len or q_len != kv_len:
                raise ValueError(f"document_ids has shape {tuple(document_ids.shape)}; expected [batch, {kv_len}] for a "
                                 f"full (uncached) forward")
            device = document_ids.device
        return cls(q_len, kv_len, q_offset, causal, window, key_padding, torch.device(device or "cpu"), document_ids)

    # ------------------------------------------------------------------ predicates
    def __post_init__(self) -> None:
        # Plain attributes, not functools.cached_property: its lock is opaque to torch.compile (graph breaks).
        self.causal_active = self.causal and self.q_offset < self.kv_len - 1
        """False when causality excludes nothing (e.g. one query after all cached keys)."""
        if self.window is None:
            self.window_active = False
        elif self.causal:  # the largest query-key distance is that of the last query to key 0
            self.window_active = self.q_offset + self.q_len - 1 >= self.window
        else:
            self.window_active = max(self.q_offset + self.q_len - 1, self.kv_len - 1 - self.q_offset) >= self.window

    @property
    def is_empty(self) -> bool:
        """Nothing is masked: attention may run with no mask at all."""
        return not (self.causal_active or self.window_active or self.key_padding is not None or self.documents is not None
                    or self.pattern is not None)

    @property
    def is_plain_causal(self) -> bool:
        """Exactly torch's ``is_causal=True`` (top-left aligned, no other predicate)."""
        return (
            self.causal_active and not self.window_active and self.key_padding is None and self.documents is None
            and self.pattern is None and self.q_offset == 0 and self.q_len == self.kv_len
        )

    def mask_mod(self) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
        """The predicates as a FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool``."""
        offset, causal, window = self.q_offset, self.causal_active, self.window if self.window_active else None
        padding, documents, pattern = self.key_padding, self.documents, self.pattern

        def mod(b, h, q_idx, kv_idx):
            q_pos = q_idx + offset
            allowed = kv_idx >= 0
            if causal:
                allowed = allowed & (kv_idx <= q_pos)
            if window is not None:
                allowed = allowed & ((q_pos - kv_idx < window) if causal else ((q_pos - kv_idx).abs() < window))
            if padding is not None:
                allowed = allowed & padding[b, kv_idx]
            if documents is not None:
                allowed = allowed & (documents[b, q_idx] == documents[b, kv_idx])
            if pattern is not None:
                allowed = allowed & pattern[b if pattern.shape[0] > 1 else 0, 0, q_idx, kv_idx]
            return allowed

        return mod

    # ------------------------------------------------------------------ materialised forms
    def _memoised(self, key: str, compute):
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    @property
    def dense(self) -> Tensor | None:
        """``[b|1, 1, q, k]`` bool, True = may attend; None when nothing is masked."""
        return self._memoised("dense", self._dense)

    def _dense(self) -> Tensor | None:
        if self.is_empty:
            return None
        q_pos = torch.arange(self.q_offset, self.q_offset + self.q_len, device=self.device)[:, None]  # [q, 1]
        k_pos = torch.arange(self.kv_len, device=self.device)[None, :]  # [1, k]
        allowed = torch.ones(self.q_len, self.kv_len, dtype=torch.bool, device=self.device)
        if self.causal_active:
            allowed &= k_pos <= q_pos
        if self.window_active:
            distance = q_pos - k_pos if self.causal else (q_pos - k_pos).abs()
            allowed &= distance < self.window
        allowed = allowed[None, None]  # [1, 1, q, k]
        if self.key_padding is not None:
            allowed = allowed & self.key_padding[:, None, None, :]  # [b, 1, q, k]
        if self.documents is not None:  # block diagonal: a query sees only keys of its own document
            allowed = allowed & (self.documents[:, :, None] == self.documents[:, None, :])[:, None]  # [b, 1, q, k]
        if self.pattern is not None:
            allowed = allowed & self.pattern
        return allowed

    def with_pattern(self, pattern: Tensor) -> "AttentionMask":
        """This mask AND a layer's own ``[b|1, 1, q, k]`` pattern (fresh memo: the dense forms differ)."""
        return AttentionMask(self.q_len, self.kv_len, self.q_offset, self.causal, self.window, self.key_padding,
                             self.device, self.documents, pattern)

    @property
    def rows_with_keys(self) -> Tensor | None:
        """``[b|1, 1, q, 1]`` bool: queries that may attend to at least one key; None if all may.

        Causal and window masks always keep a query's own position, so only padding can empty a row.
        """
        return self._memoised("rows_with_keys", self._rows_with_keys)

    def _rows_with_keys(self) -> Tensor | None:
        if self.key_padding is None and self.pattern is None:
            return None
        rows = self.dense.any(dim=-1, keepdim=True)
        return None if bool(rows.all()) else rows

    @property
    def kernel_mask(self) -> Tensor | None:
        """``dense`` with fully masked rows opened up, so no kernel sees an all ``-inf`` row (NaN).

        Outputs of those rows are zeroed afterwards with :attr:`rows_with_keys`.
        """
        return self._memoised("kernel_mask", self._kernel_mask)

    def _kernel_mask(self) -> Tensor | None:
        if self.dense is None or self.rows_with_keys is None:
            return self.dense
        return self.dense | ~self.rows_with_keys

    def zero_empty_rows(self, out: Tensor) -> Tensor:
        """Zero the outputs ``[b, h, q, d]`` of queries that had no key to attend to."""
        rows = self.rows_with_keys
        return out if rows is None else out * rows.to(out.dtype)


def resolve_mask(
    mask: "AttentionMask | Tensor | None",
    *,
    q_len: int,
    kv_len: int,
    causal: bool,
    window: int | None,
    device: torch.device,
) -> AttentionMask | None:
    """Accept a prebuilt :class:`AttentionMask`, a ``[b, kv_len]`` padding mask, or None."""
    if isinstance(mask, AttentionMask):
        if (mask.q_len, mask.kv_len) != (q_len, kv_len):
            raise ValueError(
                f"attention mask was built for q_len={mask.q_len}, kv_len={mask.kv_len} "
                f"but this call has q_len={q_len}, kv_len={kv_len}"
            )
        return mask
    if mask is not None and not isinstance(mask, Tensor):
        raise ValueError(f"attention_mask must be an AttentionMask, a [batch, {kv_len}] tensor or None, got {type(mask).__name__}")
    built = AttentionMask.build(q_len, kv_len, causal=causal, window=window, padding_mask=mask, device=device)
    return None if built.is_empty else built
