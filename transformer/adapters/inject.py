"""Put adapters onto a model, take them off again (merge), and name what trains.

A target (``q``, ``k``, ``v``, ``o``, ``gate``, ``up``, ``down``, ``lm_head``, ``qkv``, ``gate_up``) is a
*segment* of one of our projections:

=========  ==========================  =============================================
target     our module                  Hugging Face module (Llama / Phi-3 / GPT-2)
=========  ==========================  =============================================
q, k, v    ``attn.qkv_proj`` rows      ``self_attn.{q,k,v}_proj``
qkv        ``attn.qkv_proj`` (all)     ``self_attn.qkv_proj`` / ``attn.c_attn``
o          ``attn.out_proj``           ``self_attn.o_proj`` / ``attn.c_proj``
gate, up   ``mlp.w_in`` halves         ``mlp.{gate,up}_proj`` (``up``: ``mlp.c_fc`` when not gated)
gate_up    ``mlp.w_in`` (all)          ``mlp.gate_up_proj``
down       ``mlp.w_out``               ``mlp.down_proj`` / ``mlp.c_proj``
lm_head    ``head``                    ``lm_head``
=========  ==========================  =============================================

Attention types without a fused ``[q|k|v]`` projection map the same names onto their own projections:

* MLA (DeepSeek-V2): ``q`` the query projection(s) (``q_proj``, or ``q_down`` and ``q_up`` with a query latent,
  as ``peft`` targets ``q_a_proj`` / ``q_b_proj``), ``k`` or ``v`` the key/value path ``kv_down`` and ``kv_up``
  (keys and values come from one shared latent, so either name adapts both projections whole, as ``peft`` would
  target ``kv_a_proj_with_mqa`` / ``kv_b_proj``), ``o`` ``out_proj``.
* SwitchHead: ``q`` and ``k`` the segments of ``qk_proj``, ``v`` the value experts, ``o`` the output experts
  (the routers stay frozen).

After :func:`apply_adapters` only adapter parameters require gradients, and the fused fast paths of
``fused_ops`` (which read ``weight`` directly) no longer apply to the adapted modules: they check for a
plain ``nn.Linear`` and otherwise call the module, so an adapter is never bypassed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .config import FinetuneConfig
from .lora import AdaptedLinear
from .quant import is_quantized, quantize_linear, require_torchao


@dataclass
class AdapterReport:
    modules: list[str] = field(default_factory=list)  # "decoder.blocks.0.attn.qkv_proj[q,v]"
    trainable: int = 0
    total: int = 0
    quantized: list[str] = field(default_factory=list)

    def format(self, method: str) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        text = (f"finetune.method={method}: adapters on {len(self.modules)} projection(s); "
                f"{self.trainable:,} trainable of {self.total:,} parameters ({share:.2f}%)")
        if self.quantized:
            text += f"; {len(self.quantized)} base weight(s) in NF4"
        return text


def segments_of(path: str, module: nn.Linear, model: nn.Module) -> list[tuple[str, int]] | None:
    """The named output segments of the projection at ``path`` (None: not an adaptable projection)."""
    leaf = path.rsplit(".", 1)[-1]
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    if leaf == "qkv_proj" and hasattr(parent, "q_size"):
        return [("q", parent.q_size), ("k", parent.kv_size), ("v", parent.kv_size)]
    if leaf == "out_proj" and hasattr(parent, "q_size"):
        return [("o", module.out_features)]
    if leaf == "w_in" and hasattr(parent, "gated"):
        half = module.out_features // 2
        return [("gate", half), ("up", half)] if parent.gated else [("up", module.out_features)]
    if leaf == "w_out" and hasattr(parent, "gated"):
        return [("down", module.out_features)]
    if path == "head":
        return [("lm_head", module.out_features)]
    if hasattr(parent, "kv_lora_rank"):  # MLA
        name = {"q_proj": "q", "q_down": "q", "q_up": "q", "kv_down": "kv", "kv_up": "kv", "out_proj": "o"}.get(leaf)
        return None if name is None else [(name, module.out_features)]
    if hasattr(parent, "v_experts"):  # SwitchHead
        if leaf == "qk_proj":
            return [("q", module.out_features // 2), ("k", module.out_features // 2)]
        name = {"v_experts": "v", "out_experts": "o"}.get(leaf)
        return None if name is None else [(name, module.out_features)]
    return None


def _block_index(path: str) -> int | None:
    parts = path.split(".")
    return int(parts[parts.index("blocks") + 1]) if "blocks" in parts else None


def _wanted(segments: list[tuple[str, int]], targets: list[str]) -> list[str]:
    names = [n for n, _ in segments]
    if "qkv" in targets and names == ["q", "k", "v"]:
        return ["qkv"]
    if "gate_up" in targets and names == ["gate", "up"]:
        return ["gate_up"]
    if names == ["kv"]:  # MLA's shared key/value latent path: k or v adapts it
        return ["kv"] if {"k", "v"} & set(targets) else []
    return [n for n in names if n in targets]


def _replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at ``path``, and under every other name its parent gives the same module (SwitchHead's
    ``out_proj`` is its ``out_experts``): a stale alias would keep running, and saving, the old weights."""
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, leaf)
    for name, child in list(parent._modules.items()):
        if child is old:
            setattr(parent, name, new)


def apply_adapters(model: nn.Module, cfg: FinetuneConfig) -> AdapterReport:
    """Wrap the targeted projections in :class:`AdaptedLinear` and freeze everything else (in place).

    ``qlora`` also stores every frozen projection's weight in NF4 (adapted or not, as in the paper),
    keeping embeddings, norms and the head in full precision. Raises a one-line error when the targets
    name no module of this model, listing the projections it has.
    """
    if not cfg.adapters:
        raise ValueError("apply_adapters needs finetune.method lora, dora or qlora")
    if cfg.method == "qlora":
        require_torchao()
    report = AdapterReport()
    layers = None if cfg.layers is None else set(cfg.layers)
    available: set[str] = set()
    plan = []
    for path, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        segments = segments_of(path, module, model)
        if segments is None:
            continue
        names = [n for n, _ in segments]
        available.update(names)
        available.update({"qkv"} if names == ["q", "k", "v"] else {"gate_up"} if names == ["gate", "up"] else
                         {"k", "v"} if names == ["kv"] else set())
        block = _block_index(path)
        wanted = _wanted(segments, cfg.targets)
        if layers is not None and block is not None and block not in layers:
            wanted = []
        plan.append((path, module, segments, wanted))
    if not any(w for *_, w in plan):
        missing = [t for t in cfg.targets if t not in available]
        where = f" in layers {sorted(layers)}" if layers is not None else ""
        raise ValueError(f"finetune.targets={cfg.targets} name no projection of this model{where} "
                         f"({', '.join(missing) or 'none'} not found); it has: {', '.join(sorted(available))}")
    if layers is not None:
        depth = max((b for p, *_ in plan if (b := _block_index(p)) is not None), default=-1) + 1
        beyond = sorted(i for i in layers if i >= depth)
        if beyond:
            raise ValueError(f"finetune.layers={sorted(layers)}: the model has blocks 0..{depth - 1} ({beyond} do not exist)")
    for p in model.parameters():
        p.requires_grad_(False)
    for path, module, segments, wanted in plan:
        quantized = cfg.method == "qlora" and path != "head"
        if quantized:
            quantize_linear(module, cfg.quant_block_size)
            report.quantized.append(path)
        if not wanted and not quantized:
            continue  # (an NF4 weight without adapter is still wrapped: nn.Linear cannot run on it)
        if wanted in (["qkv"], ["gate_up"]):
            segments = [(wanted[0], module.out_features)]
        adapted = AdaptedLinear(module, segments, wanted, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout,
                                dora=cfg.method == "dora")
        _replace_module(model, path, adapted)
        if wanted:
            report.modules.append(f"{path}[{','.join(wanted)}]")
    seen = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            report.total += p.numel()
            report.trainable += p.numel() if p.requires_grad else 0
    return report


def adapted_modules(model: nn.Module) -> dict[str, AdaptedLinear]:
    return {path: m for path, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain ``nn.Linear`` s back (in place; NF4 bases are
    dequantised). The result is the architecture ``build_model`` makes, so every export path works."""
    import torch

    adapted_paths = set(adapted_modules(model))
    for path, adapted in adapted_modules(model).items():
        base = adapted.base
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        with torch.no_grad():
            merged.weight.copy_(adapted.merged_weight())
            if base.bias is not None:
                merged.bias.copy_(base.bias)
        _replace_module(model, path, merged)
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear) and is_quantized(module.weight):
            from .quant import dequantize

            module.weight = nn.Parameter(dequantize(module.weight).detach().clone())
    cfg = getattr(model, "cfg", None)
    if cfg is not None and cfg.tie_embeddings and "head" in adapted_paths:
        import dataclasses

        model.cfg = dataclasses.replace(cfg, tie_embeddings=False)  # a merged lm_head adapter unties the head
    return model


def trainable_state(model: nn.Module) -> dict:
    """The parameters that train (adapters, plus anything left unfrozen): what an adapter checkpoint holds."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
