"""Adapters on attention types without a fused [q|k|v] projection (MLA, SwitchHead): the target names reach their
own projections, training moves only the adapters, merging equals the adapted model (also after a save and load,
which SwitchHead's aliased output projection broke), and decoding through MLA's cache still sees the adapters."""

import pytest
import torch

from transformer.adapters import FinetuneConfig, apply_adapters, merge_adapters
from transformer.adapters.lora import AdaptedLinear
from transformer.config import ModelConfig
from transformer.generation import generate
from transformer.transformer_model import build_model

MLA = {"type": "mla", "kv_lora_rank": 16, "positional": "rope"}
CASES = {
    "mla": (MLA, {"q_proj": "q", "kv_down": "kv", "kv_up": "kv", "out_proj": "o"}),
    "mla_q_latent": ({**MLA, "q_lora_rank": 12}, {"q_down": "q", "q_up": "q", "kv_down": "kv", "kv_up": "kv", "out_proj": "o"}),
    "switchhead": ({"type": "switchhead", "positional": "rope"}, {"qk_proj": "q,k", "v_experts": "v", "out_experts": "o"}),
}


def _model(attention):
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({"embed_dim": 32, "num_heads": 4, "num_layers": 2, "max_seq_len": 48, "vocab_size": 41,
                                 "attention": attention})
    return cfg, build_model(cfg)


def _adapted(report) -> dict[str, str]:
    """{"kv_up": "kv", ...} of block 0's attention from the report's ``decoder.blocks.0.attn.kv_up[kv]``."""
    out = {}
    for entry in report.modules:
        if entry.startswith("decoder.blocks.0.attn."):
            name, segments = entry.removeprefix("decoder.blocks.0.attn.").rstrip("]").split("[")
            out[name] = segments
    return out


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_default_targets_adapt_the_attention_and_merge_exactly(case, method):
    attention, expected = CASES[case]
    cfg, model = _model(attention)
    ids = torch.randint(0, 41, (2, 24), generator=torch.Generator().manual_seed(1))
    model.eval()
    before = model(ids).logits
    report = apply_adapters(model, FinetuneConfig(method=method, r=4, alpha=8))  # targets q, k, v, o
    assert _adapted(report) == expected
    torch.testing.assert_close(model(ids).logits, before)  # B = 0: the adapters start at the base
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        logits = model(ids).logits[:, :-1]
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    model.eval()
    adapted = model(ids).logits
    assert (adapted - before).abs().max() > 1e-3
    merged = merge_adapters(model)
    assert not any(isinstance(m, AdaptedLinear) for m in merged.modules())
    torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=1e-5)
    fresh = build_model(cfg).eval()
    fresh.load_state_dict(merged.state_dict())  # a merged export read back: every alias holds the merged weights
    torch.testing.assert_close(fresh(ids).logits, adapted, atol=1e-5, rtol=1e-5)


def test_mla_targets_select_the_query_or_the_key_value_path():
    for targets, expected in ((["q"], {"q_proj": "q"}), (["v"], {"kv_down": "kv", "kv_up": "kv"}),
                              (["k", "o"], {"kv_down": "kv", "kv_up": "kv", "out_proj": "o"})):
        _, model = _model(MLA)
        assert _adapted(apply_adapters(model, FinetuneConfig(method="lora", r=2, targets=targets))) == expected
    _, model = _model(MLA)
    with pytest.raises(ValueError, match=r"finetune.targets=\['qkv'\] name no projection .* it has: .*k, .*o, q, .*v"):
        apply_adapters(model, FinetuneConfig(method="lora", targets=["qkv"]))


def test_adapted_mla_decodes_through_its_cache_as_without_it():
    _, model = _model({**MLA, "mla_absorb": "always"})  # the absorbed path must not read the adapted kv_up's base
    apply_adapters(model, FinetuneConfig(method="lora", r=4, targets=["q", "v", "o"]))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AdaptedLinear):
                for b in m.lora_B.values():
                    b.copy_(torch.randn(b.shape, generator=g) * 0.3)
    model.eval()
    prompt = torch.randint(0, 41, (2, 6), generator=g)
    cached = generate(model, prompt, 12, temperature=0)
    assert torch.equal(cached, generate(model, prompt, 12, temperature=0, use_cache=False))
    merge_adapters(model)  # plain kv_up again: absorbed decoding of the merged weights gives the same tokens
    assert torch.equal(generate(model, prompt, 12, temperature=0), cached)
