"""Parameter-efficient fine-tuning: LoRA / DoRA / QLoRA adapters on the fused projections, merging,
and the ``peft`` adapter file format. See ``inject`` for the target names."""

from .config import FinetuneConfig
from .inject import AdapterReport, adapted_modules, apply_adapters, merge_adapters, trainable_state
from .lora import AdaptedLinear

__all__ = ["AdaptedLinear", "AdapterReport", "FinetuneConfig", "adapted_modules", "apply_adapters", "merge_adapters",
           "trainable_state"]
