"""Parity with `transformers`: tiny random Llama (GQA) / Mistral / Qwen2 / GPT-2 / BERT saved with
save_pretrained, loaded here, exported back and reloaded by transformers."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformer.interop import export_hf, load_hf_model  # noqa: E402


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg)


def _llama3():
    """Llama-3.1/3.2-style: llama3 RoPE scaling, a non-default theta, tied embeddings (3.2-1B), context
    longer than the original so the scaled frequencies matter."""
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                                   rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 16})
    return transformers.LlamaForCausalLM(cfg)


def _smollm():
    """SmolLM-135M's layout (tied, GQA 3:1, theta 10000 -> 100000 in v2) at a tiny size."""
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5)
    return transformers.LlamaForCausalLM(cfg)


def _qwen3():
    cfg = transformers.Qwen3Config(vocab_size=101, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=64,
                                   tie_word_embeddings=True, rope_theta=1000000.0)
    return transformers.Qwen3ForCausalLM(cfg)


def _phi3():
    cfg = transformers.Phi3Config(vocab_size=101, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attention_dropout=0.0, sliding_window=None)
    return transformers.Phi3ForCausalLM(cfg)


def _mistral():
    cfg = transformers.MistralConfig(vocab_size=101, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=1, sliding_window=6, max_position_embeddings=64)
    return transformers.MistralForCausalLM(cfg)


def _qwen2():
    cfg = transformers.Qwen2Config(vocab_size=101, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    return transformers.Qwen2ForCausalLM(cfg)


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=101, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


def _bert():
    cfg = transformers.BertConfig(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)
    return transformers.BertModel(cfg)


def _randomise(model):
    """Random norms and biases too, so a mapping that mixes them up cannot pass."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if p.dim() > 1 else 0.5) + (1.0 if "norm" in name.lower() and p.dim() == 1 and "bias" not in name else 0.0))
    return model.eval()


def _hf_out(hf_model, ids, mask=None):
    with torch.no_grad():
        out = hf_model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _our_out(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits if model.cfg.kind == "lm" else model(ids, mask).hidden


FAMILIES = [_llama, _llama3, _smollm, _mistral, _qwen2, _qwen3, _phi3, _gpt2, _bert]
FAMILY_IDS = ["llama-gqa", "llama3-rope", "smollm", "mistral-mqa-window", "qwen2", "qwen3", "phi3", "gpt2", "bert"]


@pytest.mark.parametrize("factory", FAMILIES, ids=FAMILY_IDS)
def test_load_matches_transformers_and_export_round_trips(factory, tmp_path):
    hf_model = _randomise(factory())
    hf_model.save_pretrained(tmp_path / "hf")
    ours = load_hf_model(tmp_path / "hf").eval()
    length = min(48, ours.cfg.max_seq_len)  # past llama3's original 16 positions
    ids = torch.randint(0, 101, (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    if ours.cfg.kind == "encoder":
        mask[1, 11:] = 0  # right padding for BERT
    expected = _hf_out(hf_model, ids, mask)
    got = _our_out(ours, ids, mask)
    keep = mask.bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-4, rtol=1e-4)
    if ours.cfg.kind == "encoder":
        torch.testing.assert_close(ours(ids, mask).pooled, hf_model(input_ids=ids, attention_mask=mask).pooler_output, atol=1e-4, rtol=1e-4)

    export_hf(ours, tmp_path / "export")
    auto = transformers.AutoModel if ours.cfg.kind == "encoder" else transformers.AutoModelForCausalLM
    reloaded = auto.from_pretrained(tmp_path / "export").eval()  # Phi-3's math is Llama's: exported as llama
    torch.testing.assert_close(_hf_out(reloaded, ids, mask)[keep], expected[keep], atol=1e-4, rtol=1e-4)
    again = load_hf_model(tmp_path / "export").eval()
    torch.testing.assert_close(_our_out(again, ids, mask), got, atol=0, rtol=0)


def test_llama_config_maps_to_gqa_rope_rmsnorm_swiglu(tmp_path):
    _llama().save_pretrained(tmp_path)
    cfg = load_hf_model(tmp_path).cfg
    assert (cfg.attention.type, cfg.attention.num_kv_heads, cfg.attention.positional) == ("gqa", 2, "rope")
    assert (cfg.norm, cfg.mlp, cfg.mlp_hidden, cfg.tie_embeddings) == ("rmsnorm", "swiglu", 112, False)


def test_no_downloads_and_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_hf_model("TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ValueError, match="model_type='mamba' is not supported"):
        load_hf_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(_gpt2().config.to_dict()))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_hf_model(tmp_path)


def test_export_refuses_to_overwrite_and_names_unsupported_shapes(tmp_path):
    from transformer.config import ModelConfig
    from transformer.transformer_model import build_model

    (tmp_path / "keep.txt").write_text("user data")
    model = build_model(ModelConfig(vocab_size=50, embed_dim=32, num_heads=4, num_layers=1, norm="rmsnorm", mlp="swiglu",
                                    attention={"type": "gqa", "num_kv_heads": 2, "positional": "rope"}))
    with pytest.raises(FileExistsError, match="not empty"):
        export_hf(model, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "user data"
    mla = build_model(ModelConfig(vocab_size=50, embed_dim=32, num_heads=4, num_layers=1, attention={"type": "mla"}))
    with pytest.raises(ValueError, match="model.attention.type='mla' has no Hugging Face equivalent"):
        export_hf(mla, tmp_path / "mla")
    hybrid = build_model(ModelConfig(vocab_size=50, embed_dim=32, num_heads=4, num_layers=2, norm="rmsnorm", mlp="swiglu",
                                     attention={"positional": "rope"}, attention_layers={1: {"sliding_window": 4}}))
    with pytest.raises(ValueError, match="per-layer attention .* has no Hugging Face equivalent"):
        export_hf(hybrid, tmp_path / "hybrid")
    assert not (tmp_path / "hybrid").exists() or not any((tmp_path / "hybrid").iterdir())
