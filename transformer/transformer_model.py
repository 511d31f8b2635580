"""The models: decoder-only :class:`TransformerLM`, pooled :class:`EncoderModel`, seq2seq
:class:`EncoderDecoder`; :func:`build_model` makes any of them from a :class:`ModelConfig` alone.

Shape legend: b batch, s sequence, t target sequence, D embed_dim, V vocab_size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .decoder import Decoder
from .encoder import Encoder
from .layers import LayerCache, TokenEmbedding, pool

IGNORE_INDEX = -100


class LMOutput(NamedTuple):
    logits: Tensor  # [b, s, V] (or the last positions only, see ``num_logits``)
    loss: Tensor | None  # mean cross-entropy over non-ignored targets
    aux_loss: Tensor | None  # MoE load-balancing loss (already summed over layers), unweighted
    num_tokens: Tensor | None  # number of non-ignored targets behind ``loss``


class EncoderOutput(NamedTuple):
    hidden: Tensor  # [b, s, D]
    pooled: Tensor  # [b, D]
    aux_loss: Tensor | None


def lm_loss(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over targets != -100 (0 when there are none, never NaN), and their count."""
    flat = targets.reshape(-1)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (flat != IGNORE_INDEX).sum()
    return total / count.clamp(min=1), count


class _Reports:
    """Size, cache and compute figures shared by every model (work on the meta device too)."""

    cfg: ModelConfig

    def num_parameters(self, *, non_embedding: bool = False) -> int:
        """Unique parameters (a tied head counts once); ``non_embedding`` drops token/position tables."""
        seen, total = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen or (non_embedding and name.startswith("embed.")):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def kv_cache_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of decoding cache one more token costs across all self-attention layers."""
        return self.decoder.kv_cache_bytes_per_token(dtype) if hasattr(self, "decoder") else self.encoder.kv_cache_bytes_per_token(dtype)

    def kv_cache_bytes(self, seq_len: int | None = None, dtype: torch.dtype = torch.float32) -> int:
        """Decoding-state bytes of one sequence of ``seq_len`` tokens (default ``max_seq_len``), summed over the
        self-attention layers: sliding-window layers hold at most their window, linear attention a fixed state."""
        stack = self.decoder if hasattr(self, "decoder") else self.encoder
        return stack.kv_cache_bytes(seq_len or self.cfg.max_seq_len, dtype)

    def kv_cache_bytes_per_token_at(self, seq_len: int | None = None, dtype: torch.dtype = torch.float32) -> float:
        """:meth:`kv_cache_bytes` divided by the length: what a token costs on average at that context."""
        seq_len = seq_len or self.cfg.max_seq_len
        return self.kv_cache_bytes(seq_len, dtype) / seq_len

    def flops_per_token(self, seq_len: int | None = None, *, training: bool = True) -> float:
        """Matmul FLOPs per token (PaLM appendix B): ``2N`` forward (+``4N`` backward) for the weights,
        plus each layer's attention scores and values over a context of T (``2 * h * (d_qk + d_v) * T`` for
        softmax attention, capped by a window or a sparsity pattern; see ``attention_flops_per_token``).
        MoE counts only the ``top_k`` experts a token uses."""
        cfg = self.cfg
        seq_len = seq_len or cfg.max_seq_len
        n = self.num_parameters(non_embedding=True)
        if cfg.tie_embeddings or cfg.kind == "encoder":
            n += cfg.vocab_size * cfg.embed_dim  # the head matmul still happens when weights are tied
        if cfg.moe_num_experts:
            per_expert = sum(p.numel() for p in self._stacks()[0].blocks[0].mlp.experts[0].parameters())
            n -= (cfg.moe_num_experts - cfg.moe_top_k) * per_expert * sum(len(s.blocks) for s in self._stacks())
        attention = sum(block.attn.attention_flops_per_token(seq_len) for stack in self._stacks() for block in stack.blocks)
        forward = 2 * n + attention
        return 3 * forward if training else forward

    def _stacks(self) -> list[nn.Module]:
        return [m for m in (getattr(self, "encoder", None), getattr(self, "decoder", None)) if m is not None]


class TransformerLM(nn.Module, _Reports):
    """Decoder-only language model: embeddings -> causal blocks -> final norm -> LM head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = TokenEmbedding(cfg)
        self.decoder = Decoder(cfg)
        self.head = nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.tokens.weight
        else:
            nn.init.normal_(self.head.weight, 0.0, cfg.init_std)

    def forward(
        self,
        input_ids: Tensor,
        targets: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        caches: list[LayerCache] | None = None,
        num_logits: int | None = None,
        position_ids: Tensor | None = None,
        document_ids: Tensor | None = None,
        logits_for_targets: bool = False,
    ) -> LMOutput:
        """``input_ids`` ``[b, s]``; ``targets`` ``[b, s]`` (-100 = ignore), already aligned (targets[t]
        is the token after input_ids[t]); ``attention_mask`` ``[b, L]`` 1 = real token (covers cached
        positions when decoding); ``num_logits``: compute the head only for the last n positions.
        Packed sequences pass ``position_ids`` ``[b, s]`` (restarting at 0 in each document) and
        ``document_ids`` ``[b, s]``: no token attends across documents, so each is computed as if alone.
        ``position_ids`` alone: tokens at those positions of one sequence (a context-parallel shard).
        ``logits_for_targets``: run the head only at positions whose target is not -100 (fine-tuning data,
        where prompts carry no loss): the same loss, without the head's matmuls for the other positions;
        ``logits`` is then ``[n, V]`` for those n positions, in order."""
        past = caches[0].self_attn.length if caches else 0
        if position_ids is not None or document_ids is not None:
            if position_ids is None or caches:
                raise ValueError("document_ids (packed sequences) need position_ids, and neither goes with a KV cache")
            x = self.embed(input_ids, position_ids if self.cfg.position != "none" else None)
            out = self.decoder(x, attention_mask, position_ids=position_ids, document_ids=document_ids)
            return self._head(out, targets, num_logits, logits_for_targets)
        position_ids = None
        if self.cfg.position != "none" and (attention_mask is not None or past):
            if attention_mask is not None:  # left padding: real tokens count positions from 0
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
            else:
                position_ids = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids, position_ids)
        out = self.decoder(x, attention_mask, caches=caches)
        return self._head(out, targets, num_logits, logits_for_targets)

    def _head(self, out, targets: Tensor | None, num_logits: int | None, for_targets: bool = False) -> LMOutput:
        if for_targets and targets is not None:
            keep = targets != IGNORE_INDEX  # [b, s]
            logits = self.head(out.hidden[keep])  # [n, V]: only where a loss is taken
            loss, count = lm_loss(logits, targets[keep])
            return LMOutput(logits, loss, out.aux_loss, count)
        hidden = out.hidden if num_logits is None else out.hidden[:, -num_logits:]
        logits = self.head(hidden)
        loss = count = None
        if targets is not None:
            loss, count = lm_loss(logits, targets)
        return LMOutput(logits, loss, out.aux_loss, count)

    def new_caches(self, batch_size: int, max_seq_len: int, *, dtype=None, device=None, kind: str = "contiguous",
                   **options) -> list[LayerCache]:
        """Per-layer KV caches; ``kind``: contiguous, paged, int8 or int4 (``transformer.attention.cache_kinds``)."""
        weight = self.embed.tokens.weight  # never adapted or quantised: the model's dtype and device
        return self.decoder.new_caches(batch_size, max_seq_len, dtype=dtype or weight.dtype, device=device or weight.device,
                                       kind=kind, **options)


class EncoderModel(nn.Module, _Reports):
    """Bidirectional encoder with pooling (``cls`` / ``mean`` / ``last``); the base of task heads."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = TokenEmbedding(cfg)
        self.encoder = Encoder(cfg)
        self.pooler = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.embed_dim), nn.Tanh()) if cfg.pooler_dense else None

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None) -> EncoderOutput:
        """``input_ids`` / ``attention_mask`` / ``token_type_ids`` ``[b, s]`` -> hidden ``[b, s, D]``, pooled ``[b, D]``."""
        out = self.encoder(self.embed(input_ids, token_type_ids=token_type_ids), attention_mask)
        pooled = pool(out.hidden, attention_mask, self.cfg.pooling)
        if self.pooler is not None:
            pooled = self.pooler(pooled)
        return EncoderOutput(out.hidden, pooled, out.aux_loss)


class EncoderDecoder(nn.Module, _Reports):
    """Sequence-to-sequence model (T5/BART-like): shared embeddings, encoder, cross-attending decoder, tied head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = TokenEmbedding(cfg)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, cross_attention=True, num_layers=cfg.num_decoder_layers)
        self.head = nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.tokens.weight
        else:
            nn.init.normal_(self.head.weight, 0.0, cfg.init_std)

    @property
    def decoder_start_token_id(self) -> int:
        start = self.cfg.decoder_start_token_id if self.cfg.decoder_start_token_id is not None else self.cfg.pad_token_id
        if start is None:
            raise ValueError("EncoderDecoder needs model.decoder_start_token_id or model.pad_token_id to start decoding")
        return start

    def shift_right(self, targets: Tensor) -> Tensor:
        """Decoder inputs from targets ``[b, t]``: start token, then targets[:-1]; -100 becomes padding."""
        start = torch.full_like(targets[:, :1], self.decoder_start_token_id)
        shifted = torch.cat([start, targets[:, :-1]], dim=1)
        pad = self.cfg.pad_token_id if self.cfg.pad_token_id is not None else self.decoder_start_token_id
        return shifted.masked_fill(shifted == IGNORE_INDEX, pad)

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``[b, s]`` -> memory ``[b, s, D]``."""
        return self.encoder(self.embed(input_ids), attention_mask).hidden

    def forward(
        self,
        input_ids: Tensor,
        targets: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        memory: Tensor | None = None,
        caches: list[LayerCache] | None = None,
        num_logits: int | None = None,
    ) -> LMOutput:
        """Source ``input_ids`` ``[b, s]``; ``targets`` ``[b, t]`` (decoder inputs default to them shifted
        right); pass ``memory`` from :meth:`encode` to skip re-encoding while decoding."""
        if decoder_input_ids is None:
            if targets is None:
                raise ValueError("EncoderDecoder.forward needs decoder_input_ids or targets")
            decoder_input_ids = self.shift_right(targets)
        enc_aux = None
        if memory is None:
            enc = self.encoder(self.embed(input_ids), attention_mask)
            memory, enc_aux = enc.hidden, enc.aux_loss
        past = caches[0].self_attn.length if caches else 0
        position_ids = None
        if past and self.cfg.position != "none":
            position_ids = torch.arange(past, past + decoder_input_ids.shape[1], device=decoder_input_ids.device)
        x = self.embed(decoder_input_ids, position_ids)
        out = self.decoder(x, decoder_attention_mask, memory=memory, memory_mask=attention_mask, caches=caches)
        hidden = out.hidden if num_logits is None else out.hidden[:, -num_logits:]
        logits = self.head(hidden)
        loss = count = None
        if targets is not None:
            loss, count = lm_loss(logits, targets)
        aux = [a for a in (enc_aux, out.aux_loss) if a is not None]
        return LMOutput(logits, loss, sum(aux) if aux else None, count)

    def new_caches(self, batch_size: int, max_seq_len: int, *, memory_len: int, dtype=None, device=None,
                   kind: str = "contiguous", **options) -> list[LayerCache]:
        """Decoder caches: self-attention of ``kind`` (``transformer.attention.cache_kinds``), cross-attention of the
        ``memory_len``-token memory contiguous."""
        weight = self.embed.tokens.weight  # never adapted or quantised: the model's dtype and device
        return self.decoder.new_caches(batch_size, max_seq_len, memory_len=memory_len,
                                       dtype=dtype or weight.dtype, device=device or weight.device, kind=kind, **options)

    def generate(self, input_ids: Tensor, max_new_tokens: int, **kwargs) -> Tensor:
        """Seq2seq generation with the encoder run once; see :func:`transformer.generation.generate_seq2seq`."""
        from .generation import generate_seq2seq

        return generate_seq2seq(self, input_ids, max_new_tokens, **kwargs)


MODEL_CLASSES = {"lm": TransformerLM, "encoder": EncoderModel, "encoder_decoder": EncoderDecoder}


def build_model(cfg: ModelConfig | dict) -> nn.Module:
    """The model described by ``cfg`` (a :class:`ModelConfig` or its dict form), freshly initialised."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    return MODEL_CLASSES[cfg.kind](cfg)


def model_report(model: nn.Module, *, seq_len: int | None = None, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Parameter count, KV-cache bytes per token and FLOPs per token: what runs are compared by."""
    return {
        "parameters": model.num_parameters(),
        "non_embedding_parameters": model.num_parameters(non_embedding=True),
        "kv_cache_bytes_per_token": model.kv_cache_bytes_per_token(dtype),
        "kv_cache_bytes_per_token_at_max_len": model.kv_cache_bytes_per_token_at(seq_len, dtype),
        "flops_per_token": model.flops_per_token(seq_len),
    }
