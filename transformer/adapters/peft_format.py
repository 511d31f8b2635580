"""Adapters in ``peft``'s file format: ``adapter_config.json`` + ``adapter_model.safetensors`` under the
Hugging Face module names (``q_proj`` ... ``down_proj``, GPT-2's ``c_attn`` ...), both ways.

So an adapter trained here loads with ``peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
adapter_dir)``, and an adapter trained with ``peft`` elsewhere loads onto a toolkit model. Tensors are
``peft``'s: ``<module>.lora_A.weight`` ``[r, i]``, ``<module>.lora_B.weight`` ``[o_s, r]`` and, for DoRA,
``<module>.lora_magnitude_vector`` ``[o_s]``; ``peft`` itself is not needed to write or read them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import FinetuneConfig
from .inject import adapted_modules, apply_adapters

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."

# (our module leaf, segment) -> Hugging Face module under a block, per naming family
LLAMA_NAMES = {("qkv_proj", "q"): "self_attn.q_proj", ("qkv_proj", "k"): "self_attn.k_proj",
               ("qkv_proj", "v"): "self_attn.v_proj", ("qkv_proj", "qkv"): "self_attn.qkv_proj",
               ("out_proj", "o"): "self_attn.o_proj", ("w_in", "gate"): "mlp.gate_proj", ("w_in", "up"): "mlp.up_proj",
               ("w_in", "gate_up"): "mlp.gate_up_proj", ("w_out", "down"): "mlp.down_proj"}
GPT2_NAMES = {("qkv_proj", "qkv"): "attn.c_attn", ("out_proj", "o"): "attn.c_proj", ("w_in", "up"): "mlp.c_fc",
              ("w_out", "down"): "mlp.c_proj"}
BLOCK_PREFIX = {"llama": "model.layers.", "gpt2": "transformer.h."}


def _naming(model: nn.Module) -> str:
    from ..interop.hf_config import family_of

    family = family_of(model.cfg)
    if family not in ("llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2"):
        raise ValueError(f"adapters in peft format are written for decoder LMs of the Llama / Qwen / Mistral / Phi-3 "
                         f"/ GPT-2 families, not {family}")
    return "gpt2" if family == "gpt2" else "llama"


def _hf_module(path: str, segment: str, naming: str) -> str:
    """Our ``decoder.blocks.3.attn.qkv_proj`` + segment ``q`` -> ``model.layers.3.self_attn.q_proj``."""
    if path == "head":
        return "lm_head"
    parts = path.split(".")
    block = parts[parts.index("blocks") + 1]
    names = GPT2_NAMES if naming == "gpt2" else LLAMA_NAMES
    key = (parts[-1], segment)
    if key not in names:
        raise ValueError(f"an adapter on {path}[{segment}] has no {naming} module name in peft format "
                         f"(GPT-2 fuses q/k/v and has no gate: use finetune.targets qkv, o, up, down)")
    return f"{BLOCK_PREFIX[naming]}{block}.{names[key]}"


def save_peft_adapter(model: nn.Module, directory: str | Path, cfg: FinetuneConfig, *, base: str | None = None) -> Path:
    """Write the adapters of ``model`` (after :func:`apply_adapters`) as a ``peft`` LoRA / DoRA adapter."""
    from safetensors.torch import save_file

    from ..training.checkpoint_io import atomic_write_text

    naming = _naming(model)
    modules = adapted_modules(model)
    base_type = _base_model_type(base)
    split = sorted({s for m in modules.values() for s in m.adapted if s in ("q", "k", "v", "gate", "up")})
    if base_type == "phi3" and split:
        raise ValueError(f"the base is a Phi-3 model, whose q/k/v and gate/up are single modules (qkv_proj, gate_up_proj): "
                         f"adapters on {', '.join(split)} have no peft equivalent there; train with finetune.targets "
                         f"qkv / gate_up, or export merged weights (--merge)")
    if not modules:
        raise ValueError("the model has no adapters to export (finetune.method=full): export merged weights instead")
    tensors: dict[str, Tensor] = {}
    hf_targets: set[str] = set()
    layers: set[int] = set()
    for path, adapted in modules.items():
        for segment in adapted.adapted:
            name = _hf_module(path, segment, naming)
            hf_targets.add(name.split(".", 3)[-1] if name != "lm_head" else "lm_head")
            if "blocks" in path:
                layers.add(int(path.split(".")[path.split(".").index("blocks") + 1]))
            tensors[f"{PREFIX}{name}.lora_A.weight"] = adapted.lora_A[segment].detach().float().contiguous().clone()
            tensors[f"{PREFIX}{name}.lora_B.weight"] = adapted.lora_B[segment].detach().float().contiguous().clone()
            if adapted.dora:
                tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = adapted.magnitude[segment].detach().float().contiguous().clone()
    # leaf names are unambiguous for the Llama family; GPT-2's c_proj is in attn and mlp: keep the parent
    targets = sorted(t.split(".", 1)[-1] if naming == "llama" else t for t in hf_targets)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
        "target_modules": targets, "use_dora": cfg.method == "dora", "bias": "none", "fan_in_fan_out": naming == "gpt2",
        "layers_to_transform": sorted(layers) if cfg.layers is not None else None,
        "layers_pattern": ("h" if naming == "gpt2" else "layers") if cfg.layers is not None else None,
        "base_model_name_or_path": base, "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {},
    }
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{ADAPTER_WEIGHTS}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / ADAPTER_WEIGHTS)
    atomic_write_text(out / ADAPTER_CONFIG, json.dumps(config, indent=2))
    return out


def _base_model_type(base: str | None) -> str | None:
    try:
        return json.loads((Path(base) / "config.json").read_text()).get("model_type") if base else None
    except (OSError, ValueError, AttributeError):
        return None


def read_peft_config(directory: str | Path) -> dict:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a peft adapter directory")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({' '.join(str(err).split())[:120]})") from None
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type={config.get('peft_type')!r}; only LORA adapters (LoRA / DoRA) are supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise ValueError(f"{path}: {key} (per-module ranks or scales) is not supported")
    if config.get("use_rslora"):
        raise ValueError(f"{path}: use_rslora=true is not supported")
    return config


def load_peft_adapter(model: nn.Module, directory: str | Path) -> FinetuneConfig:
    """Put the ``peft`` adapter in ``directory`` onto ``model`` (a plain toolkit model with the base's
    weights); returns the :class:`FinetuneConfig` it amounts to. Every tensor must find its module."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_peft_config(directory)
    naming = _naming(model)
    state = {k: v for k, v in load_file(directory / ADAPTER_WEIGHTS).items() if ".lora_" in k}
    names = GPT2_NAMES if naming == "gpt2" else LLAMA_NAMES
    reverse = {hf: (leaf, segment) for (leaf, segment), hf in names.items()}
    block_re = re.compile(rf"^(?:{re.escape(PREFIX)})?{re.escape(BLOCK_PREFIX[naming])}(\d+)\.(.+)\.lora_(A|B|magnitude_vector)")
    placed: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, tensor in state.items():
        if re.match(rf"^(?:{re.escape(PREFIX)})?lm_head\.lora_", key):
            slot = ("head", "lm_head")
        else:
            match = block_re.match(key)
            if match is None or match.group(2) not in reverse:
                raise ValueError(f"{directory / ADAPTER_WEIGHTS}: tensor {key!r} targets no module of a {naming}-family model")
            leaf, segment = reverse[match.group(2)]
            stack = "attn" if leaf in ("qkv_proj", "out_proj") else "mlp"
            slot = (f"decoder.blocks.{match.group(1)}.{stack}.{leaf}", segment)
        kind = "magnitude" if key.endswith("lora_magnitude_vector") or "lora_magnitude_vector." in key else key.split(".lora_")[1][0]
        placed.setdefault(slot, {})[kind] = tensor
    targets = sorted({segment for _, segment in placed})
    blocks = sorted({int(p.split(".")[2]) for p, _ in placed if p != "head"})
    depth = len(model.decoder.blocks)
    cfg = FinetuneConfig(method="dora" if config.get("use_dora") else "lora", r=int(config["r"]),
                         alpha=float(config.get("lora_alpha", config["r"])), dropout=float(config.get("lora_dropout", 0.0)),
                         targets=targets, layers=None if blocks == list(range(depth)) or not blocks else blocks)
    apply_adapters(model, cfg)
    modules = adapted_modules(model)
    expected = {(p, s) for p, m in modules.items() for s in m.adapted}
    if expected != set(placed):
        missing = sorted(f"{p}[{s}]" for p, s in expected - set(placed))[:4]
        raise ValueError(f"{directory}: the adapter covers its targets unevenly across layers (no tensors for {missing}); "
                         f"only adapters with the same targets in every adapted layer load here")
    with torch.no_grad():
        for (path, segment), tensors in placed.items():
            module = modules[path]
            for kind, target in (("A", module.lora_A), ("B", module.lora_B), ("magnitude", module.magnitude)):
                if kind in tensors:
                    if target[segment].shape != tensors[kind].shape:
                        raise ValueError(f"{directory}: {path}[{segment}] lora_{kind} has shape {tuple(tensors[kind].shape)}, "
                                         f"the model needs {tuple(target[segment].shape)} (another base model?)")
                    target[segment].copy_(tensors[kind])
    return cfg
