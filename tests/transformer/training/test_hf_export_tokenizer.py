"""A model trained here (char or byte-level BPE tokenizer) exports to a directory that Hugging Face
``transformers`` uses alone: ``AutoTokenizer`` + ``AutoModelForCausalLM`` + ``generate`` give the toolkit's
own greedy tokens and text, and the toolkit's ``sample`` reads the same directory."""

import json

import pytest
import torch

from transformer.cli import run
from transformer.data.tokenizer import CharTokenizer, load_tokenizer, tokenizer_identity
from transformer.export import export_checkpoint
from transformer.generation import generate
from transformer.sample import sample
from transformer.training.config import load_config
from transformer.training.weights import load_model

from .conftest import tiny_overrides

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_hf_export_works_with_transformers_alone(kind, tmp_path, toy_corpus):
    extra = {"data.tokenizer": kind, "trainer.max_steps": 30}
    if kind == "bpe":
        extra["data.vocab_size"] = 300
    done = run(load_config(None, tiny_overrides(toy_corpus, tmp_path, name=kind, **extra)))
    out = export_checkpoint(done.run_dir / "checkpoints" / "last.ckpt", tmp_path / "export", hf=True)
    hf_dir = out / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= {p.name for p in hf_dir.iterdir()}
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ours, _ = load_model(out)
    tok = load_tokenizer(out)
    prompt = "the quick brown"
    ids = tok.encode(prompt)
    assert hf_tok(prompt)["input_ids"] == ids
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == tok.eos_id
    with torch.no_grad():
        mine = generate(ours, torch.tensor([ids]), max_new_tokens=12, temperature=0)[0].tolist()
        theirs = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                   max_new_tokens=12, do_sample=False, eos_token_id=None)[0].tolist()
    n = min(len(mine), len(theirs))
    assert n > len(ids) and mine[:n] == theirs[:n]
    assert hf_tok.decode(theirs[:n]) == tok.decode(mine[:n])
    # the toolkit reads the Hugging Face directory too
    assert sample(hf_dir, prompt, max_new_tokens=12, temperature=0).startswith(prompt)


def test_char_tokenizer_file_is_a_tokenizers_file_and_old_format_still_loads(tmp_path):
    from tokenizers import Tokenizer

    tok = CharTokenizer.train(["hello world\n\tÄ😀"])
    tok.save(tmp_path / "tokenizer.json")
    backend = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "hello\n wörld😀"
    assert backend.encode(text).ids == tok.encode(text)  # unseen 'ö' -> EOS in both
    assert backend.decode(tok.encode("hello world")) == "hello world"
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.kind == "char" and again.chars == tok.chars and again.eos_id == len(tok.chars)
    old = json.dumps({"type": "char", "chars": tok.chars})
    (tmp_path / "old.json").write_text(old)
    assert load_tokenizer(tmp_path / "old.json").encode(text) == tok.encode(text)
    # a run written by an older version resumes: both formats are the same tokenizer
    assert tokenizer_identity(old) == tokenizer_identity((tmp_path / "tokenizer.json").read_text())
    assert tokenizer_identity(old) != tokenizer_identity(json.dumps({"type": "char", "chars": tok.chars[:-1]}))
