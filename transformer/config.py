"""The model config schema: one dataclass from which :func:`build_model` rebuilds any model.

Every field has a default and a docstring; validation happens in ``__post_init__`` and names the
field. The same dataclass is the ``model:`` section of a training YAML (OmegaConf structured config),
and is saved inside every checkpoint, so a checkpoint can always rebuild its model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .attention.registry import available_attention_types
from .attention.config import FAMILY_OPTIONS, AttentionConfig, check_known_keys
from .validation import choice, in_range, positive_fields

MODEL_KINDS = ("lm", "encoder", "encoder_decoder")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "relu", "swiglu")
ABSOLUTE_POSITIONS = ("none", "learned", "sinusoidal")
POOLINGS = ("cls", "mean", "last")


@dataclass
class ModelAttentionConfig(AttentionConfig):
    """The attention section of a model config: the layer type plus every layer option."""

    type: str = "mha"
    """Attention layer type from the registry: ``mha``, ``mqa``, ``gqa``, ``mla`` or a registered one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        choice("model.attention.type", self.type, available_attention_types())

    def layer_options(self) -> dict[str, Any]:
        """Keyword options for ``get_attention`` (everything but ``type``; unset per-family options left out)."""
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(AttentionConfig)}
        for name in FAMILY_OPTIONS:
            if options[name] is None:
                del options[name]
        if options["num_kv_heads"] is None:
            del options["num_kv_heads"]
        return options


@dataclass
class ModelConfig:
    """Architecture of a language model, encoder or encoder-decoder."""

    kind: str = "lm"
    """``lm`` (decoder-only), ``encoder`` (bidirectional, pooled) or ``encoder_decoder`` (seq2seq)."""
    vocab_size: int = 256
    """Token vocabulary size (the tokenizer's)."""
    embed_dim: int = 256
    """Residual stream width D."""
    num_heads: int = 4
    """Query heads per attention layer."""
    num_layers: int = 4
    """Blocks in the (encoder or decoder) stack."""
    num_decoder_layers: int | None = None
    """Encoder-decoder only: decoder blocks (``None``: same as ``num_layers``)."""
    max_seq_len: int = 256
    """Longest sequence the model accepts (learned positions, generation limit)."""
    norm: str = "layernorm"
    """``layernorm`` or ``rmsnorm``."""
    norm_eps: float = 1e-5
    """Epsilon of every norm in the stack."""
    norm_position: str = "pre"
    """``pre`` (GPT-2 / Llama: norm before each sublayer, plus a final norm) or ``post`` (BERT)."""
    mlp: str = "gelu"
    """``gelu``, ``gelu_tanh`` (GPT-2), ``relu`` or ``swiglu`` (Llama)."""
    mlp_hidden: int | None = None
    """MLP hidden width. ``None``: 4·D, or for ``swiglu`` 8·D/3 rounded up to ``mlp_multiple_of``
    (the same parameter count as a 4·D GELU MLP)."""
    mlp_multiple_of: int = 8
    """Round the default SwiGLU width up to a multiple of this (hardware-friendly shapes)."""
    bias: bool = False
    """Biases in MLP and norm layers (GPT-2/BERT: True; Llama: False). Attention bias is ``attention.bias``."""
    moe_num_experts: int = 0
    """Mixture of experts: experts per MLP (0 = dense MLP)."""
    moe_top_k: int = 2
    """Experts each token is routed to."""
    moe_aux_loss_weight: float = 0.01
    """Weight of the load-balancing loss (Switch Transformer) added to the training loss."""
    dropout: float = 0.0
    """Dropout on embeddings and on each sublayer's output (residual dropout)."""
    residual_scale: float = 1.0
    """Multiplier on each sublayer's output before it joins the residual stream."""
    position: str = "none"
    """Absolute positions added to token embeddings: ``none``, ``learned`` or ``sinusoidal``.
    Relative schemes (RoPE, ALiBi, T5 bias) are ``attention.positional``."""
    type_vocab_size: int = 0
    """Token-type (segment) embeddings, as in BERT (0 = none)."""
    embedding_norm: bool = False
    """Normalise the summed embeddings (BERT)."""
    tie_embeddings: bool = True
    """Share the token embedding with the LM head."""
    pooling: str = "cls"
    """Encoder models: ``cls`` (first token), ``mean`` over real tokens, or ``last`` real token."""
    pooler_dense: bool = False
    """Encoder models: a dense + tanh layer on the pooled vector (BERT's pooler)."""
    pad_token_id: int | None = None
    """Padding id (used to shift labels in encoder-decoders and as generation padding)."""
    bos_token_id: int | None = None
    """Beginning-of-text id (a pretrained model's; exported to ``config.json``)."""
    eos_token_id: int | None = None
    """End-of-text id (a pretrained model's; exported to ``config.json`` and ``generation_config.json``)."""
    decoder_start_token_id: int | None = None
    """Encoder-decoder: first decoder input (``None``: ``pad_token_id``, as in T5)."""
    init_std: float = 0.02
    """Std of the normal initialisation of weights (output projections scaled by depth)."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (saves memory, costs ~30% time)."""
    attention: ModelAttentionConfig = field(default_factory=ModelAttentionConfig)
    """The attention layer: type and options (see ``transformer.attention.config.AttentionConfig``); every layer's
    default, which ``attention_pattern`` and ``attention_layers`` override per layer."""
    attention_pattern: list[str] | None = None
    """Per-layer attention: names from ``attention_variants``, repeated over the depth (layer i uses entry
    ``i mod len``). ``[local, local, local, global]`` gives three local layers per global one (Gemma-style).
    In an encoder-decoder the pattern runs over each stack from its first layer."""
    attention_variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Named sets of ``model.attention`` keys (``type``, ``sliding_window``, ``num_kv_heads``, ``positional``,
    ``rope_theta``, any other) that override the default for the layers ``attention_pattern`` gives them; ``{}``
    keeps the default."""
    attention_layers: dict[Any, dict[str, Any]] = field(default_factory=dict)
    """Explicit per-layer overrides by 0-based layer index (negative counts from the end), applied after the
    pattern: ``{0: {type: mha}}``."""

    def __post_init__(self) -> None:
        if isinstance(self.attention, dict):
            self.attention = ModelAttentionConfig(**self.attention)
        choices = {"kind": MODEL_KINDS, "norm": NORMS, "mlp": MLPS, "position": ABSOLUTE_POSITIONS,
                   "pooling": POOLINGS, "norm_position": ("pre", "post")}
        for name, allowed in choices.items():
            choice(f"model.{name}", getattr(self, name), allowed)
        positive_fields("model", self, ("vocab_size", "embed_dim", "num_heads", "num_layers", "max_seq_len", "mlp_multiple_of"))
        positive_fields("model", self, ("num_decoder_layers", "mlp_hidden"), optional=True)
        if self.moe_num_experts < 0 or (self.moe_num_experts and not 1 <= self.moe_top_k <= self.moe_num_experts):
            raise ValueError(
                f"model.moe_top_k={self.moe_top_k} must be between 1 and model.moe_num_experts={self.moe_num_experts}"
            )
        in_range("model.dropout", self.dropout, 0.0, 1.0, high_open=True)
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"model.{name}={value} is outside the vocabulary [0, {self.vocab_size})")
        try:  # head arithmetic, with the model's key path in the message
            self.attention.resolve_heads(self.embed_dim, self.num_heads)
        except ValueError as err:
            raise ValueError(f"model.attention: {err}") from None
        self._check_layer_attention()

    # ------------------------------------------------------------------ per-layer attention
    def _check_layer_attention(self) -> None:
        """Validate the pattern, its variants and the per-layer overrides, and build every layer's config once,
        so a bad value fails at config time naming its key."""
        if self.attention_pattern is not None:
            if isinstance(self.attention_pattern, str) or not list(self.attention_pattern):
                raise ValueError(f"model.attention_pattern={self.attention_pattern!r} must be a non-empty list of names "
                                 f"from model.attention_variants, e.g. [local, local, global]")
            self.attention_pattern = [str(name) for name in self.attention_pattern]
            for name in self.attention_pattern:
                if name not in self.attention_variants:
                    known = ", ".join(sorted(self.attention_variants)) or "none defined"
                    raise ValueError(f"model.attention_pattern names {name!r}, which model.attention_variants does not define "
                                     f"(defined: {known}); add model.attention_variants.{name}: {{...}}")
        for name, options in self.attention_variants.items():
            self._check_overrides(options or {}, f"model.attention_variants.{name}")
        depth = min(self.stack_depths())
        layers = {}
        for key, options in self.attention_layers.items():
            try:
                index = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"model.attention_layers key {key!r} must be a layer index (0-based, negative from the end)") from None
            if not -depth <= index < depth:
                raise ValueError(f"model.attention_layers.{key}: layer {index} is outside the {depth} layers of the stack")
            self._check_overrides(options or {}, f"model.attention_layers.{key}")
            layers[index] = dict(options or {})
        self.attention_layers = layers
        for depth in self.stack_depths():
            for index in range(depth):
                self.layer_attention(index, depth)

    @staticmethod
    def _check_overrides(options: Any, where: str) -> None:
        if not isinstance(options, dict):
            raise ValueError(f"{where}={options!r} must be a mapping of model.attention keys (e.g. {{sliding_window: 128}})")
        check_known_keys(options, ModelAttentionConfig, what="config key", prefix=f"{where}.")

    def stack_depths(self) -> list[int]:
        """Blocks per stack: ``[num_layers]``, or encoder and decoder depths for an encoder-decoder."""
        if self.kind == "encoder_decoder":
            return [self.num_layers, self.num_decoder_layers or self.num_layers]
        return [self.num_layers]

    @property
    def uniform_attention(self) -> bool:
        """Every layer uses ``model.attention`` as written (no pattern, no per-layer override)."""
        return self.attention_pattern is None and not self.attention_layers

    def layer_attention(self, index: int, num_layers: int) -> ModelAttentionConfig:
        """The attention config of layer ``index`` (0-based) of a stack of ``num_layers``: the default, then the
        pattern's variant for this depth, then the layer's own overrides."""
        if self.uniform_attention:
            return self._checked_layer(self.attention, "model.attention", index)
        options = {f.name: getattr(self.attention, f.name) for f in dataclasses.fields(ModelAttentionConfig)}
        where, explicit = "model.attention", {}
        if self.attention_pattern is not None:
            name = self.attention_pattern[index % len(self.attention_pattern)]
            explicit.update(self.attention_variants[name] or {})
            where = f"model.attention_variants.{name}"
        for key in (index, index - num_layers):
            if key in self.attention_layers:
                explicit.update(self.attention_layers[key])
                where = f"model.attention_layers.{key}"
        options.update(explicit)
        if options["type"] != self.attention.type:  # inherited options another type cannot take are dropped
            family = "gqa" if options["type"] in ("mha", "mqa", "gqa") else options["type"]
            for name, owner in FAMILY_OPTIONS.items():
                if owner != family and name not in explicit:
                    options[name] = None
            if options["type"] in ("mha", "mqa", "mla", "switchhead") and "num_kv_heads" not in explicit:
                options["num_kv_heads"] = None  # these types fix their own key/value head count
        try:
            att = ModelAttentionConfig(**options)
            att.resolve_heads(self.embed_dim, self.num_heads)
        except ValueError as err:
            raise ValueError(f"{where} (layer {index}): {err}") from None
        return self._checked_layer(att, where, index)

    def _checked_layer(self, att: ModelAttentionConfig, where: str, index: int) -> ModelAttentionConfig:
        """Checks that need the model's fields as well as the layer's."""
        if att.type == "sparse" and (att.sparse_top_k or 0) > self.max_seq_len:
            raise ValueError(f"{where}.sparse_top_k={att.sparse_top_k} (layer {index}) is larger than model.max_seq_len="
                             f"{self.max_seq_len}: every query would keep every key; lower it or use a dense type")
        return att

    @property
    def mlp_hidden_dim(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            hidden = (8 * self.embed_dim + 2) // 3
            return -(-hidden // self.mlp_multiple_of) * self.mlp_multiple_of
        return 4 * self.embed_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a plain dict (e.g. a checkpoint's), naming unknown keys with a suggestion."""
        data = dict(data)
        check_known_keys(data, cls, what="config key", prefix="model.")
        attention = dict(data.pop("attention", {}) or {})
        check_known_keys(attention, ModelAttentionConfig, what="config key", prefix="model.attention.")
        return cls(**data, attention=ModelAttentionConfig(**attention))  # attention_layers keys: str in JSON, int here
