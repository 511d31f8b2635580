"""GGUF files (llama.cpp's format) in: llama-architecture models and their tokenizers.

    model = load_gguf("tinyllama-1.1b-chat.Q4_K_M.gguf")        # our TransformerLM, fp32 weights
    tokenizer = gguf_tokenizer("tinyllama-1.1b-chat.Q4_K_M.gguf")

and anywhere a model path is taken: ``init_from=model.gguf`` (full fine-tuning or LoRA / DoRA / QLoRA),
``python -m transformer.sample model.gguf``, ``python -m transformer.export model.gguf out --hf``.

What is read, with the ``gguf`` package (the ``[gguf]`` extra), never by hand:

- **metadata** -> a Llama ``config.json`` dict (``{arch}.block_count``, ``embedding_length``, ``feed_forward_length``,
  ``attention.head_count[_kv]``, ``attention.layer_norm_rms_epsilon``, ``rope.freq_base``, linear
  ``rope.scaling``, ``attention.sliding_window``, ``context_length``), then the same config reader and parameter rules as a Hugging Face
  directory (:func:`~.hf.model_from_hf_state`), so the two cannot drift apart;
- **tensors** -> dequantized to fp32 with ``gguf.quants.dequantize`` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
  Q5_1 and the K-quants Q2_K ... Q6_K); llama.cpp stores ``attn_q`` / ``attn_k`` rows permuted for its
  rotary layout (``convert_hf_to_gguf.py``: per head, the two rotary halves interleaved), which is undone here;
- **the tokenizer** -> a ``tokenizers`` tokenizer: ``tokenizer.ggml.model = llama`` is SentencePiece BPE
  (byte fallback, ``▁`` for spaces, merges from the file or derived from the piece scores), ``gpt2`` is
  byte-level BPE with the pre-tokenizer split its ``tokenizer.ggml.pre`` names; control tokens are special,
  user-defined tokens are added; BOS / EOS / chat template go to ``tokenizer_config.json``.

Other architectures (qwen2, gemma, phi3, ...) and Llama-3.1's ``rope_freqs`` scaling tensor are refused
with a one-line error rather than loaded wrong.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

MAGIC = b"GGUF"
ARCHITECTURES = ("llama", "mistral")  # llama.cpp writes Llama, Mistral, TinyLlama, SmolLM(-Llama) as these
# Split patterns of the byte-level vocabularies by tokenizer.ggml.pre (the models' own tokenizer.json regexes).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
                        "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT,
                        "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types


class GGUFError(ValueError):
    """A GGUF file this toolkit cannot read; the message names the file and the problem."""


def is_gguf(path: str | os.PathLike) -> bool:
    """A file that starts with the GGUF magic (whatever its name ends with)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def _reader(path: str | os.PathLike):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ImportError("reading GGUF files needs the gguf package: pip install 'transformer-toolkit[gguf]' "
                          "(or pip install gguf)") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    if not is_gguf(path):
        raise GGUFError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
    try:
        return GGUFReader(path)
    except Exception as err:  # the reader fails deep in numpy on short files
        raise GGUFError(f"{path} is truncated or corrupt: the GGUF reader stopped with "
                        f"{type(err).__name__}: {' '.join(str(err).split())[:160]}") from None


def _metadata(reader) -> dict:
    """Every key/value field as a plain Python value (strings, numbers, lists)."""
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        value = field.contents()
        out[name] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


def _hf_config(meta: dict, tensor_names: set[str], where: str) -> dict:
    """A Llama ``config.json`` dict from the GGUF metadata."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{where}: architecture {arch!r} is not supported; this toolkit reads llama-architecture GGUF "
                        f"files ({', '.join(ARCHITECTURES)})")
    if "rope_freqs.weight" in tensor_names:
        raise GGUFError(f"{where}: a rope_freqs tensor (Llama-3.1-style RoPE scaling) is not supported; use the model's "
                        f"Hugging Face directory instead")

    def key(name, default=None, required=True):
        full = f"{arch}.{name}"
        if full not in meta and required and default is None:
            raise GGUFError(f"{where}: metadata {full!r} is missing; the file is not a complete {arch} model")
        return meta.get(full, default)

    tokens = meta.get("tokenizer.ggml.tokens")
    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    hf = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
        "vocab_size": int(key("vocab_size", len(tokens) if tokens else None)),
        "hidden_size": hidden, "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")), "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "max_position_embeddings": int(key("context_length", 2048)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
    }
    window = key("attention.sliding_window", required=False)
    if window:
        hf["sliding_window"] = int(window)  # Mistral v0.1
    head_dim = key("attention.key_length", required=False) or key("rope.dimension_count", required=False)
    if head_dim and int(head_dim) != hidden // heads:
        hf["head_dim"] = int(head_dim)
    scaling = key("rope.scaling.type", required=False)
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise GGUFError(f"{where}: rope.scaling.type {scaling!r} is not supported (linear is)")
        hf["rope_scaling"] = {"rope_type": "linear", "factor": float(key("rope.scaling.factor"))}
    for ours, theirs in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{theirs}" in meta:
            hf[ours] = int(meta[f"tokenizer.ggml.{theirs}"])
    return hf


# GGUF tensor name (after "blk.N.") -> Hugging Face name (after "model.layers.N.")
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _hf_name(name: str, where: str) -> str:
    stem, _, kind = name.rpartition(".")
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{kind}"
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{kind}"
    raise GGUFError(f"{where}: tensor {name!r} is not part of a llama model this toolkit reads")


def unpermute_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order: it stores each head's rows as ``[r0, r_{d/2}, r1, r_{d/2+1}, ...]``
    (the two rotary halves interleaved, for its interleaved RoPE); Hugging Face / this toolkit keep the
    halves apart. ``weight`` ``[heads * d, ...]`` (a bias too)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _dequantize(tensor, where: str) -> torch.Tensor:
    from gguf import GGML_QUANT_SIZES
    from gguf.quants import dequantize

    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # GGUF lists the fastest dimension first
    block, type_bytes = GGML_QUANT_SIZES[tensor.tensor_type]
    expected = int(np.prod(shape)) // block * type_bytes
    if tensor.data.nbytes != expected:
        raise GGUFError(f"{where} is truncated: tensor {tensor.name!r} has {tensor.data.nbytes} of its {expected} bytes")
    try:
        values = dequantize(np.asarray(tensor.data), tensor.tensor_type)
    except NotImplementedError:
        raise GGUFError(f"{where}: tensor {tensor.name!r} is stored as {tensor.tensor_type.name}, which the gguf package "
                        f"cannot dequantize") from None
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))  # a copy: the file's memory map is read-only


def read_gguf(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """-> (a Llama ``config.json`` dict, fp32 tensors under Hugging Face names, q/k rows un-permuted)."""
    reader = _reader(path)
    where = str(path)
    meta = _metadata(reader)
    names = {t.name for t in reader.tensors}
    hf = _hf_config(meta, names, where)
    state = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name, where)
        value = _dequantize(tensor, where)
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            value = unpermute_rotary_rows(value, hf["num_attention_heads"])
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            value = unpermute_rotary_rows(value, hf["num_key_value_heads"])
        state[name] = value
    return hf, state


def gguf_model_config(path: str | os.PathLike):
    """Our :class:`~transformer.config.ModelConfig` of a GGUF file, from its metadata alone."""
    from .hf_config import model_config_from_hf

    reader = _reader(path)
    return model_config_from_hf(_hf_config(_metadata(reader), {t.name for t in reader.tensors}, str(path)), str(path))


def load_gguf(path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> nn.Module:
    """Our model with the GGUF file's weights (dequantized to fp32, or ``dtype``), in eval mode."""
    from .hf import model_from_hf_state
    from .hf_config import model_config_from_hf

    hf, state = read_gguf(path)
    model = model_from_hf_state(hf, model_config_from_hf(hf, str(path)), state, str(path), dtype=dtype)
    return model.eval()


# ------------------------------------------------------------------------------------ tokenizer
def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges implied by the vocabulary: every split of a piece into two pieces of the
    vocabulary is a merge, ranked by the merged piece's score (higher first), then longer left piece first."""
    index = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for piece, score in zip(tokens, scores):
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in index and piece[k:] in index]
        splits.sort(key=lambda pair: (index[pair[0]], index[pair[1]]))
        ranked += [(score, len(left), len(right), left, right) for left, right in splits]
    ranked.sort(key=lambda m: m[:3], reverse=True)  # stable: equal keys keep the vocabulary order
    return [(left, right) for *_, left, right in ranked]


def gguf_tokenizer(path: str | os.PathLike):
    """The file's tokenizer as this toolkit's :class:`~transformer.data.tokenizer.BPETokenizer`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    from ..data.tokenizer import BPETokenizer

    where = str(path)
    meta = _metadata(_reader(path))
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise GGUFError(f"{where} carries no tokenizer (tokenizer.ggml.tokens); set data.tokenizer to the model's tokenizer.json")
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]] if "tokenizer.ggml.merges" in meta else None
    special = {name: meta.get(f"tokenizer.ggml.{key}") for name, key in
               (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"), ("pad", "padding_token_id"))}
    if kind == "llama":
        if merges is None:
            merges = _merges_from_scores(tokens, meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
        unk = tokens[special["unk"]] if special["unk"] is not None else None
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
        prefix = meta.get("tokenizer.ggml.add_space_prefix", True)  # SentencePiece's add_dummy_prefix
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if prefix else "never", split=False)
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1, right=0)] if prefix else []))
        add_bos_default = True  # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise
    elif kind == "gpt2":
        if merges is None:
            raise GGUFError(f"{where}: a byte-level (gpt2) vocabulary needs tokenizer.ggml.merges, which is missing")
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        pre = meta.get("tokenizer.ggml.pre")
        split = PRE_TOKENIZER_SPLITS.get(pre)
        if split is not None:
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        else:
            if pre not in (None, "default", "gpt2"):
                log.warning("%s: tokenizer.ggml.pre=%r has no known split pattern; using GPT-2's (as transformers does)", where, pre)
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        add_bos_default = False
    else:
        raise GGUFError(f"{where}: tokenizer.ggml.model={kind!r} is not supported (llama = SentencePiece BPE, gpt2 = "
                        f"byte-level BPE); set data.tokenizer to the model's tokenizer.json")
    types = meta.get("tokenizer.ggml.token_type") or []
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED])
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default)) and special["bos"] is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and special["eos"] is not None
    if add_bos or add_eos:
        bos, eos = (tokens[special["bos"]] if add_bos else None), (tokens[special["eos"]] if add_eos else None)
        single = " ".join(([f"{bos}:0"] if bos else []) + ["$A:0"] + ([f"{eos}:0"] if eos else []))
        pair = single + " " + " ".join(([f"{bos}:1"] if bos else []) + ["$B:1"] + ([f"{eos}:1"] if eos else []))
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in (bos, eos) if t is not None])
    config = {"add_bos_token": add_bos, "add_eos_token": add_eos}
    for name, index in special.items():
        if index is not None and 0 <= index < len(tokens):
            config[f"{name}_token"] = tokens[index]
    if meta.get("tokenizer.chat_template"):
        config["chat_template"] = meta["tokenizer.chat_template"]
    return BPETokenizer(tok, config=config, eos_ids=[special["eos"]] if special["eos"] is not None else [])


def gguf_tokenizer_dir(path: str | os.PathLike, cache_root: str | os.PathLike) -> Path:
    """The file's tokenizer saved as ``tokenizer.json`` + ``tokenizer_config.json`` in a directory under
    ``cache_root`` named by its content (so a run's ``data.tokenizer`` can point at it); written once,
    atomically (a temporary directory renamed into place)."""
    tokenizer = gguf_tokenizer(path)
    digest = hashlib.blake2b(tokenizer.tok.to_str().encode(), digest_size=8).hexdigest()
    target = Path(cache_root) / "gguf-tokenizers" / f"{Path(path).stem}-{digest}"
    if (target / "tokenizer.json").is_file():
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tokenizer.save(tmp / "tokenizer.json")
    try:
        os.replace(tmp, target)
    except OSError:  # another process put it there first: theirs is the same content
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target
