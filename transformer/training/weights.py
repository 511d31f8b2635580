"""Weights into a model that may differ from the one that produced them (``init_from``).

:func:`read_weights` accepts this toolkit's training checkpoints (``.ckpt``), its exports (a directory
with ``model.safetensors`` + ``model_config.json``) and Hugging Face–format directories.
:func:`load_weights` then strips wrapper prefixes (``_orig_mod.``, ``model.``, ``module.``), converts
attention key/value heads when the head counts differ (MHA -> GQA/MQA by mean-pooling each group's
heads, as in the GQA paper's uptraining recipe; GQA -> MHA by repeating), keeps the fresh
initialisation of parameters whose shapes differ (a new head or vocabulary), optionally freezes
modules, and returns a :class:`LoadReport` of what happened to every key.

Shape legend for conversion: h query heads, n key/value heads, d head dim, D embed_dim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from . import checkpoint_keys as K
from .checkpoint_io import CheckpointError, is_sharded_checkpoint, read_checkpoint

WRAPPER_PREFIXES = ("_orig_mod.", "model.", "module.")
EXPORT_WEIGHTS, EXPORT_CONFIG, EXPORT_TOKENIZER = "model.safetensors", "model_config.json", "tokenizer.json"


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)  # attention heads pooled / repeated
    reinitialised: list[str] = field(default_factory=list)  # shape differs: fresh init kept
    missing: list[str] = field(default_factory=list)  # in the model, not in the source: fresh init kept
    unexpected: list[str] = field(default_factory=list)  # in the source, not in the model: ignored
    frozen: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.reinitialised or self.missing or self.unexpected)

    def format(self, source: str = "") -> str:
        lines = [f"init_from {source}: {len(self.loaded)} loaded, {len(self.converted)} converted, "
                 f"{len(self.reinitialised)} re-initialised, {len(self.missing)} missing, "
                 f"{len(self.unexpected)} unexpected, {len(self.frozen)} frozen"]
        for title, keys in (("converted (attention heads)", self.converted), ("re-initialised (shape differs)", self.reinitialised),
                            ("missing (fresh init)", self.missing), ("unexpected (ignored)", self.unexpected), ("frozen", self.frozen)):
            if keys:
                lines.append(f"  {title}: {', '.join(keys)}")
        return "\n".join(lines)


def read_weights(source: str | Path, *, require_task: str | None = None) -> tuple[dict[str, Tensor], ModelConfig | None, str | None]:
    """-> (state dict with our key names, the source's model config if known, tokenizer JSON if bundled).
    ``require_task``: a training checkpoint of another task (e.g. a regression one) is an error."""
    path = Path(source)
    from ..interop.gguf import is_gguf

    if is_gguf(path):  # llama.cpp's format: dequantized weights, the tokenizer from its metadata
        from ..interop.gguf import gguf_tokenizer, load_gguf

        model = load_gguf(path)
        return model.state_dict(), model.cfg, gguf_tokenizer(path).tok.to_str()
    if path.is_dir() and not is_sharded_checkpoint(path):
        if (path / EXPORT_CONFIG).is_file():
            from safetensors.torch import load_file

            if not (path / EXPORT_WEIGHTS).is_file():
                raise CheckpointError(f"{path} has {EXPORT_CONFIG} but no {EXPORT_WEIGHTS}")
            try:
                cfg = ModelConfig.from_dict(json.loads((path / EXPORT_CONFIG).read_text()))
            except (ValueError, TypeError, UnicodeDecodeError) as err:
                raise CheckpointError(f"{path / EXPORT_CONFIG} is not a valid model config ({' '.join(str(err).split())[:160]})") from None
            tok = (path / EXPORT_TOKENIZER).read_text() if (path / EXPORT_TOKENIZER).is_file() else None
            try:
                return load_file(path / EXPORT_WEIGHTS), cfg, tok
            except Exception as err:
                raise CheckpointError(f"{path / EXPORT_WEIGHTS} is corrupt or truncated ({type(err).__name__})") from None
        if (path / "config.json").is_file():
            from ..interop import load_hf_model

            model = load_hf_model(path)
            return model.state_dict(), model.cfg, None
        raise CheckpointError(f"{path} is neither an export ({EXPORT_CONFIG}) nor a Hugging Face directory (config.json)")
    checkpoint = read_checkpoint(path)
    run_cfg = checkpoint.get(K.RUN_CONFIG) or {}
    if require_task is not None and run_cfg.get("task", "lm") != require_task:
        hint = "; for regression use python -m regression.predict" if run_cfg.get("task") == "regression" else ""
        raise CheckpointError(f"{path} is a {run_cfg.get('task')!r} checkpoint, not a {require_task!r} one{hint}")
    if K.BASE_MODEL in checkpoint:  # adapters only: the weights are its base with the adapters merged in
        model = _load_adapter_checkpoint(path, checkpoint, merge=True)
        return model.state_dict(), model.cfg, checkpoint.get(K.TOKENIZER)
    cfg = ModelConfig.from_dict(run_cfg["model"]) if "model" in run_cfg else None
    return checkpoint[K.STATE_DICT], cfg, checkpoint.get(K.TOKENIZER)


def load_model(source: str | Path, *, merge: bool = True) -> tuple[nn.Module, str | None]:
    """A ready model (eval mode) and its tokenizer JSON from any source :func:`read_weights` accepts.

    An adapter checkpoint (``finetune.method`` lora / dora / qlora) holds only its adapters: the base is
    rebuilt from the ``init_from`` model it records (after checking its content hash), the adapters are put
    on, and with ``merge`` folded into plain weights (the fastest model for inference and export)."""
    from ..transformer_model import build_model

    from ..interop.gguf import is_gguf

    if (Path(source).is_file() and not is_gguf(source)) or is_sharded_checkpoint(source):
        checkpoint = read_checkpoint(source)
        if K.BASE_MODEL in checkpoint:
            return _load_adapter_checkpoint(source, checkpoint, merge=merge), checkpoint.get(K.TOKENIZER)
    state, cfg, tokenizer = read_weights(source, require_task="lm")
    if cfg is None:
        raise CheckpointError(f"{source} carries no model config; it cannot rebuild a model on its own")
    model = build_model(cfg)
    load_weights(model, state, strict=True)  # raises CheckpointError on any mismatch
    return model.eval(), tokenizer


def source_tokenizer(source: str | Path, tokenizer_json: str | None):
    """The tokenizer of a model source (a checkpoint's stored ``tokenizer_json``, a directory's ``tokenizer.json``,
    a GGUF file's vocabulary) with its ``tokenizer_config.json`` (special tokens, chat template)."""
    import tempfile

    from ..data.tokenizer import load_tokenizer
    from ..interop.gguf import gguf_tokenizer, is_gguf

    path = Path(source)
    if is_gguf(path):
        return gguf_tokenizer(path)
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise CheckpointError(f"{source} carries no tokenizer (tokenizer.json); cannot turn text into ids")
        return load_tokenizer(path)
    if tokenizer_json is None:
        raise CheckpointError(f"{source} carries no tokenizer (tokenizer.json); cannot turn text into ids")
    config = read_checkpoint(path).get(K.TOKENIZER_CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.json").write_text(tokenizer_json)
        if config is not None:
            (Path(tmp) / "tokenizer_config.json").write_text(config)
        return load_tokenizer(Path(tmp) / "tokenizer.json")


def _load_adapter_checkpoint(source, checkpoint: dict, *, merge: bool) -> nn.Module:
    from ..adapters import FinetuneConfig, apply_adapters, merge_adapters
    from ..transformer_model import build_model
    from .base_model import check_base

    run_cfg = checkpoint.get(K.RUN_CONFIG) or {}
    base = checkpoint[K.BASE_MODEL]
    check_base(base, base["path"], f"loading the adapters of {source}")
    model = build_model(ModelConfig.from_dict(run_cfg["model"]))
    load_weights(model, base["path"], strict=True)
    finetune = FinetuneConfig(**run_cfg["finetune"])
    apply_adapters(model, finetune)
    adapters = strip_prefixes(checkpoint[K.STATE_DICT])
    own = dict(model.named_parameters())
    unknown = [k for k in adapters if k not in own]
    if unknown or set(adapters) != {n for n, p in own.items() if p.requires_grad}:
        raise CheckpointError(f"{source}: its adapter tensors do not match finetune={run_cfg['finetune']} ({unknown[:3]})")
    with torch.no_grad():
        for name, value in adapters.items():
            own[name].copy_(value)
    model.finetune = finetune  # for a peft-format export
    model.base_path = base["path"]
    return (merge_adapters(model) if merge else model).eval()


def strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def convert_kv_heads(tensor: Tensor, *, num_heads: int, head_dim: int, kv_from: int, kv_to: int) -> Tensor:
    """Fused ``[q; k; v]`` projection rows (weight ``[(h + 2n) d, D]`` or bias) from ``kv_from`` to ``kv_to`` heads.

    Fewer heads: mean of the heads in each group (query head i keeps using "its" group, i // (h/n)).
    More heads: each head repeated for the heads that split its group.
    """
    q, k, v = tensor.split([num_heads * head_dim, kv_from * head_dim, kv_from * head_dim], dim=0)

    def change(x: Tensor) -> Tensor:
        x = x.reshape(kv_from, head_dim, *x.shape[1:])
        if kv_to < kv_from:
            if kv_from % kv_to:
                raise ValueError(f"cannot pool {kv_from} key/value heads into {kv_to}: {kv_to} does not divide {kv_from}")
            x = x.reshape(kv_to, kv_from // kv_to, head_dim, *x.shape[2:]).mean(1)
        else:
            if kv_to % kv_from:
                raise ValueError(f"cannot split {kv_from} key/value heads into {kv_to}: {kv_from} does not divide {kv_to}")
            x = x.repeat_interleave(kv_to // kv_from, dim=0)
        return x.reshape(kv_to * head_dim, *x.shape[2:])

    return torch.cat([q, change(k), change(v)], dim=0)


def _kv_heads_of(rows: int, num_heads: int, head_dim: int) -> int | None:
    n, rem = divmod(rows // head_dim - num_heads, 2)
    return n if rows % head_dim == 0 and rem == 0 and n >= 1 else None


def load_weights(model: nn.Module, source: str | Path | dict[str, Tensor], *, strict: bool = False,
                 freeze: list[str] | tuple[str, ...] = (), key_map: dict[str, str] | None = None) -> LoadReport:
    """Load what fits into ``model`` (see the module docstring); ``strict`` turns any mismatch into an error."""
    state = source if isinstance(source, dict) else read_weights(source)[0]
    state = strip_prefixes(state)
    for old, new in (key_map or {}).items():  # e.g. {"decoder.": "encoder."} for LM -> encoder transfer
        state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
    target = model.state_dict()
    report = LoadReport()
    merged = dict(target)
    modules = dict(model.named_modules())
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
            continue
        if value.shape != target[key].shape and key.endswith(("attn.qkv_proj.weight", "attn.qkv_proj.bias")):
            layer = modules[key.rsplit(".", 2)[0]]
            kv_from = _kv_heads_of(value.shape[0], layer.num_heads, layer.head_dim)
            if kv_from is not None and value.shape[1:] == target[key].shape[1:]:
                value = convert_kv_heads(value, num_heads=layer.num_heads, head_dim=layer.head_dim,
                                         kv_from=kv_from, kv_to=layer.num_kv_heads).to(target[key].dtype)
                report.converted.append(key)
        if value.shape != target[key].shape:
            report.reinitialised.append(key)
            continue
        merged[key] = value
        if key not in report.converted:
            report.loaded.append(key)
    tied = _tied_aliases(model)
    report.missing = [k for k in target if k not in state and tied.get(k) not in state]
    for alias, original in tied.items():  # a tied head follows its embedding
        if alias in report.missing or alias not in state:
            merged[alias] = merged[original]
    if strict and not report.clean:
        where = "" if isinstance(source, dict) else str(source)
        raise CheckpointError("strict weight loading failed (init_strict=true) — " + report.format(where).replace("\n", ";"))
    model.load_state_dict(merged, strict=True)
    if freeze:
        prefixes = tuple(freeze)
        unknown = [f for f in prefixes if not any(n == f or n.startswith(f + ".") for n, _ in model.named_parameters())]
        if unknown:
            raise ValueError(f"init_freeze names no parameters: {unknown} (module names look like 'embed', 'decoder.blocks.0')")
        for name, p in model.named_parameters():
            if any(name == f or name.startswith(f + ".") for f in prefixes):
                p.requires_grad_(False)
                report.frozen.append(name)
    return report


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: original}`` for parameters registered under two names (tied embeddings)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases
