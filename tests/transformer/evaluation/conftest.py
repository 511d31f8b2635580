"""One tiny trained language model (byte-level BPE) with its run directory and Hugging Face export, shared by the
evaluation tests: training it takes a few seconds."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # lm-eval's hf backend reads local directories only; never the hub

from transformer.cli import run
from transformer.export import export_checkpoint
from transformer.training.config import load_config

from ..training.conftest import PATTERN, tiny_overrides


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    corpus = root / "toy.txt"
    corpus.write_text(PATTERN * 120)
    done = run(load_config(None, tiny_overrides(corpus, root / "runs", name="ev", **{
        "data.tokenizer": "bpe", "data.vocab_size": 300, "trainer.max_steps": 60, "sample.max_new_tokens": 0})))
    export = export_checkpoint(done.run_dir / "checkpoints" / "last.ckpt", root / "export", hf=True)
    return {"run_dir": done.run_dir, "export": export, "hf": export / "hf", "root": root}
