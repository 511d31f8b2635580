"""GGUF import: a tiny random Llama written with ``gguf.GGUFWriter`` (F32 and quantized tensors) loads with the
logits and token ids ``transformers`` gets from the same file; bad files give one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from transformer.interop.gguf import GGUFError, gguf_model_config, gguf_tokenizer, load_gguf  # noqa: E402

from .gguf_helpers import HEADS, HIDDEN, KV_HEADS, TOKENS, _permute, byte_level_vocab, write_tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("quantized", [False, True])
def test_gguf_logits_match_transformers_on_the_same_file(tmp_path, quantized):
    path = tmp_path / "tiny.gguf"
    hf_source = write_tiny_llama(path, quantized=quantized)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32).eval()
    ours = load_gguf(path)
    ids = torch.randint(3, len(TOKENS), (2, 12))
    with torch.no_grad():
        want = reference(ids).logits
        got = ours(ids).logits
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        if not quantized:  # F32 file: the original weights exactly (q/k rows un-permuted)
            torch.testing.assert_close(got, hf_source(ids).logits, atol=1e-5, rtol=1e-5)
    assert ours.cfg.attention.num_kv_heads == KV_HEADS and gguf_model_config(path) == ours.cfg


def test_quantized_blocks_dequantize_as_the_format_says(tmp_path):
    """Q8_0 (fp16 scale + 32 int8) and Q4_0 (fp16 scale + 16 bytes of 4-bit codes - 8) decoded by hand."""
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path, quantized=True)
    reader = gguf.GGUFReader(path)
    raw = {t.name: np.asarray(t.data) for t in reader.tensors}
    ours = load_gguf(path).state_dict()
    q8 = raw["blk.0.attn_q.weight"].reshape(-1, 34)
    scale = q8[:, :2].copy().view(np.float16).astype(np.float32)
    by_hand = (q8[:, 2:].view(np.int8).astype(np.float32) * scale).reshape(HIDDEN, HIDDEN)
    # our fused qkv holds q first; undo our un-permutation by permuting back to the file's order
    torch.testing.assert_close(torch.from_numpy(_permute(ours["decoder.blocks.0.attn.qkv_proj.weight"][:HIDDEN].numpy(), HEADS)),
                               torch.from_numpy(by_hand))
    q4 = raw["blk.0.attn_k.weight"].reshape(-1, 18)
    scale = q4[:, :2].copy().view(np.float16).astype(np.float32)
    codes = np.concatenate([q4[:, 2:] & 0xF, q4[:, 2:] >> 4], axis=1).astype(np.float32) - 8  # low nibbles first
    k_rows = KV_HEADS * HIDDEN // HEADS
    by_hand = (codes * scale).reshape(k_rows, HIDDEN)
    got = ours["decoder.blocks.0.attn.qkv_proj.weight"][HIDDEN : HIDDEN + k_rows].numpy()
    torch.testing.assert_close(torch.from_numpy(_permute(got, KV_HEADS)), torch.from_numpy(by_hand))


def test_gguf_tokenizer_ids_equal_transformers(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path, quantized=False, tied=True)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    ours = gguf_tokenizer(path)
    for text in ["hello world", "the world is hello", " and the", "Ünïcode ✓ and bytes", "twoxyz  spaces\nnew line", ""]:
        assert ours.encode(text) == reference(text)["input_ids"], text
        assert ours.decode(ours.encode(text), skip_special_tokens=True) == reference.decode(reference(text)["input_ids"],
                                                                                               skip_special_tokens=True)
    assert ours.eos_id == 2 and ours.bos_id == 1 and "messages" in ours.chat_template
    assert load_gguf(path).cfg.tie_embeddings


@pytest.mark.parametrize("pre", [None, "llama-bpe", "qwen2"])
def test_byte_level_gguf_tokenizer_ids_equal_transformers(tmp_path, pre):
    """SmolLM / Llama-3 / Qwen-style files: byte-level BPE with merges and the pre-tokenizer split they name."""
    texts = ["Hello world, it's 2024 and the numbers 123456 split.", "  two spaces\n\nnew lines\tand tabs",
             "Ünïcode ✓ émoji 🙂 and CamelCaseWords"] * 20
    path = tmp_path / "bpe.gguf"
    write_tiny_llama(path, quantized=False, vocab=byte_level_vocab(texts), pre=pre)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="bpe.gguf")
    ours = gguf_tokenizer(path)
    for text in texts[:3] + ["<|endoftext|>after the end", "it'll be 99999 ms"]:
        assert ours.encode(text) == reference(text)["input_ids"], (pre, text)
        assert ours.decode(ours.encode(text)) == reference.decode(reference(text)["input_ids"])
    assert ours.eos_id == ours.tok.token_to_id("<|endoftext|>")


def test_mistral_window_and_no_space_prefix_are_read(tmp_path):
    path = tmp_path / "mistral.gguf"
    write_tiny_llama(path, quantized=False, arch="mistral",
                     extra={"mistral.attention.sliding_window": 8, "tokenizer.ggml.add_space_prefix": False})
    assert gguf_model_config(path).attention.sliding_window == 8
    tokenizer = gguf_tokenizer(path)
    assert tokenizer.tok.id_to_token(tokenizer.encode("hello")[1]) != "▁hello"  # no dummy prefix: "hello" is not "▁hello"
    assert tokenizer.decode(tokenizer.encode("hello world"), skip_special_tokens=True) == "hello world"
    assert load_gguf(path).cfg.attention.sliding_window == 8


def test_bad_gguf_files_are_one_line_errors(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path, quantized=True)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(GGUFError, match=r"cut.gguf is truncated"):
        load_gguf(truncated)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(path.read_bytes()[:40])
    with pytest.raises(GGUFError, match=r"header.gguf is truncated or corrupt"):
        load_gguf(header_only)
    other = tmp_path / "other.gguf"
    write_tiny_llama(other, quantized=False, arch="qwen2")
    with pytest.raises(GGUFError, match=r"architecture 'qwen2' is not supported.*llama"):
        load_gguf(other)
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_text(json.dumps({"not": "gguf"}))
    with pytest.raises(GGUFError, match="not a GGUF file"):
        load_gguf(not_gguf)
    for error in (GGUFError,):
        assert "\n" not in str(pytest.raises(error, load_gguf, truncated).value)



def test_gguf_as_init_from_sample_and_hf_export(tmp_path, capsys):
    """A GGUF file works where a Hugging Face directory does: LoRA fine-tuning from it (the adapter checkpoint
    rebuilds its base from the file), sampling, and --hf export that transformers loads with the same logits."""
    from transformer.cli import run
    from transformer.export import export_checkpoint
    from transformer.sample import sample
    from transformer.training.config import load_config
    from transformer.training.weights import load_model

    from ..finetune.helpers import write_chat_jsonl

    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path, quantized=True)
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=24)
    overrides = {"init_from": path, "data.path": data, "out_dir": tmp_path / "runs", "data.block_size": 64,
                 "data.batch_size": 4, "data.val_fraction": 0.2, "finetune.r": 4, "trainer.max_steps": 4,
                 "trainer.val_check_interval": 2, "trainer.accelerator": "cpu", "trainer.progress_bar": "false",
                 "optim.warmup_steps": 1}
    done = run(load_config(ROOT / "configs" / "finetune" / "lora.yaml", [f"{k}={v}" for k, v in overrides.items()]))
    assert "init_from" in capsys.readouterr().out
    tuned, _ = load_model(done.run_dir / "checkpoints" / "last.ckpt")  # base rebuilt from the GGUF file + adapters
    ids = torch.randint(3, len(TOKENS), (1, 10))
    base = load_gguf(path)
    with torch.no_grad():
        assert tuned(ids).logits.shape == base(ids).logits.shape
    assert isinstance(sample(path, "hello world", max_new_tokens=5, temperature=0), str)
    out = export_checkpoint(path, tmp_path / "export", hf=True)
    reference = transformers.AutoModelForCausalLM.from_pretrained(out / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(reference(ids).logits, base(ids).logits, atol=1e-5, rtol=1e-5)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out / "hf")
    assert hf_tok("hello world")["input_ids"] == gguf_tokenizer(path).encode("hello world")
