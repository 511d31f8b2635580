"""``config.json`` of a Hugging Face checkpoint <-> our :class:`ModelConfig`, both directions in one place.

Every architecture setting is read from the file, never assumed: sizes, heads, head dim, RoPE theta and
scaling (``linear``, ``llama3``), partial rotary, norm epsilon, biases, q/k norm, sliding window, tied
embeddings, vocabulary and the bos / eos / pad ids. A setting this toolkit cannot reproduce exactly is an
error naming it, never a silent approximation (a wrong RoPE base changes every logit).

Families: ``llama`` (Llama-2/3.x, SmolLM, TinyLlama), ``mistral``, ``qwen2``, ``qwen3`` (q/k RMSNorm),
``phi3`` (fused ``qkv_proj`` / ``gate_up_proj``), ``gpt2`` and ``bert``.
"""

from __future__ import annotations

from ..config import ModelConfig

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2", "bert")
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "phi3")
ROPE_TYPES = ("default", "linear", "llama3")


def _attention_type(heads: int, kv_heads: int) -> str:
    return "mha" if kv_heads == heads else "mqa" if kv_heads == 1 else "gqa"


def _first_int(value) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def special_ids(hf: dict) -> dict:
    """bos / eos / pad ids of ``config.json`` (eos: the first when it lists several). An id outside the
    vocabulary (GPT-2's 50256 in a resized model, as ``transformers`` itself warns) is dropped."""
    vocab = hf.get("vocab_size") or 0
    ids = {name: _first_int(hf.get(name)) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return {name: i if i is not None and 0 <= i < vocab else None for name, i in ids.items()}


def rope_settings(hf: dict) -> dict:
    """RoPE keys of our attention config from ``rope_parameters`` (transformers 5), ``rope_scaling`` and
    ``rope_theta`` (older files)."""
    rope = dict(hf.get("rope_scaling") or {})
    rope.update(hf.get("rope_parameters") or {})
    theta = float(hf.get("rope_theta", rope.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default")) or "default"
    out = dict(positional="rope", rope_theta=theta, rope_fraction=float(rope.get("partial_rotary_factor",
                                                                                   hf.get("partial_rotary_factor", 1.0))))
    if kind not in ROPE_TYPES:
        raise ValueError(f"config.json rope type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if kind == "linear":
        out.update(rope_scaling="linear", rope_scaling_factor=float(rope["factor"]))
    elif kind == "llama3":
        out.update(rope_scaling="llama3", rope_scaling_factor=float(rope["factor"]),
                   rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
                   rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
                   rope_original_max_len=int(rope["original_max_position_embeddings"]))
    if rope.get("attention_factor") not in (None, 1, 1.0):
        raise ValueError(f"config.json rope attention_factor={rope['attention_factor']} is not supported")
    return out


def _llama_config(hf: dict) -> ModelConfig:
    model_type = hf.get("model_type")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r}: only 'silu' (SwiGLU) {model_type} models are supported")
    # Llama/Mistral/Qwen3/Phi-3: attention_bias puts a bias on q, k, v and o; Qwen2 has a q/k/v bias and none on o.
    qwen2 = model_type == "qwen2"
    attn_bias = bool(hf.get("attention_bias", False)) and not qwen2
    heads = hf["num_attention_heads"]
    kv_heads = hf.get("num_key_value_heads") or heads
    window = hf.get("sliding_window")
    if model_type in ("qwen2", "qwen3"):  # a window only where use_sliding_window and every layer uses it
        if not hf.get("use_sliding_window", False):
            window = None
        elif (hf.get("max_window_layers") or 0) > 0 and hf["max_window_layers"] < hf["num_hidden_layers"]:
            raise ValueError(f"config.json: sliding window on only some layers (max_window_layers={hf['max_window_layers']}) "
                             f"is not supported")
    layer_types = set(hf.get("layer_types") or [])
    if layer_types - {"full_attention"} and not (window and layer_types == {"sliding_attention"}):
        raise ValueError(f"config.json layer_types={sorted(layer_types)}: mixed per-layer attention is not supported")
    rope = rope_settings(hf)
    if rope["rope_fraction"] != 1.0 and model_type != "phi3":
        raise ValueError(f"config.json partial_rotary_factor={rope['rope_fraction']} is only supported for phi3")
    ids = special_ids(hf)
    return ModelConfig(
        kind="lm", vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"], num_heads=heads,
        num_layers=hf["num_hidden_layers"], max_seq_len=hf.get("max_position_embeddings", 2048),
        norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", mlp_hidden=hf["intermediate_size"],
        bias=bool(hf.get("mlp_bias", False)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **ids,
        attention=dict(type=_attention_type(heads, kv_heads), num_kv_heads=kv_heads if kv_heads != heads else None,
                       head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, bias=attn_bias,
                       qkv_bias=True if qwen2 else None, sliding_window=window, qk_norm=model_type == "qwen3",
                       norm_eps=hf.get("rms_norm_eps", 1e-6), **rope),
    )


def _gpt2_config(hf: dict) -> ModelConfig:
    activation = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
    if hf.get("activation_function", "gelu_new") not in activation:
        raise ValueError(f"config.json activation_function={hf['activation_function']!r} is not supported")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ValueError("GPT-2 variants with scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
    if hf.get("scale_attn_weights") is False:
        raise ValueError("config.json scale_attn_weights=false (unscaled attention) is not supported")
    return ModelConfig(
        kind="lm", vocab_size=hf["vocab_size"], embed_dim=hf["n_embd"], num_heads=hf["n_head"], num_layers=hf["n_layer"],
        max_seq_len=hf["n_positions"], norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=activation[hf.get("activation_function", "gelu_new")], mlp_hidden=hf.get("n_inner") or 4 * hf["n_embd"],
        bias=True, position="learned", tie_embeddings=bool(hf.get("tie_word_embeddings", True)), **special_ids(hf),
        attention=dict(type="mha", bias=True, positional="none"),
    )


def _bert_config(hf: dict) -> ModelConfig:
    activation = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu"}
    if hf.get("hidden_act", "gelu") not in activation:
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r} is not supported")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"config.json position_embedding_type={hf['position_embedding_type']!r}: only 'absolute' is supported")
    return ModelConfig(
        kind="encoder", vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"], num_heads=hf["num_attention_heads"],
        num_layers=hf["num_hidden_layers"], max_seq_len=hf.get("max_position_embeddings", 512), norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-12), norm_position="post", mlp=activation[hf.get("hidden_act", "gelu")],
        mlp_hidden=hf["intermediate_size"], bias=True, position="learned", type_vocab_size=hf.get("type_vocab_size", 2),
        embedding_norm=True, pooling="cls", pooler_dense=True, **special_ids(hf),
        attention=dict(type="mha", bias=True, positional="none"),
    )


CONFIG_READERS = {**{t: _llama_config for t in LLAMA_LIKE}, "gpt2": _gpt2_config, "bert": _bert_config}


def model_config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """Our :class:`ModelConfig` for a ``config.json`` dict; one-line errors for unsupported settings."""
    model_type = hf.get("model_type")
    if model_type not in CONFIG_READERS:
        arch = ", ".join(hf.get("architectures") or [])
        raise ValueError(f"{where}: model_type={model_type!r} is not supported{f' ({arch})' if arch else ''}; "
                         f"supported: {', '.join(SUPPORTED)}")
    try:
        return CONFIG_READERS[model_type](hf)
    except KeyError as err:
        raise ValueError(f"{where} lacks {err.args[0]!r}, which a {model_type} config needs") from None
    except ValueError as err:
        message = str(err)
        raise ValueError(message if message.startswith(where) else f"{where}: {message.removeprefix('config.json ')}") from None


# ------------------------------------------------------------------------------------ export side
def family_of(cfg: ModelConfig) -> str:
    """The Hugging Face family that holds ``cfg`` exactly: ``llama``, ``qwen2``, ``qwen3``, ``mistral``,
    ``phi3``, ``gpt2`` or ``bert``; an error listing what does not fit otherwise."""
    if not cfg.uniform_attention:  # these families give every layer the same attention
        raise ValueError("this model has per-layer attention (model.attention_pattern / attention_layers); the Hugging Face "
                         "families exported here (llama, mistral, qwen2/3, phi3, gpt2, bert) give every layer the same "
                         "attention, so it has no Hugging Face equivalent: keep the toolkit checkpoint or export without --hf")
    att = cfg.attention
    if att.type not in ("mha", "mqa", "gqa"):  # the one reason that matters; the per-family list would bury it
        raise ValueError(f"model.attention.type={att.type!r} has no Hugging Face equivalent among the families exported "
                         f"here (llama, mistral, qwen2/3, phi3, gpt2, bert: MHA / MQA / GQA attention); keep the toolkit "
                         f"checkpoint, or export without --hf (adapters: merge them with --merge)")
    llama = dict(kind="lm", norm="rmsnorm", mlp="swiglu", position="none", norm_position="pre", positional="rope",
                 type_in=("mha", "mqa", "gqa"), rope_fraction=1.0, qk_norm=False)
    checks = {
        "llama": llama,
        "qwen3": dict(llama, qk_norm=True),
        "phi3": dict(llama, rope_fraction=None),
        "gpt2": dict(kind="lm", norm="layernorm", mlp="gelu_tanh", position="learned", norm_position="pre",
                     positional="none", type_in=("mha",), bias=True, attn_bias=True),
        "bert": dict(kind="encoder", norm="layernorm", position="learned", norm_position="post", positional="none",
                     type_in=("mha",), bias=True, attn_bias=True, embedding_norm=True),
    }
    values = dict(kind=cfg.kind, norm=cfg.norm, mlp=cfg.mlp, position=cfg.position, norm_position=cfg.norm_position,
                  positional=att.positional, rope_fraction=att.rope_fraction, qk_norm=att.qk_norm, bias=cfg.bias,
                  attn_bias=att.bias, embedding_norm=cfg.embedding_norm)
    mismatches = {}
    for family, wanted in checks.items():
        wrong = [f"{k}={values[k]!r} (needs {v!r})" for k, v in wanted.items()
                 if k != "type_in" and v is not None and values[k] != v]
        if att.type not in wanted["type_in"]:
            wrong.append(f"attention.type={att.type!r} (needs one of {wanted['type_in']})")
        if cfg.moe_num_experts:
            wrong.append("moe_num_experts > 0")
        if not wrong:
            if family == "llama":
                qkv_only_bias = bool(att.qkv_bias) and not att.bias
                return "qwen2" if qkv_only_bias else "mistral" if att.sliding_window else "llama"
            return family
        mismatches[family] = wrong
    detail = "; ".join(f"{f}: {', '.join(w)}" for f, w in mismatches.items())
    raise ValueError(f"this model has no Hugging Face equivalent among {', '.join(checks)} — {detail}")


def _rope_dict(att) -> dict:
    rope = {"rope_theta": att.rope_theta, "rope_type": "default"}
    if att.rope_fraction != 1.0:
        rope["partial_rotary_factor"] = att.rope_fraction
    if att.rope_scaling == "linear":
        rope.update(rope_type="linear", factor=att.rope_scaling_factor)
    elif att.rope_scaling == "llama3":
        rope.update(rope_type="llama3", factor=att.rope_scaling_factor, low_freq_factor=att.rope_low_freq_factor,
                    high_freq_factor=att.rope_high_freq_factor, original_max_position_embeddings=att.rope_original_max_len)
    elif att.rope_scaling is not None:
        raise ValueError(f"attention.rope_scaling={att.rope_scaling!r} has no Hugging Face config equivalent here")
    return rope


ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "phi3": "Phi3ForCausalLM", "gpt2": "GPT2LMHeadModel", "bert": "BertModel"}


def hf_config_from_model(cfg: ModelConfig, family: str) -> dict:
    """``config.json`` for ``cfg`` in ``family`` (from :func:`family_of`), with its bos / eos / pad ids."""
    att = cfg.attention
    ids = dict(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    if family in LLAMA_LIKE:
        if family == "qwen2" and att.sliding_window:
            raise ValueError("a q/k/v-bias (Qwen2-shaped) model with a sliding window has no exported equivalent here")
        h = cfg.num_heads
        rope = _rope_dict(att)
        out = {
            "architectures": [ARCHITECTURES[family]], "model_type": family,
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.embed_dim, "intermediate_size": cfg.mlp_hidden_dim,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": h,
            "num_key_value_heads": att.num_kv_heads or (1 if att.type == "mqa" else h),
            "head_dim": att.head_dim or cfg.embed_dim // h, "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps, "rope_theta": att.rope_theta, "rope_parameters": rope,
            "attention_bias": att.bias, "mlp_bias": cfg.bias, "tie_word_embeddings": cfg.tie_embeddings,
            "sliding_window": att.sliding_window, "torch_dtype": "float32", **ids,
        }
        if family in ("qwen2", "qwen3"):
            out.update(use_sliding_window=bool(att.sliding_window), max_window_layers=cfg.num_layers)
        if family == "qwen3" and att.norm_eps != cfg.norm_eps:
            raise ValueError(f"model.attention.norm_eps={att.norm_eps} differs from model.norm_eps={cfg.norm_eps}; "
                             f"Qwen3 has one rms_norm_eps for both")
        if family == "phi3":
            out["partial_rotary_factor"] = att.rope_fraction
        return out
    if family == "gpt2":
        return {
            "architectures": [ARCHITECTURES[family]], "model_type": "gpt2", "vocab_size": cfg.vocab_size, "n_embd": cfg.embed_dim,
            "n_head": cfg.num_heads, "n_layer": cfg.num_layers, "n_positions": cfg.max_seq_len, "n_inner": cfg.mlp_hidden_dim,
            "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **ids,
        }
    return {
        "architectures": [ARCHITECTURES[family]], "model_type": "bert", "vocab_size": cfg.vocab_size, "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.mlp_hidden_dim,
        "hidden_act": {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}[cfg.mlp],
        "max_position_embeddings": cfg.max_seq_len, "type_vocab_size": cfg.type_vocab_size, "layer_norm_eps": cfg.norm_eps,
        "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else 0, "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    }


def generation_config(cfg: ModelConfig, stop_ids: list[int] | None = None) -> dict:
    """``generation_config.json``: what ``generate`` stops at and pads with."""
    eos = sorted({i for i in [cfg.eos_token_id, *(stop_ids or [])] if i is not None})
    return {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
            "pad_token_id": cfg.pad_token_id, "do_sample": False}
