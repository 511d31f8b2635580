"""Tiny pretrained-looking models and chat data for fine-tuning tests: a random Llama saved with
``save_pretrained`` plus a real ``tokenizers`` BPE tokenizer with special tokens and a chat template,
written by ``transformers`` itself (so the files are what a hub download holds). No network."""

from __future__ import annotations

import json
import random
from pathlib import Path

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = ("red green blue cat dog bird one two three four five add plus equals what is the colour of sky grass "
         "answer question please tell me name a number").split()


def corpus_text(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]


def make_tokenizer(directory: Path, *, chat_template: str | None = CHATML, eos: str = "<|im_end|>", vocab: int = 200):
    """A byte-level BPE ``tokenizer.json`` + ``tokenizer_config.json`` written through transformers."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus_text(), trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token="<|endoftext|>",
                                                bos_token=None)
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(directory)
    return fast


def make_tiny_llama(directory: Path, *, seed: int = 0, rope_theta: float = 100000.0, **config):
    """A random tiny Llama with its tokenizer: what ``init_from`` gets from a downloaded model."""
    import torch
    import transformers

    directory = Path(directory)
    fast = make_tokenizer(directory)
    settings = dict(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=128, rope_theta=rope_theta, tie_word_embeddings=False,
                    eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=None)
    settings.update(config)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings)).eval()
    model.save_pretrained(directory)
    return model, fast


def write_chat_jsonl(path: Path, n: int = 48, seed: int = 0) -> Path:
    """Learnable chat rows: the answer repeats a word of the question, so loss can fall in a few steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word = rng.choice(WORDS)
        question = f"say {word} please"
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": f"{word} {word}"}]
        if rng.random() < 0.3:
            messages = [{"role": "system", "content": "be brief"}] + messages
        rows.append({"messages": messages})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def write_instruction_jsonl(path: Path, n: int = 48, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = [{"instruction": "repeat the word", "input": (w := rng.choice(WORDS)), "output": f"{w} {w}"} for _ in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
