"""The ``finetune:`` section of a run: full fine-tuning, or LoRA / DoRA / QLoRA adapters on chosen projections.

Lives with the adapter code that reads it; the run schema (``transformer.training.config.RunConfig``)
embeds it. Targets use the Hugging Face module names people know from ``peft`` (``q``, ``k``, ``v``,
``o``, ``gate``, ``up``, ``down``, ``lm_head``), mapped onto this toolkit's fused projections by
``transformer.adapters.inject``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..validation import choice, in_range, positive_int

METHODS = ("full", "lora", "dora", "qlora")
TARGETS = ("q", "k", "v", "o", "gate", "up", "down", "lm_head", "qkv", "gate_up")
ALL_LINEAR = ("q", "k", "v", "o", "gate", "up", "down")  # peft's "all-linear": every projection but the head


@dataclass
class FinetuneConfig:
    """How the model's weights are adapted."""

    method: str = "full"
    """``full`` (every parameter trains), ``lora`` (low-rank adapters, Hu et al. 2021), ``dora`` (weight-decomposed
    LoRA, Liu et al. 2024) or ``qlora`` (LoRA over a frozen NF4-quantised base, Dettmers et al. 2023)."""
    r: int = 8
    """Adapter rank."""
    alpha: float = 16.0
    """Adapter scale numerator: the update is ``alpha / r * B A``."""
    dropout: float = 0.0
    """Dropout on the adapter's input (training only)."""
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o"])
    """Projections that get adapters: ``q k v o gate up down lm_head``, ``all-linear`` (all but ``lm_head``),
    or ``qkv`` / ``gate_up`` for one adapter over a fused projection (GPT-2's ``c_attn``, Phi-3's ``qkv_proj``)."""
    layers: list[int] | None = None
    """Only these block indices get adapters (``None``: every block)."""
    quant_block_size: int = 64
    """``qlora``: weights per NF4 scale block (the QLoRA paper's 64)."""

    def __post_init__(self) -> None:
        choice("finetune.method", self.method, METHODS)
        positive_int("finetune.r", self.r)
        in_range("finetune.alpha", self.alpha, 0.0, low_open=True)
        in_range("finetune.dropout", self.dropout, 0.0, 1.0, high_open=True)
        positive_int("finetune.quant_block_size", self.quant_block_size)
        targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        if "all-linear" in targets:  # e.g. [all-linear, lm_head]
            at = targets.index("all-linear")
            targets = targets[:at] + list(ALL_LINEAR) + targets[at + 1:]
        if not targets:
            raise ValueError("finetune.targets is empty; name projections (q, k, v, o, gate, up, down, lm_head) or all-linear")
        for target in targets:
            choice("finetune.targets entry", target, TARGETS)
        if "qkv" in targets and {"q", "k", "v"} & set(targets):
            raise ValueError("finetune.targets: qkv (one adapter over the fused projection) excludes q / k / v")
        if "gate_up" in targets and {"gate", "up"} & set(targets):
            raise ValueError("finetune.targets: gate_up (one adapter over the fused projection) excludes gate / up")
        self.targets = list(dict.fromkeys(targets))
        if self.layers is not None:
            if not self.layers:
                raise ValueError("finetune.layers is empty; leave it unset for every block")
            for i in self.layers:
                in_range("finetune.layers entry", i, 0)

    @property
    def adapters(self) -> bool:
        return self.method != "full"
