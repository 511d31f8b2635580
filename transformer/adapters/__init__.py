"""Parameter-efficient fine-tuning: LoRA / DoRA / QLoRA adapters on the fused projections, merging,
and the ``peft`` adapter file format. See ``inject`` for the target names.

Names are imported on first use, so reading the ``finetune`` schema for ``--help`` or a config error
does not load torch.
"""

from importlib import import_module

_EXPORTS = {"FinetuneConfig": ".config", "AdaptedLinear": ".lora", "AdapterReport": ".inject", "adapted_modules": ".inject",
            "apply_adapters": ".inject", "merge_adapters": ".inject", "trainable_state": ".inject"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
