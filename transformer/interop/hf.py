"""Hugging Face–format weights in and out, for the Llama family (Llama-2/3.x, SmolLM, Mistral, Qwen2,
Qwen3, Phi-3: RoPE, RMSNorm, SwiGLU, GQA), GPT-2 and BERT — without importing ``transformers``.

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
from .hf_config import family_of, generation_config, hf_config_from_model, model_config_from_hf


@dataclass(frozen=True)
class Rule:
    """Our parameter ``ours`` is ``cat(hf_keys, dim=0)``, transposed if ``transpose`` (GPT-2's Conv1D)."""

    ours: str
    hf_keys: tuple[str, ...]
    split: tuple[int, ...] = ()  # sizes along dim 0 when several HF tensors are fused into one of ours
    transpose: bool = False


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
        if att.qk_norm:  # Qwen3
            rules += [Rule(ours + "attn.q_norm.weight", (f"{hf}self_attn.q_norm.weight",)),
                      Rule(ours + "attn.k_norm.weight", (f"{hf}self_attn.k_norm.weight",))]
        if att.bias if att.qkv_bias is None else att.qkv_bias:
            rules.append(Rule(ours + "attn.qkv_proj.bias", tuple(k + ".bias" for k in qkv), (h * d, kv * d, kv * d)))
        if att.bias:
            rules.append(Rule(ours + "attn.out_proj.bias", (f"{hf}self_attn.o_proj.bias",)))
        if cfg.bias:
            rules += [Rule(ours + "mlp.w_in.bias", (f"{hf}mlp.gate_proj.bias", f"{hf}mlp.up_proj.bias"), (cfg.mlp_hidden_dim,) * 2),
                      Rule(ours + "mlp.w_out.bias", (f"{hf}mlp.down_proj.bias",))]
    return rules


def _phi3_rules(cfg: ModelConfig, p: str) -> list[Rule]:
    """Phi-3 keeps q/k/v and gate/up fused, in our order: its tensors are ours under other names."""
    renames = {"attn.qkv_proj": "self_attn.qkv_proj", "mlp.w_in": "mlp.gate_up_proj"}
    rules = []
    for rule in _llama_rules(cfg, p):
        for mine, theirs in renames.items():
            if f".{mine}." in rule.ours:
                i = rule.ours.split(".")[2]
                rule = Rule(rule.ours, (f"{p}layers.{i}.{theirs}.{rule.ours.rsplit('.', 1)[1]}",))
        rules.append(rule)
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
    rules: Callable[[ModelConfig, str], list[Rule]]
    probe: str  # a key (without prefix) that tells which prefix the checkpoint uses
    prefixes: tuple[str, ...]


FAMILIES = {
    "llama": Family(_llama_rules, "embed_tokens.weight", ("model.", "")),
    "gpt2": Family(_gpt2_rules, "wte.weight", ("transformer.", "")),
    "bert": Family(_bert_rules, "embeddings.word_embeddings.weight", ("bert.", "")),
}
FAMILIES["mistral"] = FAMILIES["qwen2"] = FAMILIES["qwen3"] = FAMILIES["llama"]
FAMILIES["phi3"] = Family(_phi3_rules, "embed_tokens.weight", ("model.", ""))


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
    return hf, model_config_from_hf(hf, str(config_path))


def load_hf_model(path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> nn.Module:
    """Build our model from a local Hugging Face-format directory and load its weights (strict)."""
    directory = _checkpoint_dir(path)
    hf, cfg = read_hf_config(directory)
    return model_from_hf_state(hf, cfg, read_state_dict(directory), str(directory), dtype=dtype)


def model_from_hf_state(hf: dict, cfg: ModelConfig, state: dict[str, Tensor], directory: str, *,
                        dtype: torch.dtype | None = None) -> nn.Module:
    """Our model from a ``config.json`` dict and tensors under Hugging Face names (from a directory, or
    read out of a GGUF file by :mod:`.gguf`); ``directory`` names the source in errors."""
    family = FAMILIES[hf["model_type"]]
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
def export_hf(model: nn.Module, path: str | os.PathLike, *, overwrite: bool = False, tokenizer=None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``generation_config.json``) that ``transformers``
    (and :func:`load_hf_model`) load; with ``tokenizer`` also ``tokenizer.json`` + ``tokenizer_config.json``
    (special tokens, chat template), so ``AutoTokenizer`` + ``generate`` work on the directory alone.

    Refuses to write into an existing non-empty directory unless ``overwrite``; files are written to a
    temporary name and renamed, so an interrupted export never leaves a half-written model.
    """
    from safetensors.torch import save_file

    cfg: ModelConfig = model.cfg
    family = family_of(cfg)
    hf_config = hf_config_from_model(cfg, family)
    directory = Path(path)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} exists and is not empty; pass overwrite=True or choose a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    prefix = {"gpt2": "transformer.", "bert": ""}.get(family, "model.")
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
    stop_ids = list(getattr(tokenizer, "stop_ids", []) or [])
    if tokenizer is not None and cfg.eos_token_id is None and getattr(tokenizer, "eos_id", None) is not None:
        hf_config["eos_token_id"] = tokenizer.eos_id  # a model trained here: its tokenizer's end of text
    atomic_write_text(directory / "config.json", json.dumps(hf_config, indent=2))
    if family != "bert":
        generation = generation_config(cfg, stop_ids)
        if generation["eos_token_id"] is None:
            generation["eos_token_id"] = hf_config.get("eos_token_id")
        atomic_write_text(directory / "generation_config.json", json.dumps(generation, indent=2))
    if tokenizer is not None:
        tokenizer.save(directory / "tokenizer.json")  # + tokenizer_config.json
    return directory
