"""Hugging Face–format weights in and out, for the Llama family (Llama / Mistral / Qwen2-shaped:
RoPE, RMSNorm, SwiGLU, GQA), GPT-2 and BERT — without importing ``transformers``.

A checkpoint directory holds ``config.json`` and ``model.safetensors`` (or a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin``). Each family is one table of
:class:`Rule` s saying which of our parameters is made of which Hugging Face tensors; the same table
loads and exports, so the two directions cannot drift apart. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..training.checkpoint_io import atomic_write_text
from ..transformer_model import build_model

SUPPORTED = ("llama", "mistral", "qwen2", "gpt2", "bert")


@dataclass(frozen=True)
class Rule:
    """Our parameter ``ours`` is ``cat(hf_keys, dim=0)``, transposed if ``transpose`` (GPT-2's Conv1D)."""

    ours: str
    hf_keys: tuple[str, ...]
    split: tuple[int, ...] = ()  # sizes along dim 0 when several HF tensors are fused into one of ours
    transpose: bool = False


# ------------------------------------------------------------------------------- config mapping
def _attention_type(heads: int, kv_heads: int) -> str:
    return "mha" if kv_heads == heads else "mqa" if kv_heads == 1 else "gqa"


def _llama_config(hf: dict) -> ModelConfig:
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r}: only 'silu' (SwiGLU) Llama-family models are supported")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling, factor = None, 1.0
    if rope_type == "linear":
        scaling, factor = "linear", float(rope["factor"])
    elif rope_type not in ("default", None):
        raise ValueError(f"config.json rope type {rope_type!r} is not supported (supported: default, linear)")
    # Llama/Mistral: attention_bias puts a bias on q, k, v and o; Qwen2 has a q/k/v bias and none on o.
    qwen2 = hf.get("model_type") == "qwen2"
    attn_bias = bool(hf.get("attention_bias", False)) and not qwen2
    qkv_bias = True if qwen2 else None
    heads = hf["num_attention_heads"]
    kv_heads = hf.get("num_key_value_heads") or heads
    window = hf.get("sliding_window") if hf.get("use_sliding_window", not qwen2) else None
    return ModelConfig(
        kind="lm", vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"], num_heads=heads,
        num_layers=hf["num_hidden_layers"], max_seq_len=hf.get("max_position_embeddings", 2048),
        norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", mlp_hidden=hf["intermediate_size"],
        bias=bool(hf.get("mlp_bias", False)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        pad_token_id=hf.get("pad_token_id"),
        attention=dict(type=_attention_type(heads, kv_heads), num_kv_heads=kv_heads if kv_heads != heads else None,
                       head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, positional="rope", rope_theta=float(theta),
                       rope_scaling=scaling, rope_scaling_factor=factor, bias=attn_bias, qkv_bias=qkv_bias,
                       sliding_window=window),
    )


def _gpt2_config(hf: dict) -> ModelConfig:
    activation = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
    if hf.get("activation_function", "gelu_new") not in activation:
        raise ValueError(f"config.json activation_function={hf['activation_function']!r} is not supported")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ValueError("GPT-2 variants with scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
    return ModelConfig(
        kind="lm", vocab_size=hf["vocab_size"], embed_dim=hf["n_embd"], num_heads=hf["n_head"], num_layers=hf["n_layer"],
        max_seq_len=hf["n_positions"], norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=activation[hf.get("activation_function", "gelu_new")], mlp_hidden=hf.get("n_inner") or 4 * hf["n_embd"],
        bias=True, position="learned", tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
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
        embedding_norm=True, pooling="cls", pooler_dense=True, pad_token_id=hf.get("pad_token_id"),
        attention=dict(type="mha", bias=True, positional="none"),
    )


# ------------------------------------------------------------------------------- parameter rules
def _llama_rules(cfg: ModelConfig, p: str) -> list[Rule]:
    att = cfg.attention
    h, d = cfg.num_heads, att.head_dim or cfg.embed_dim // cfg.num_heads
    kv = att.num_kv_heads or (1 if att.type == "mqa" else h)
    rules = [Rule("embed.tokens.weight", (f"{p}embed_tokens.weight",)), Rule("decoder.final_norm.weight", (f"{p}norm.weight",))]
    if not cfg.tie_embeddings:
        rules.append(Rule("head.weight", ("lm_head.weight",)))
    for i in range(cfg.num_layers):
        ours, hf = f"decoder.blocks.{i}.", f"{p}layers.{i}."
        qkv = tuple(f"{hf}self_attn.{n}_proj" for n in "qkv")
        rules += [
            Rule(ours + "attn.qkv_proj.weight", tuple(k + ".weight" for k in qkv), (h * d, kv * d, kv * d)),
            Rule(ours + "attn.out_proj.weight", (f"{hf}self_attn.o_proj.weight",)),
            Rule(ours + "norm1.weight", (f"{hf}input_layernorm.weight",)),
            Rule(ours + "norm2.weight", (f"{hf}post_attention_layernorm.weight",)),
            Rule(ours + "mlp.w_in.weight", (f"{hf}mlp.gate_proj.weight", f"{hf}mlp.up_proj.weight"), (cfg.mlp_hidden_dim,) * 2),
            Rule(ours + "mlp.w_out.weight", (f"{hf}mlp.down_proj.weight",)),
        ]
        if att.bias if att.qkv_bias is None else att.qkv_bias:
            rules.append(Rule(ours + "attn.qkv_proj.bias", tuple(k + ".bias" for k in qkv), (h * d, kv * d, kv * d)))
        if att.bias:
            rules.append(Rule(ours + "attn.out_proj.bias", (f"{hf}self_attn.o_proj.bias",)))
        if cfg.bias:
            rules += [Rule(ours + "mlp.w_in.bias", (f"{hf}mlp.gate_proj.bias", f"{hf}mlp.up_proj.bias"), (cfg.mlp_hidden_dim,) * 2),
                      Rule(ours + "mlp.w_out.bias", (f"{hf}mlp.down_proj.bias",))]
    return rules


def _gpt2_rules(cfg: ModelConfig, p: str) -> list[Rule]:
    rules = [Rule("embed.tokens.weight", (f"{p}wte.weight",)), Rule("embed.positions.weight", (f"{p}wpe.weight",)),
             Rule("decoder.final_norm.weight", (f"{p}ln_f.weight",)), Rule("decoder.final_norm.bias", (f"{p}ln_f.bias",))]
    if not cfg.tie_embeddings:
        rules.append(Rule("head.weight", ("lm_head.weight",)))
    for i in range(cfg.num_layers):
        ours, hf = f"decoder.blocks.{i}.", f"{p}h.{i}."
        pairs = [("attn.qkv_proj", "attn.c_attn", True), ("attn.out_proj", "attn.c_proj", True), ("norm1", "ln_1", False),
                 ("norm2", "ln_2", False), ("mlp.w_in", "mlp.c_fc", True), ("mlp.w_out", "mlp.c_proj", True)]
        for mine, theirs, conv1d in pairs:
            rules.append(Rule(f"{ours}{mine}.weight", (f"{hf}{theirs}.weight",), transpose=conv1d))
            rules.append(Rule(f"{ours}{mine}.bias", (f"{hf}{theirs}.bias",)))
    return rules


def _bert_rules(cfg: ModelConfig, p: str) -> list[Rule]:
    D = cfg.embed_dim
    e = f"{p}embeddings."
    rules = [Rule("embed.tokens.weight", (e + "word_embeddings.weight",)), Rule("embed.positions.weight", (e + "position_embeddings.weight",)),
             Rule("embed.token_types.weight", (e + "token_type_embeddings.weight",)),
             Rule("embed.norm.weight", (e + "LayerNorm.weight",)), Rule("embed.norm.bias", (e + "LayerNorm.bias",))]
    if cfg.pooler_dense:
        rules += [Rule("pooler.0.weight", (f"{p}pooler.dense.weight",)), Rule("pooler.0.bias", (f"{p}pooler.dense.bias",))]
    for i in range(cfg.num_layers):
        ours, hf = f"encoder.blocks.{i}.", f"{p}encoder.layer.{i}."
        for kind in ("weight", "bias"):
            rules += [
                Rule(f"{ours}attn.qkv_proj.{kind}", tuple(f"{hf}attention.self.{n}.{kind}" for n in ("query", "key", "value")), (D, D, D)),
                Rule(f"{ours}attn.out_proj.{kind}", (f"{hf}attention.output.dense.{kind}",)),
                Rule(f"{ours}norm1.{kind}", (f"{hf}attention.output.LayerNorm.{kind}",)),
                Rule(f"{ours}mlp.w_in.{kind}", (f"{hf}intermediate.dense.{kind}",)),
                Rule(f"{ours}mlp.w_out.{kind}", (f"{hf}output.dense.{kind}",)),
                Rule(f"{ours}norm2.{kind}", (f"{hf}output.LayerNorm.{kind}",)),
            ]
    return rules


@dataclass(frozen=True)
class Family:
    config: Callable[[dict], ModelConfig]
    rules: Callable[[ModelConfig, str], list[Rule]]
    probe: str  # a key (without prefix) that tells which prefix the checkpoint uses
    prefixes: tuple[str, ...]


FAMILIES = {
    "llama": Family(_llama_config, _llama_rules, "embed_tokens.weight", ("model.", "")),
    "gpt2": Family(_gpt2_config, _gpt2_rules, "wte.weight", ("transformer.", "")),
    "bert": Family(_bert_config, _bert_rules, "embeddings.word_embeddings.weight", ("bert.", "")),
}
FAMILIES["mistral"] = FAMILIES["qwen2"] = FAMILIES["llama"]


# ------------------------------------------------------------------------------------ file i/o
def _checkpoint_dir(path: str | os.PathLike) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{str(path)!r} is not a local directory. This toolkit never downloads weights: fetch the model first "
            f"(e.g. `huggingface-cli download {path} --local-dir DIR`) and pass DIR."
        )
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory / 'config.json'} is missing: not a Hugging Face-format checkpoint directory")
    return directory


def read_state_dict(directory: Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory (single or sharded safetensors, or pytorch_model.bin)."""
    from safetensors.torch import load_file

    if (directory / "model.safetensors").is_file():
        return load_file(directory / "model.safetensors")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_file(directory / shard))
        return state
    if (directory / "pytorch_model.bin").is_file():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory} holds no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def read_hf_config(path: str | os.PathLike) -> tuple[dict, ModelConfig]:
    """``config.json`` as a dict and as our :class:`ModelConfig`."""
    config_path = _checkpoint_dir(path) / "config.json"
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({' '.join(str(err).split())[:160]})") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{config_path} holds a JSON {type(hf).__name__}, not a model config")
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"config.json model_type={model_type!r} is not supported; supported: {', '.join(SUPPORTED)}")
    try:
        return hf, FAMILIES[model_type].config(hf)
    except KeyError as err:
        raise ValueError(f"{config_path} lacks {err.args[0]!r}, which a {model_type} config needs") from None


def load_hf_model(path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> nn.Module:
    """Build our model from a local Hugging Face-format directory and load its weights (strict)."""
    directory = _checkpoint_dir(path)
    hf, cfg = read_hf_config(directory)
    family = FAMILIES[hf["model_type"]]
    state = read_state_dict(directory)
    prefix = next((p for p in family.prefixes if p + family.probe in state), None)
    if prefix is None:
        raise ValueError(f"{directory}: no {family.probe!r} tensor under any of the prefixes {family.prefixes}")
    model = build_model(cfg)
    ours: dict[str, Tensor] = {}
    used: set[str] = set()
    for rule in family.rules(cfg, prefix):
        missing = [k for k in rule.hf_keys if k not in state]
        if missing:
            raise ValueError(f"{directory}: tensor(s) {missing} needed for {rule.ours} are missing")
        tensor = torch.cat([state[k] for k in rule.hf_keys], dim=0) if len(rule.hf_keys) > 1 else state[rule.hf_keys[0]]
        ours[rule.ours] = tensor.t() if rule.transpose else tensor
        used.update(rule.hf_keys)
    ignorable = (".attn.bias", ".attn.masked_bias", "position_ids", "rotary_emb.inv_freq", "lm_head.weight", "cls.")
    unused = [k for k in state if k not in used and not any(s in k for s in ignorable)]
    if unused:
        raise ValueError(f"{directory}: tensors not understood by the {hf['model_type']} mapping: {unused[:5]}")
    if cfg.tie_embeddings and "head.weight" in model.state_dict():
        ours["head.weight"] = ours["embed.tokens.weight"]  # the same Parameter under two names
    model.load_state_dict(ours, strict=True)
    return model.to(dtype) if dtype is not None else model


# --------------------------------------------------------------------------------------- export
def _family_of(cfg: ModelConfig) -> str:
    att = cfg.attention
    checks = {
        "llama": dict(kind="lm", norm="rmsnorm", mlp="swiglu", position="none", norm_position="pre", positional="rope",
                      type_in=("mha", "mqa", "gqa"), rope_fraction=1.0, qk_norm=False),
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
        wrong = [f"{k}={values[k]!r} (needs {v!r})" for k, v in wanted.items() if k != "type_in" and values[k] != v]
        if att.type not in wanted["type_in"]:
            wrong.append(f"attention.type={att.type!r} (needs one of {wanted['type_in']})")
        if cfg.moe_num_experts:
            wrong.append("moe_num_experts > 0")
        if not wrong:
            return family
        mismatches[family] = wrong
    detail = "; ".join(f"{f}: {', '.join(w)}" for f, w in mismatches.items())
    raise ValueError(f"this model has no Hugging Face equivalent among llama / gpt2 / bert — {detail}")


def _hf_config_dict(cfg: ModelConfig, family: str) -> dict:
    att = cfg.attention
    if family == "llama":
        rope = {"rope_theta": att.rope_theta, "rope_type": "default"}
        if att.rope_scaling == "linear":
            rope = {"rope_theta": att.rope_theta, "rope_type": "linear", "factor": att.rope_scaling_factor}
        elif att.rope_scaling is not None:
            raise ValueError(f"attention.rope_scaling={att.rope_scaling!r} has no Llama config equivalent here")
        h = cfg.num_heads
        qwen2 = bool(att.qkv_bias) and not att.bias
        if qwen2 and att.sliding_window:
            raise ValueError("a q/k/v-bias (Qwen2-shaped) model with a sliding window has no exported equivalent here")
        arch = "Qwen2ForCausalLM" if qwen2 else "MistralForCausalLM" if att.sliding_window else "LlamaForCausalLM"
        return {
            "architectures": [arch],
            "model_type": "qwen2" if qwen2 else "mistral" if att.sliding_window else "llama",
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.embed_dim, "intermediate_size": cfg.mlp_hidden_dim,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": h,
            "num_key_value_heads": att.num_kv_heads or (1 if att.type == "mqa" else h),
            "head_dim": att.head_dim or cfg.embed_dim // h, "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps, "rope_theta": att.rope_theta, "rope_parameters": rope, "rope_scaling": None,
            "attention_bias": att.bias, "mlp_bias": cfg.bias, "tie_word_embeddings": cfg.tie_embeddings,
            "sliding_window": att.sliding_window, "pad_token_id": cfg.pad_token_id, "torch_dtype": "float32",
        }
    if family == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size, "n_embd": cfg.embed_dim,
            "n_head": cfg.num_heads, "n_layer": cfg.num_layers, "n_positions": cfg.max_seq_len, "n_inner": cfg.mlp_hidden_dim,
            "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": None, "eos_token_id": None,
        }
    return {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": cfg.vocab_size, "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.mlp_hidden_dim,
        "hidden_act": {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}[cfg.mlp],
        "max_position_embeddings": cfg.max_seq_len, "type_vocab_size": cfg.type_vocab_size, "layer_norm_eps": cfg.norm_eps,
        "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else 0, "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    }


def export_hf(model: nn.Module, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers`` (and :func:`load_hf_model`) load.

    Refuses to write into an existing non-empty directory unless ``overwrite``; files are written to a
    temporary name and renamed, so an interrupted export never leaves a half-written model.
    """
    from safetensors.torch import save_file

    cfg: ModelConfig = model.cfg
    family = _family_of(cfg)
    directory = Path(path)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} exists and is not empty; pass overwrite=True or choose a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    prefix = {"llama": "model.", "gpt2": "transformer.", "bert": ""}[family]
    state = model.state_dict()
    tensors: dict[str, Tensor] = {}
    for rule in FAMILIES[family].rules(cfg, prefix):
        tensor = state[rule.ours].detach().cpu()
        tensor = tensor.t() if rule.transpose else tensor
        parts = tensor.split(list(rule.split), dim=0) if rule.split else (tensor,)
        for key, part in zip(rule.hf_keys, parts):
            tensors[key] = part.contiguous().clone()
    tmp = directory / ".model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")
    atomic_write_text(directory / "config.json", json.dumps(_hf_config_dict(cfg, family), indent=2))
    return directory
