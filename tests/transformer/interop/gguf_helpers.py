"""A tiny random Llama written as a GGUF file the way llama.cpp's converter does (tests and the README test)."""

import numpy as np
import torch

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 256, 2
# a SentencePiece-style vocabulary: specials, the 256 byte-fallback pieces, then pieces with falling scores
PIECES = ["▁", "e", "t", "h", "a", "n", "d", "o", "r", "s", "i", "l", "w", "▁t", "he", "▁the", "▁a", "an", "nd",
          "▁and", "▁w", "or", "▁wor", "ld", "▁world", "▁s", "is", "▁is", "▁h", "el", "lo", "ll", "llo", "▁hello"]
TOKENS = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + PIECES
TYPES = [2, 3, 3] + [6] * 256 + [1] * len(PIECES)
SCORES = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(PIECES))]


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf q/k row order, written from its description: per head, rows of the two
    rotary halves interleaved."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _k_quant_bytes(rows: int, cols: int, kind, seed: int) -> np.ndarray:
    """Valid Q4_K / Q6_K blocks from random bytes with small fp16 scales (gguf cannot quantize to them)."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    block, size = gguf.GGML_QUANT_SIZES[kind]
    raw = np.random.default_rng(seed).integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    if kind == Q.Q4_K:  # d, dmin (fp16) lead the block
        raw[..., 0:2] = np.frombuffer(np.float16(2e-3).tobytes(), np.uint8)
        raw[..., 2:4] = np.frombuffer(np.float16(1e-3).tobytes(), np.uint8)
    else:  # Q6_K: d (fp16) ends the block
        raw[..., -2:] = np.frombuffer(np.float16(5e-4).tobytes(), np.uint8)
    return raw.reshape(rows, -1)


QUANTIZED = {"blk.0.attn_q.weight": "Q8_0", "blk.0.attn_k.weight": "Q4_0", "blk.0.attn_v.weight": "Q4_1",
             "blk.1.attn_output.weight": "Q8_0", "blk.0.ffn_down.weight": "Q4_K", "blk.1.ffn_down.weight": "Q6_K",
             "blk.1.ffn_gate.weight": "F16"}  # GGML type names


def byte_level_vocab(texts: list[str], size: int = 320) -> dict:
    """A byte-level BPE vocabulary trained on ``texts`` with ``tokenizers``, as a GGUF ``gpt2`` tokenizer
    (tokens, merges, token types; ``<|endoftext|>`` as control token, bos = eos)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return {"model": "gpt2", "tokens": tokens, "merges": merges, "types": [3 if t == "<|endoftext|>" else 1 for t in tokens],
            "bos": tokens.index("<|endoftext|>"), "eos": tokens.index("<|endoftext|>")}


def write_tiny_llama(path, *, quantized: bool, tied: bool = False, arch: str = "llama", vocab: dict | None = None,
                     pre: str | None = None, extra: dict | None = None):
    """A random LlamaForCausalLM converted to GGUF the way llama.cpp does: HF model returned too. ``vocab``:
    a byte-level vocabulary (:func:`byte_level_vocab`, with ``tokenizer.ggml.pre`` = ``pre``) instead of the
    SentencePiece one. ``extra``: more metadata, ``{key: value}`` (ints, floats, bools, strings)."""
    import gguf
    import transformers
    from gguf import GGMLQuantizationType as Q

    torch.manual_seed(0)
    tokens = vocab["tokens"] if vocab else TOKENS
    cfg = transformers.LlamaConfig(vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=FFN,
                                   num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                                   max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                                   tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    if vocab is None:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(TOKENS)
        writer.add_token_scores(SCORES)
        writer.add_token_types(TYPES)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
    else:
        writer.add_tokenizer_model("gpt2")
        if pre:
            writer.add_tokenizer_pre(pre)
        writer.add_token_list(vocab["tokens"])
        writer.add_token_merges(vocab["merges"])
        writer.add_token_types(vocab["types"])
        writer.add_bos_token_id(vocab["bos"])
        writer.add_eos_token_id(vocab["eos"])
    for key, value in (extra or {}).items():
        add = {bool: writer.add_bool, int: writer.add_uint32, float: writer.add_float32, str: writer.add_string}[type(value)]
        add(key, value)
    writer.add_chat_template("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                             "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    block = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(LAYERS):
        names.update({f"model.layers.{i}.{k}.weight": f"blk.{i}.{v}.weight" for k, v in block.items()})
    for key, value in hf.state_dict().items():
        if key == "lm_head.weight" and tied:
            continue
        name = names[key]
        w = value.detach().numpy().astype(np.float32)
        if name.endswith("attn_q.weight"):
            w = _permute(w, HEADS)
        elif name.endswith("attn_k.weight"):
            w = _permute(w, KV_HEADS)
        kind = Q[QUANTIZED[name]] if quantized and name in QUANTIZED else None
        if kind in (Q.Q4_K, Q.Q6_K):
            writer.add_tensor(name, _k_quant_bytes(*w.shape, kind, seed=len(name)), raw_dtype=kind)
        elif kind is not None:
            writer.add_tensor(name, gguf.quants.quantize(w, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


