"""Every model class with every attention type: shapes, losses, masks, config validation, reports."""

import math

import pytest
import torch

from transformer.config import ModelConfig
from transformer.decoder import Decoder
from transformer.encoder import Encoder
from transformer.layers import FeedForward, MixtureOfExperts, pool
from transformer.transformer_model import EncoderDecoder, EncoderModel, TransformerLM, build_model, model_report

TYPES = ("mha", "mqa", "gqa", "mla")


def tiny(kind="lm", attention_type="mha", **overrides):
    attention = {"type": attention_type, "positional": "rope"}
    if attention_type == "gqa":
        attention["num_kv_heads"] = 2
    attention.update(overrides.pop("attention", {}))
    base = dict(kind=kind, vocab_size=97, embed_dim=32, num_heads=4, num_layers=2, max_seq_len=64, pad_token_id=0)
    base.update(overrides)
    return ModelConfig(**base, attention=attention)


@pytest.mark.parametrize("attention_type", TYPES)
def test_lm_shapes_and_initial_loss_near_log_vocab(attention_type):
    model = build_model(tiny("lm", attention_type, vocab_size=512, embed_dim=64))
    assert isinstance(model, TransformerLM)
    ids, targets = torch.randint(0, 512, (4, 32)), torch.randint(0, 512, (4, 32))
    targets[:, :5] = -100
    out = model(ids, targets)
    assert out.logits.shape == (4, 32, 512) and out.num_tokens == 4 * 27
    assert abs(out.loss.item() - math.log(512)) < 0.15
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("attention_type", TYPES)
def test_encoder_model_and_encoder_decoder_shapes(attention_type):
    ids = torch.randint(1, 97, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, 6:] = 0
    enc = build_model(tiny("encoder", attention_type, pooling="mean", type_vocab_size=2, pooler_dense=True))
    assert isinstance(enc, EncoderModel)
    out = enc(ids, mask)
    assert out.hidden.shape == (3, 10, 32) and out.pooled.shape == (3, 32)
    s2s = build_model(tiny("encoder_decoder", attention_type, num_decoder_layers=3))
    assert isinstance(s2s, EncoderDecoder) and len(s2s.decoder.blocks) == 3
    targets = torch.randint(1, 97, (3, 7))
    out = s2s(ids, targets, attention_mask=mask)
    assert out.logits.shape == (3, 7, 97) and abs(out.loss.item() - math.log(97)) < 0.3
    assert torch.equal(s2s.shift_right(targets)[:, 1:], targets[:, :-1]) and (s2s.shift_right(targets)[:, 0] == 0).all()


def test_encoder_padding_changes_nothing_and_pooling_honours_mask():
    model = build_model(tiny("encoder", "gqa", pooling="mean", attention={"positional": "alibi"})).eval()
    real = torch.randint(1, 97, (1, 6))
    padded = torch.cat([real, torch.randint(1, 97, (1, 4))], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    a, b = model(real), model(padded, mask)
    torch.testing.assert_close(b.hidden[:, :6], a.hidden, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.pooled, a.pooled, atol=1e-5, rtol=1e-4)
    hidden = torch.arange(12.0).view(1, 4, 3)
    left = torch.tensor([[0, 1, 1, 1]])
    assert torch.equal(pool(hidden, left, "last"), hidden[:, 3]) and torch.equal(pool(hidden, left, "cls"), hidden[:, 0])
    assert torch.equal(pool(hidden, torch.tensor([[1, 1, 0, 0]]), "last"), hidden[:, 1])
    assert torch.allclose(pool(hidden, left, "mean"), hidden[:, 1:].mean(1))


def test_decoder_is_causal_and_stack_classes():
    cfg = tiny("lm", "mha")
    decoder, encoder = Decoder(cfg), Encoder(cfg)
    assert decoder.causal and not encoder.causal and decoder.blocks[0].cross_attn is None
    x = torch.randn(1, 8, 32, requires_grad=True)
    (decoder(x).hidden[:, 3] * torch.randn(32)).sum().backward()  # a plain sum of a LayerNorm output is constant
    assert (x.grad[:, 4:] == 0).all() and (x.grad[:, :4] != 0).any()
    cross = Decoder(cfg, cross_attention=True)
    assert cross(torch.randn(2, 5, 32), memory=torch.randn(2, 9, 32)).hidden.shape == (2, 5, 32)


@pytest.mark.parametrize("mlp", ["gelu", "gelu_tanh", "relu", "swiglu"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_blocks_selectable_by_config(mlp, norm):
    model = build_model(tiny("lm", "gqa", mlp=mlp, norm=norm, position="learned", dropout=0.1, residual_scale=0.5))
    assert model(torch.randint(0, 97, (2, 9)), torch.randint(0, 97, (2, 9))).loss.isfinite()
    block = model.decoder.blocks[0]
    assert isinstance(block.norm1, torch.nn.RMSNorm if norm == "rmsnorm" else torch.nn.LayerNorm)
    assert block.mlp.gated == (mlp == "swiglu")


def test_swiglu_default_width_matches_gelu_parameter_count():
    gelu, swiglu = ModelConfig(embed_dim=768, mlp="gelu"), ModelConfig(embed_dim=768, mlp="swiglu", mlp_multiple_of=1)
    count = lambda c: sum(p.numel() for p in FeedForward(768, c.mlp_hidden_dim, c.mlp, bias=False).parameters())
    assert abs(count(swiglu) - count(gelu)) / count(gelu) < 0.001
    assert ModelConfig(embed_dim=768, mlp="swiglu").mlp_hidden_dim % 8 == 0


def test_mixture_of_experts_routes_top_k_and_reports_aux_loss():
    moe = MixtureOfExperts(16, 32, "swiglu", num_experts=4, top_k=2, bias=False)
    x = torch.randn(3, 5, 16)
    out, aux = moe(x)
    assert out.shape == x.shape and 0.9 < aux.item() < 4.0
    # Reference: each token's output is the renormalised top-2 mix of expert outputs.
    probs = torch.softmax(moe.router(x), -1)
    w, idx = probs.topk(2, -1)
    w = w / w.sum(-1, keepdim=True)
    expected = sum(w[..., j, None] * torch.stack([moe.experts[int(e)](x[b, t]) for b, t, e in
                   [(b, t, idx[b, t, j]) for b in range(3) for t in range(5)]]).view(3, 5, 16) for j in range(2))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    lm = build_model(tiny("lm", "mha", moe_num_experts=4, moe_top_k=1))
    result = lm(torch.randint(0, 97, (2, 8)), torch.randint(0, 97, (2, 8)))
    assert result.aux_loss is not None and result.aux_loss.item() > 0


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = build_model(tiny("lm", "gqa"))
    ckpt = build_model(tiny("lm", "gqa", gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 97, (2, 12))
    for model in (plain, ckpt):
        model(ids, ids).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_config_round_trips_through_yaml(tmp_path):
    from omegaconf import OmegaConf

    cfg = tiny("lm", "mla", attention={"kv_lora_rank": 16, "q_lora_rank": 24})
    path = tmp_path / "model.yaml"
    OmegaConf.save(OmegaConf.structured(cfg), path)
    loaded = ModelConfig.from_dict(OmegaConf.to_container(OmegaConf.load(path)))
    assert loaded == cfg
    a, b = build_model(cfg), build_model(loaded)
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"norm": "batchnorm"}, r"model.norm='batchnorm' is not one of"),
        ({"mlp": "swiglo"}, r"model.mlp='swiglo' is not one of .*; did you mean 'swiglu'"),
        ({"vocab_size": 0}, r"model.vocab_size=0 must be a positive integer"),
        ({"attention": {"type": "gqa", "num_kv_heads": 3}}, r"model.attention: num_heads=4 is not divisible by num_kv_heads=3"),
        ({"attention": {"type": "sprase"}}, r"model.attention.type='sprase' is not one of .*did you mean 'sparse'"),
        ({"moe_num_experts": 2, "moe_top_k": 3}, r"model.moe_top_k=3"),
    ],
)
def test_bad_configs_name_the_field(overrides, message):
    base = dict(vocab_size=97, embed_dim=32, num_heads=4)
    base.update(overrides)
    with pytest.raises(ValueError, match=message):
        ModelConfig(**base)


def test_unknown_key_in_dict_config_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown config key model.embed_dims; did you mean model.embed_dim"):
        ModelConfig.from_dict({"embed_dims": 32})
    with pytest.raises(ValueError, match=r"model.attention.num_kv_head; did you mean model.attention.num_kv_heads"):
        ModelConfig.from_dict({"attention": {"num_kv_head": 2}})


def test_tinyllama_kv_cache_is_88_mib_for_2048_tokens_without_allocating():
    cfg = ModelConfig(vocab_size=32000, embed_dim=2048, num_heads=32, num_layers=22, max_seq_len=2048, norm="rmsnorm",
                      mlp="swiglu", mlp_hidden=5632, tie_embeddings=False, attention={"type": "gqa", "num_kv_heads": 4, "head_dim": 64, "positional": "rope"})
    with torch.device("meta"):
        model = build_model(cfg)
    assert next(model.parameters()).device.type == "meta"
    assert model.kv_cache_bytes_per_token(torch.float32) * 2048 == 88 * 2**20
    report = model_report(model, seq_len=2048)
    assert 1.09e9 < report["parameters"] < 1.11e9  # TinyLlama-1.1B
    assert report["flops_per_token"] > 6 * report["non_embedding_parameters"]


def test_sequence_longer_than_max_seq_len_is_an_error():
    model = build_model(tiny("lm", "mha", position="learned", max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len=8"):
        model(torch.randint(0, 97, (1, 9)))
