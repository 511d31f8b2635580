"""End to end: a tiny Llama fine-tuned with LoRA on a tiny chat JSONL through train.py and the shipped
config — loss falls, resume is bitwise exact, the checkpoint holds only adapters, the peft-format
export loads in peft with the toolkit's logits, and the merged --hf export generates the same tokens in
transformers as the toolkit does."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from transformer.cli import run  # noqa: E402
from transformer.export import export_checkpoint  # noqa: E402
from transformer.generation import generate  # noqa: E402
from transformer.training.checkpoint_io import read_checkpoint  # noqa: E402
from transformer.training.config import load_config  # noqa: E402
from transformer.training.weights import load_model  # noqa: E402

from .helpers import make_tiny_llama, write_chat_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "configs" / "finetune" / "lora.yaml"


def _overrides(base, data, out, **extra):
    values = {"init_from": base, "data.path": data, "out_dir": out, "data.block_size": 64, "data.batch_size": 4,
              "data.val_fraction": 0.2, "finetune.r": 8, "finetune.dropout": 0.1, "trainer.max_steps": 30,
              "trainer.val_check_interval": 10, "trainer.log_every_n_steps": 1, "trainer.accelerator": "cpu",
              "trainer.progress_bar": "false", "optim.lr": 5e-3, "optim.warmup_steps": 3, "optim.decay_steps": 30}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def _losses(run_dir):
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    make_tiny_llama(root / "base")
    write_chat_jsonl(root / "chat.jsonl", n=60)
    return root


def test_lora_chat_finetune_end_to_end(tiny, tmp_path):
    base, data = tiny / "base", tiny / "chat.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(CONFIG),
                           *_overrides(base, data, tmp_path, name="straight")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "init_from" in done.stdout and "taken from it: " in done.stdout and "rope_theta=100000.0" in done.stdout
    assert "finetune.method=lora: adapters on 8 projection(s)" in done.stdout
    straight = next((tmp_path).glob("straight-*"))
    losses = _losses(straight)
    assert len(losses) == 30
    first, last = sum(losses[s] for s in range(5)) / 5, sum(losses[s] for s in range(25, 30)) / 5
    assert last < first - 0.3, losses

    checkpoint = read_checkpoint(straight / "checkpoints" / "last.ckpt")
    assert checkpoint["state_dict"] and all(".lora_" in k for k in checkpoint["state_dict"])  # adapters only
    assert checkpoint["base_model"]["path"] == str(base.resolve()) and len(checkpoint["base_model"]["blake2b"]) == 32

    # resume: 15 steps, then on to 30 from last.ckpt — bitwise the straight run (dropout included)
    halves = run(load_config(CONFIG, _overrides(base, data, tmp_path, name="halves", **{"trainer.max_steps": 15})))
    again = run(load_config(CONFIG, _overrides(base, data, tmp_path, name="halves", resume_from="auto")))
    assert again.run_dir == halves.run_dir and again.steps == 30
    a = checkpoint["state_dict"]
    b = read_checkpoint(again.run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(again.run_dir) == losses

    # peft-format adapter: peft on the transformers base gives the toolkit's logits
    ckpt = straight / "checkpoints" / "last.ckpt"
    export_checkpoint(ckpt, tmp_path / "adapter", adapter=True)
    ours, _ = load_model(ckpt)
    ids = torch.randint(0, ours.cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    reference = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)

    # an adapter checkpoint as init_from: its base with the adapters merged in
    from transformer.training.lm_task import LanguageModelTask
    from transformer.training.weights import load_weights
    from transformer.transformer_model import build_model

    cfg = load_config(CONFIG, _overrides(base, data, tmp_path, init_from=ckpt))
    LanguageModelTask().resolve_init(cfg, None)
    follow_up = build_model(cfg.model).eval()
    load_weights(follow_up, ckpt, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(follow_up(ids).logits, ours(ids).logits, atol=1e-5, rtol=1e-5)

    # merged Hugging Face export: AutoTokenizer + generate behave as the toolkit's sampling
    export_checkpoint(ckpt, tmp_path / "merged", hf=True)
    hf_dir = tmp_path / "merged" / "hf"
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "say red please"}], add_generation_prompt=True,
                                           return_tensors="pt")
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    theirs = hf_model.generate(prompt, max_new_tokens=10, do_sample=False)
    mine = generate(ours, prompt, 10, temperature=0, eos_token_id=tokenizer.eos_token_id)
    assert mine[0, : theirs.shape[1]].tolist() == theirs[0].tolist()
    chat = subprocess.run([sys.executable, "-m", "transformer.sample", str(hf_dir), "--chat", "say red please",
                           "--temperature", "0", "--max-new-tokens", "10"], capture_output=True, text=True, cwd=ROOT)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.strip() == tokenizer.decode(theirs[0, prompt.shape[1]:], skip_special_tokens=True).strip()
