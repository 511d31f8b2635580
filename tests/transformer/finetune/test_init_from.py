"""init_from a Hugging Face directory builds the checkpoint's own architecture: logits equal transformers'
with no model override, for every supported family; a contradicting override is refused by name."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformer.training.config import load_config  # noqa: E402
from transformer.training.lm_task import LanguageModelTask  # noqa: E402
from transformer.training.weights import load_weights  # noqa: E402
from transformer.transformer_model import build_model  # noqa: E402

from .helpers import make_tokenizer  # noqa: E402

V = 259  # make_tokenizer's vocabulary


def _families():
    T = transformers
    common = dict(vocab_size=V, max_position_embeddings=128)
    llama = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, **common)
    return {
        "llama2": lambda: T.LlamaForCausalLM(T.LlamaConfig(**llama, rms_norm_eps=1e-5)),
        "llama3.2-rope-scaling": lambda: T.LlamaForCausalLM(T.LlamaConfig(**llama, tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16})),
        "smollm-theta": lambda: T.LlamaForCausalLM(T.LlamaConfig(**dict(llama, num_attention_heads=6, hidden_size=48,
                                                                             num_key_value_heads=2), tie_word_embeddings=True,
                                                                  rope_theta=100000.0)),
        "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**llama, sliding_window=8, rope_theta=1e6)),
        "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**llama, tie_word_embeddings=True, rope_theta=1e6)),
        "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**llama, head_dim=24, rope_theta=1e6, rms_norm_eps=1e-6)),
        "phi3": lambda: T.Phi3ForCausalLM(T.Phi3Config(**llama, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0)),
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    }


def _save(name, tmp_path):
    torch.manual_seed(0)
    model = _families()[name]().eval()
    with torch.no_grad():  # random norms and biases too, so a mapping that mixes them up cannot pass
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    directory = tmp_path / name
    model.save_pretrained(directory)
    make_tokenizer(directory)
    return directory, model


@pytest.mark.parametrize("name", list(_families()))
def test_init_from_with_no_model_overrides_reproduces_transformers(name, tmp_path):
    directory, reference = _save(name, tmp_path)
    cfg = load_config(None, [f"init_from={directory}"])  # the default run config: a 128-wide toy model
    LanguageModelTask().resolve_init(cfg, None)
    assert cfg.data.tokenizer == str(directory)
    model = build_model(cfg.model).eval()
    report = load_weights(model, cfg.init_from, strict=True)
    assert report.clean and not report.reinitialised
    ids = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(1))  # past llama3's original 16
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)


def test_a_contradicting_override_is_refused_and_deliberate_changes_are_kept(tmp_path):
    directory, _ = _save("llama3.2-rope-scaling", tmp_path)
    cfg = load_config(None, [f"init_from={directory}", "model.attention.rope_theta=10000"])
    with pytest.raises(ValueError, match=r"model.attention.rope_theta=10000.0 \(the init_from model has 500000.0\) contradicts"):
        LanguageModelTask().resolve_init(cfg, None)
    cfg = load_config(None, [f"init_from={directory}", "model.embed_dim=128", "model.num_layers=6"])
    with pytest.raises(ValueError, match=r"model.embed_dim=128 \(the init_from model has 64\).*also: model.num_layers=6"):
        LanguageModelTask().resolve_init(cfg, None)
    cfg = load_config(None, [f"init_from={directory}", "model.dropout=0.1", "model.attention.num_kv_heads=1",
                             "model.attention.type=mqa", "model.embed_dim=64"])  # the same value is no contradiction
    task = LanguageModelTask()
    task.resolve_init(cfg, None)
    assert (cfg.model.dropout, cfg.model.attention.type, cfg.model.embed_dim, cfg.model.attention.rope_theta) == (0.1, "mqa", 64, 500000.0)
    assert any("dropout: 0.0 -> 0.1" in note for note in task.init_notes)
    assert any("attention.rope_scaling='llama3'" in note for note in task.init_notes)
    model = build_model(cfg.model)
    report = load_weights(model, cfg.init_from)
    assert len(report.converted) == 2  # key/value heads pooled 2 -> 1 in each block


def test_unsupported_architectures_and_tokenizers_without_eos_are_named(tmp_path):
    import json

    from transformer.data.tokenizer import load_tokenizer
    from transformer.training.init_source import source_model_config

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    with pytest.raises(ValueError, match=r"model_type='mamba' is not supported \(MambaForCausalLM\); supported: llama, "
                                         r"mistral, qwen2, qwen3, phi3, gpt2, bert"):
        source_model_config(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                                                           "num_attention_heads": 2, "num_hidden_layers": 1,
                                                           "intermediate_size": 8, "rope_scaling": {"rope_type": "yarn", "factor": 4}}))
    with pytest.raises(ValueError, match=r"rope type 'yarn' is not supported \(supported: default, linear, llama3\)"):
        source_model_config(tmp_path / "m")
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.add_special_tokens(["<pad>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"no end-of-text token .*its special tokens: \['<pad>'\]\); set data.eos_token"):
        load_tokenizer(tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path / "tokenizer.json", eos_token="<pad>").eos_id == 3


def test_llama2_style_eos_is_found_without_configuration(tmp_path):
    from tokenizers import Tokenizer, models

    from transformer.data.tokenizer import load_tokenizer

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "hi": 3}, unk_token="<unk>"))
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    assert load_tokenizer(tmp_path / "tokenizer.json").eos_id == 2  # TinyLlama / Mistral / Llama-2: </s>
