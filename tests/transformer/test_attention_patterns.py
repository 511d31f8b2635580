"""Per-layer attention: a pattern over the depth, named variants, explicit per-layer overrides, their errors, and
what they change downstream (masks per layer, rolling caches, bytes, checkpoints, YAML)."""

import json

import pytest
import torch

from transformer.attention.kv_cache import KVCache, RollingKVCache
from transformer.config import ModelConfig
from transformer.generation import generate
from transformer.transformer_model import build_model


def hybrid(**extra):
    data = dict(vocab_size=40, embed_dim=32, num_heads=4, num_layers=6, max_seq_len=32,
                attention={"type": "gqa", "num_kv_heads": 2, "positional": "rope"},
                attention_pattern=["local", "local", "global"],
                attention_variants={"local": {"sliding_window": 4, "rope_theta": 10000.0}, "global": {"rope_theta": 500000.0}})
    data.update(extra)
    return ModelConfig(**data)


def test_a_pattern_builds_the_right_layer_at_every_depth():
    cfg = hybrid(attention_layers={0: {"type": "mha"}, -1: {"type": "linear", "positional": "none"}})
    model = build_model(cfg)
    layers = [block.attn for block in model.decoder.blocks]
    assert [type(a).__name__ for a in layers] == ["MultiHeadAttention", "GroupQueryAttention", "GroupQueryAttention",
                                                  "GroupQueryAttention", "GroupQueryAttention", "LinearAttention"]
    assert [a.sliding_window for a in layers] == [4, 4, None, 4, 4, None]
    assert layers[0].num_kv_heads == 4 and layers[1].num_kv_heads == 2  # MHA fixes its own key/value heads
    assert layers[2].rotary.signature != layers[1].rotary.signature  # the global layers' RoPE base is their own
    assert [a.config.layer_index for a in layers] == list(range(6))


def test_a_hybrid_model_decodes_like_its_full_forward_with_capped_caches():
    torch.manual_seed(0)
    model = build_model(hybrid()).eval()
    ids = torch.randint(0, 40, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[0, :5] = 0  # left padding
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        caches = model.new_caches(2, 32)
        assert [type(c.self_attn) for c in caches] == [RollingKVCache, RollingKVCache, KVCache] * 2
        steps = [model(ids[:, :7], attention_mask=mask[:, :7], caches=caches).logits]
        steps += [model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], caches=caches).logits for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(steps, 1)[1], full[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat(steps, 1)[0, 5:], full[0, 5:], atol=1e-5, rtol=1e-4)
    cached = generate(model, ids[:, :10], 8, temperature=0, attention_mask=mask[:, :10])
    uncached = generate(model, ids[:, :10], 8, temperature=0, attention_mask=mask[:, :10], use_cache=False)
    assert torch.equal(cached, uncached)


def test_kv_bytes_are_summed_per_layer_with_windows_capped():
    model = build_model(hybrid())
    per_token = 2 * 2 * 8 * 4  # k and v of 2 heads of 8, fp32
    assert model.kv_cache_bytes_per_token() == 6 * per_token
    assert model.kv_cache_bytes(32) == 4 * 3 * per_token + 2 * 32 * per_token  # 4 local layers hold window - 1 tokens
    assert model.kv_cache_bytes_per_token_at(32) == model.kv_cache_bytes(32) / 32


def test_layer_overrides_survive_a_checkpoint_round_trip():
    cfg = hybrid(attention_layers={2: {"num_kv_heads": 1}})
    restored = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))  # JSON turns the index keys into strings
    assert restored.attention_layers == {2: {"num_kv_heads": 1}}
    assert build_model(restored).decoder.blocks[2].attn.num_kv_heads == 1


def test_a_pattern_from_yaml_and_overrides(tmp_path):
    from transformer.training.config import load_config

    path = tmp_path / "hybrid.yaml"
    path.write_text("model:\n  num_layers: 4\n  attention_pattern: [local, global]\n"
                    "  attention_variants:\n    local: {sliding_window: 8}\n    global: {}\n")
    cfg = load_config(path, ["model.attention_variants.global.type=differential", "model.attention_layers.0.type=mqa"])
    model = build_model(cfg.model)
    assert [type(b.attn).__name__ for b in model.decoder.blocks] == [
        "MultiQueryAttention", "DifferentialAttention", "MultiHeadAttention", "DifferentialAttention"]
    assert model.decoder.blocks[2].attn.sliding_window == 8


@pytest.mark.parametrize("extra,message", [
    ({"attention_pattern": ["local", "glob"]}, r"attention_pattern names 'glob', which model.attention_variants does not define"),
    ({"attention_variants": {"local": {"slidng_window": 4}, "global": {}}},
     r"unknown config key model.attention_variants.local.slidng_window; did you mean model.attention_variants.local.sliding_window"),
    ({"attention_variants": {"local": {"sliding_window": 0}, "global": {}}}, r"model.attention_variants.local \(layer 0\).*sliding_window=0 must be a positive integer"),
    ({"attention_layers": {9: {"type": "mha"}}}, r"model.attention_layers.9: layer 9 is outside the 6 layers"),
    ({"attention_layers": {"x": {"type": "mha"}}}, r"model.attention_layers key 'x' must be a layer index"),
    ({"attention_layers": {1: {"type": "sparse", "sparse_top_k": 64}}}, r"sparse_top_k=64 \(layer 1\) is larger than model.max_seq_len=32"),
    ({"attention_layers": {1: {"type": "neighborhood"}}}, r"needs neighborhood_size"),
    ({"attention_pattern": "local"}, r"must be a non-empty list of names"),
])
def test_bad_patterns_name_the_key_and_value(extra, message):
    with pytest.raises(ValueError, match=message):
        build_model(hybrid(**extra))


def test_an_encoder_decoder_rejects_a_default_type_without_cross_attention():
    cfg = ModelConfig(kind="encoder_decoder", vocab_size=40, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=16,
                      attention={"type": "linear"})
    with pytest.raises(ValueError, match="model.attention.type='linear' has no cross-attention"):
        build_model(cfg)
    ok = ModelConfig(kind="encoder_decoder", vocab_size=40, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=16,
                     attention_pattern=["lin", "soft"], attention_variants={"lin": {"type": "linear"}, "soft": {}})
    model = build_model(ok)
    assert type(model.encoder.blocks[0].attn).__name__ == "LinearAttention"
    assert type(model.decoder.blocks[0].cross_attn).__name__ == "MultiHeadAttention"


def test_the_run_summary_names_each_layer_kind():
    from transformer.training.lm_task import _attention_summary

    assert _attention_summary(build_model(hybrid())) == "gqa window 4 x2, gqa, gqa window 4 x2, gqa"
    assert _attention_summary(build_model(ModelConfig(num_layers=2))) == "mha"
