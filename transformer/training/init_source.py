"""``init_from``: the model a run starts from decides the architecture; the run config may only change
what is meant to change.

:func:`source_model_config` reads the architecture of any ``init_from`` source cheaply (``config.json``,
``model_config.json`` or a checkpoint's saved run config) without loading weights;
:func:`adopt_model_config` merges it with the ``model.*`` keys the user set: a key in
:data:`CHANGEABLE` is applied (a documented, deliberate change), a key equal to the source's is fine,
and any other contradicting key is an error naming it. The report lists every setting taken from the
source, so a user sees the RoPE base, norm epsilon, ... their run uses.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import ModelConfig
from . import checkpoint_keys as K
from .config import flat_dict

# model.* keys a run may set differently from its init_from model, and why each is safe:
CHANGEABLE = {
    "dropout": "regularisation only; no weight changes shape",
    "attention.dropout": "regularisation only",
    "gradient_checkpointing": "recomputation only; the same values",
    "attention.backend": "another kernel for the same attention",
    "init_std": "initialisation of new parameters only",
    "moe_aux_loss_weight": "a loss weight",
    "max_seq_len": "a shorter context, or a longer one (with attention.rope_scaling for RoPE models)",
    "attention.rope_scaling": "context extension (with max_seq_len)",
    "attention.rope_scaling_factor": "context extension",
    "attention.rope_low_freq_factor": "context extension",
    "attention.rope_high_freq_factor": "context extension",
    "attention.rope_original_max_len": "context extension",
    "attention.type": "between mha / mqa / gqa: key/value heads are converted (mean-pooled per group, as in GQA uptraining)",
    "attention.num_kv_heads": "key/value heads are converted (mean-pooled per group, as in GQA uptraining)",
    "vocab_size": "a new tokenizer: the embedding and head are re-initialised (reported)",
    "pad_token_id": "token ids, not weights",
    "bos_token_id": "token ids, not weights",
    "eos_token_id": "token ids, not weights",
}


def source_model_config(source: str | Path) -> ModelConfig | None:
    """The architecture of an ``init_from`` source, read without its weights (None: it records none)."""
    from .checkpoint_io import CheckpointError, read_checkpoint
    from .weights import EXPORT_CONFIG

    path = Path(source)
    from ..interop.gguf import gguf_model_config, is_gguf

    if is_gguf(path):
        return gguf_model_config(path)
    if path.is_dir():
        if (path / EXPORT_CONFIG).is_file():
            try:
                return ModelConfig.from_dict(json.loads((path / EXPORT_CONFIG).read_text()))
            except (ValueError, TypeError, UnicodeDecodeError) as err:
                raise CheckpointError(f"{path / EXPORT_CONFIG} is not a valid model config ({' '.join(str(err).split())[:160]})") from None
        if (path / "config.json").is_file():
            from ..interop.hf import read_hf_config

            return read_hf_config(path)[1]
        raise CheckpointError(f"{path} is neither an export ({EXPORT_CONFIG}) nor a Hugging Face directory "
                              f"(config.json); init_from needs one of them, or a checkpoint")
    checkpoint = read_checkpoint(path)
    run_cfg = checkpoint.get(K.RUN_CONFIG) or {}
    if "model" not in run_cfg:
        return None
    model = ModelConfig.from_dict(run_cfg["model"])
    if K.BASE_MODEL in checkpoint and model.tie_embeddings and "lm_head" in (run_cfg.get("finetune") or {}).get("targets", []):
        model = dataclasses.replace(model, tie_embeddings=False)  # its merged lm_head adapter unties the head
    return model


def source_tokenizer(source: str | Path, cache_root: str | Path | None = None) -> Path | None:
    """Where the source's tokenizer is: its own directory (HF / export), a checkpoint's run directory, or for a
    GGUF file the tokenizer its metadata describes, saved once under ``cache_root``."""
    path = Path(source)
    from ..interop.gguf import gguf_tokenizer_dir, is_gguf

    if is_gguf(path):
        return gguf_tokenizer_dir(path, cache_root or path.parent / ".cache")
    for directory in ((path,) if path.is_dir() else (path.parent.parent, path.parent)):
        if (directory / "tokenizer.json").is_file():
            return directory
    return None


def adopt_model_config(source: ModelConfig, run: ModelConfig, explicit: set[str]) -> tuple[ModelConfig, list[str], list[str]]:
    """-> (the model to build, the settings taken from the source, the deliberate changes applied).

    ``explicit``: the ``model.*`` keys the user set (``training.config.explicit_keys``). Raises
    ``ValueError`` naming the first key that contradicts the source.
    """
    theirs = flat_dict(source.to_dict())
    ours = flat_dict(run.to_dict())
    explicit = {k for k in explicit if k in ours}  # ("" — a whole "model:" mapping — counts by its leaves)
    changes, contradictions = {}, []
    for key in sorted(explicit):
        if ours[key] == theirs.get(key):
            continue
        convertible = key != "attention.type" or {ours[key], theirs.get(key)} <= {"mha", "mqa", "gqa"}
        if key in CHANGEABLE and convertible:
            changes[key] = ours[key]
        else:
            contradictions.append(f"model.{key}={ours[key]!r} (the init_from model has {theirs.get(key)!r})")
    if contradictions:
        raise ValueError(f"{contradictions[0]} contradicts the architecture of init_from; remove the override (the "
                         f"model is built from its checkpoint), or train from scratch without init_from"
                         + (f" — also: {'; '.join(contradictions[1:])}" if len(contradictions) > 1 else ""))
    merged = dict(theirs, **changes)
    if changes.get("attention.type") in ("mha", "mqa") and "attention.num_kv_heads" not in changes:
        merged["attention.num_kv_heads"] = None  # MHA and MQA fix their own key/value head count
    model = ModelConfig.from_dict(nest(merged))
    if ("max_seq_len" in changes and model.max_seq_len > source.max_seq_len and model.attention.positional == "rope"
            and model.attention.rope_scaling is None and source.attention.rope_scaling is None):
        from .run import warn

        warn(f"model.max_seq_len={model.max_seq_len} is beyond the {source.max_seq_len} positions the init_from model "
             f"was trained at, with no attention.rope_scaling: quality past {source.max_seq_len} tokens is not expected")
    taken = [f"{k}={v!r}" for k, v in sorted(theirs.items()) if k not in changes and ours.get(k) != v]
    applied = [f"{k}: {theirs.get(k)!r} -> {v!r}" for k, v in sorted(changes.items())]
    return model, taken, applied


def nest(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
