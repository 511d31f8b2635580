"""Bad input through the real command lines (subprocesses), as a new user would give it.

Every case must: exit non-zero, print no traceback, end with a one-line ``error:`` that names the
problem (matched by the case's pattern), and leave the file tree it ran in exactly as it was
(paths, sizes, contents, modification times). The cases share one prepared workspace (a finished
tiny language-model run, its export, a regression run, a set of bad files); each case runs in its
own copy of it, three at a time.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# A tiny LM run over toy.txt: if a case were wrongly accepted it would train for a moment, and fail the test.
LM = ["out_dir=runs", "data.source=files", "data.path=toy.txt", "data.max_chars=null", "data.batch_size=4",
      "model.embed_dim=16", "model.num_heads=2", "model.num_layers=1", "model.max_seq_len=16", "data.block_size=16",
      "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "trainer.progress_bar=false",
      "sample.max_new_tokens=0", "optim.warmup_steps=1"]
REG = ["--config", str(ROOT / "configs/regression/csv_tabular.yaml"), "out_dir=runs", "data.path=table.csv",
       "data.feature_columns=[a,b]", "data.categorical_columns=[]", "data.target_columns=[y]", "trainer.max_steps=4",
       "trainer.val_check_interval=2", "trainer.progress_bar=false", "model.num_layers=1"]
TRAIN = [PY, str(ROOT / "train.py")]
EXPORT, CONVERT, SAMPLE = ([PY, "-m", f"transformer.{m}"] for m in ("export", "convert", "sample"))
COMPARE, PREDICT = [PY, "-m", "transformer.compare"], [PY, "-m", "regression.predict"]
RUNS = [PY, "-m", "transformer.runs"]


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: str  # regex the last line must match (case-insensitive)


def _cases() -> list[Case]:
    c = []
    add = lambda id, argv, expect: c.append(Case(id, argv, expect))
    # ---------------------------------------------------------------- config files and overrides
    add("config-missing", TRAIN + ["--config", "nope.yaml"], r"config file 'nope.yaml' does not exist")
    add("config-yaml-syntax", TRAIN + ["--config", "bad.yaml"], r"bad.yaml is not valid YAML at line \d+")
    add("config-yaml-list", TRAIN + ["--config", "list.yaml"], r"list.yaml must hold a mapping")
    add("config-binary", TRAIN + ["--config", "binary.bin"], r"binary.bin is not UTF-8")
    add("config-directory", TRAIN + ["--config", "emptydir"], r"emptydir' is a directory")
    add("config-unknown-key-in-file", TRAIN + ["--config", "unknown_key.yaml"], r"unknown config key trainer.max_step; did you mean trainer.max_steps.*unknown_key.yaml")
    add("config-bad-value-in-file", TRAIN + ["--config", "bad_value.yaml"], r"trainer.max_steps.*could not be converted.*bad_value.yaml")
    add("override-unknown-section", TRAIN + LM + ["foo.bar=1"], r"unknown config key foo")
    add("override-typo", TRAIN + LM + ["trainer.max_step=3"], r"did you mean trainer.max_steps\?.*override 'trainer.max_step=3'")
    add("override-not-int", TRAIN + LM + ["trainer.max_steps=abc"], r"trainer.max_steps.*'abc'.*override")
    add("override-zero-steps", TRAIN + LM + ["trainer.max_steps=0"], r"trainer.max_steps=0 must be a positive integer")
    add("override-no-equals", TRAIN + LM + ["trainer.max_steps"], r"key.sub=value")
    add("override-empty-key", TRAIN + LM + ["=3"], r"key.sub=value")
    add("devices-abc", TRAIN + LM + ["trainer.devices=abc"], r"trainer.devices='abc' is not a device count")
    add("devices-zero", TRAIN + LM + ["trainer.devices=0"], r"trainer.devices=0 must be >= 1")
    add("devices-negative", TRAIN + LM + ["trainer.devices=-3"], r"trainer.devices=-3 must be >= 1")
    add("accelerator-gpu-missing", TRAIN + LM + ["trainer.accelerator=gpu"], r"no CUDA GPU is available")
    add("accelerator-unknown", TRAIN + LM + ["trainer.accelerator=npu"], r"trainer.accelerator='npu' is not one of")
    add("precision-typo", TRAIN + LM + ["trainer.precision=bf16"], r"trainer.precision='bf16'.*did you mean 'bf16-true'")
    add("strategy-unknown", TRAIN + LM + ["trainer.strategy=horovod"], r"trainer.strategy='horovod' is not one of")
    add("kv-heads-not-dividing", TRAIN + LM + ["model.attention.type=gqa", "model.attention.num_kv_heads=3"], r"not divisible by num_kv_heads=3")
    add("attention-type-unknown", TRAIN + LM + ["model.attention.type=flash"], r"model.attention.type='flash' is not one of")
    add("norm-unknown", TRAIN + LM + ["model.norm=batchnorm"], r"model.norm='batchnorm' is not one of")
    add("dropout-out-of-range", TRAIN + LM + ["model.dropout=1.5"], r"model.dropout=1.5 must be in \[0.0, 1.0\)")
    add("lr-negative", TRAIN + LM + ["optim.lr=-1"], r"optim.lr=-1.0 must be in")
    add("min-lr-above-lr", TRAIN + LM + ["optim.min_lr=1"], r"optim.min_lr=1.0 must be in")
    add("beta-out-of-range", TRAIN + LM + ["optim.beta2=1.5"], r"optim.beta2=1.5 must be in")
    add("block-over-context", TRAIN + LM + ["data.block_size=64"], r"data.block_size=64 exceeds model.max_seq_len=16")
    add("val-fraction", TRAIN + LM + ["data.val_fraction=1.5"], r"data.val_fraction=1.5 must be in")
    add("files-without-path", TRAIN + ["data.source=files", "out_dir=runs"], r"data.path is required")
    add("task-unknown", TRAIN + LM + ["task=vision"], r"task='vision' is not one of")
    add("name-with-slash", TRAIN + LM + ["name=a/b"], r"name='a/b' must be a non-empty name")
    add("out-dir-is-file", TRAIN + LM[1:] + ["out_dir=afile"], r"out_dir='afile'.*is a file")
    add("allow-data-change-alone", TRAIN + LM + ["resume_allow_data_change=true"], r"resume_allow_data_change=true only applies with resume_from")
    add("fused-with-amp-clip", TRAIN + LM + ["optim.fused=true", "trainer.precision=bf16-mixed"], r"optim.fused=true cannot be combined")
    add("save-top-k-below-minus-one", TRAIN + LM + ["checkpoint.save_top_k=-5"], r"checkpoint.save_top_k=-5 must be in \[-1")
    add("sample-temperature-negative", TRAIN + LM + ["sample.temperature=-1"], r"sample.temperature=-1.0 must be in")
    add("sample-prompt-no-room", TRAIN + LM + ["sample.max_new_tokens=5", "sample.prompt=" + "x" * 30],
        r"sample.prompt is 30 tokens, which leaves no room under model.max_seq_len=16")
    add("section-given-a-scalar", TRAIN + LM + ["model=5"], r"config key model: .*override 'model=5'")
    add("seed-negative", TRAIN + LM + ["seed=-1"], r"seed=-1 must be in \[0, 4294967295\]")
    add("regression-peak-flops", TRAIN + REG + ["trainer.peak_flops=1e12"], r"trainer.peak_flops is for the MFU metric")
    add("regression-unknown-key", TRAIN + REG + ["data.windw=3"], r"unknown config key data.windw; did you mean data.window")
    # ---------------------------------------------------------------- data and tokenizers
    data = lambda *o: TRAIN + LM + list(o)
    add("data-missing", data("data.path=nope.txt"), r"data.path: 'nope.txt' does not exist")
    add("data-empty", data("data.path=empty.txt"), r"data file 'empty.txt' is empty")
    add("data-binary", data("data.path=binary.bin", "data.file_format=text"), r"'binary.bin' is binary")
    add("data-whitespace", data("data.path=ws.txt"), r"'ws.txt' holds only whitespace")
    add("data-not-utf8", data("data.path=latin1.txt"), r"'latin1.txt' is not UTF-8 text \(byte 0xe9")
    add("data-dir-without-files", data("data.path=emptydir"), r"matches no files")
    add("data-glob-no-match", data("data.path=nope*.txt"), r"matches no files")
    add("data-too-short", data("data.path=tiny.txt"), r"fewer than data.block_size \+ 1 = 17")
    add("data-wrong-column", data("data.path=data.jsonl"), r"data.text_column='text' is not a column.*body")
    add("data-malformed-json", data("data.path=bad.json"), r"cannot read bad.json as json")
    add("data-column-not-text", data("data.path=numbers.jsonl"), r"data.text_column='text' holds .*not text")
    add("data-unknown-extension", data("data.path=file.xyz"), r"data.file_format is not set and 'file.xyz' has no known extension")
    add("data-header-only-csv", data("data.path=header.csv"), r"header.csv hold\(s\) no data rows")
    add("data-hub-offline", TRAIN + LM + ["data.source=hub", "data.name=no-such-dataset-xyz"], r"could not load hub dataset data.name='no-such-dataset-xyz'")
    add("data-parquet-garbage", data("data.path=garbage.parquet"), r"cannot read garbage.parquet as parquet")
    add("data-csv-not-parquet", data("data.path=table.csv", "data.format=parquet"), r"cannot read table.csv as parquet")
    add("tokenizer-missing", data("data.tokenizer=nope.json"), r"data.tokenizer='nope.json' is not 'char', 'bpe' or an existing tokenizer.json")
    add("tokenizer-malformed", data("data.tokenizer=tok_bad.json"), r"tokenizer file tok_bad.json is not valid JSON \(.* line 1, column \d+\)")
    add("tokenizer-not-a-tokenizer", data("data.tokenizer=tok_wrong.json"), r"tok_wrong.json is not a Hugging Face tokenizers file")
    add("tokenizer-no-eos", data("data.tokenizer=tok_noeos.json"), r"tok_noeos.json: the tokenizer has no end-of-text token \(none of <\|endoftext\|>, </s>.*set data.eos_token")
    add("tokenizer-bad-name", data("data.tokenizer=wordpiece"), r"data.tokenizer='wordpiece' is not 'char', 'bpe' or an existing tokenizer.json / directory")
    add("regression-data-missing", TRAIN + REG + ["data.path=nope.csv"], r"data.path: 'nope.csv' does not exist")
    add("regression-header-only", TRAIN + REG + ["data.path=header.csv"], r"hold\(s\) no data rows")
    add("regression-binary-csv", TRAIN + REG + ["data.path=binary.csv"], r"'binary.csv' is binary")
    add("regression-missing-column", TRAIN + REG + ["data.target_columns=[price]"], r"column\(s\) \['price'\] not in the data")
    add("regression-non-numeric", TRAIN + REG + ["data.path=text_cells.csv"], r"column 'a' has a non-numeric value 'n/a\?' at row 2")
    # ---------------------------------------------------------------- checkpoints, resume, init_from
    resume = lambda *o: TRAIN + LM + ["name=r"] + list(o)
    add("resume-missing", resume("resume_from=nope.ckpt"), r"checkpoint nope.ckpt does not exist")
    add("resume-garbage", resume("resume_from=garbage.ckpt"), r"garbage.ckpt is corrupt or truncated")
    add("resume-truncated", resume("resume_from=truncated.ckpt"), r"truncated.ckpt is corrupt or truncated")
    add("resume-foreign", resume("resume_from=foreign.ckpt"), r"foreign.ckpt is not a training checkpoint")
    add("resume-empty-file", resume("resume_from=empty.txt"), r"empty.txt is empty")
    add("resume-directory", resume("resume_from=emptydir"), r"emptydir is a directory")
    add("resume-auto-no-run", TRAIN + LM + ["name=never", "resume_from=auto"], r"no run named 'never'")
    add("resume-finished", resume("resume_from=auto"), r"already at step 4, and trainer.max_steps=4")
    add("resume-other-model", resume("resume_from=auto", "trainer.max_steps=8", "model.embed_dim=32"),
        r"none of the 1 run\(s\) named 'r' under .* has this config's model: .*r-.* \(model.embed_dim: 16 -> 32\)")
    add("resume-path-other-model", resume("resume_from={run}/checkpoints/last.ckpt", "trainer.max_steps=8", "model.embed_dim=32"),
        r"model differs.*model.embed_dim: 16 -> 32")
    add("resume-other-lr", resume("resume_from=auto", "trainer.max_steps=8", "optim.lr=0.5"), r"other optimizer settings \(optim.lr: 0.001 -> 0.5\)")
    add("resume-other-tokenizer", resume("resume_from=auto", "trainer.max_steps=8", "data.path=other.txt"), r"the tokenizer differs")
    add("resume-other-data", resume("resume_from=auto", "trainer.max_steps=8", "data.path=shuffled.txt", "data.tokenizer={run}/tokenizer.json"),
        r"the training data differs.*resume_allow_data_change=true")
    add("resume-regression-into-lm", resume("resume_from={reg_ckpt}", "trainer.max_steps=8"), r"is a 'regression' checkpoint and this config is task='lm'")
    add("init-missing", data("init_from=nope.ckpt"), r"init_from='nope.ckpt' does not exist")
    add("init-garbage", data("init_from=garbage.ckpt"), r"garbage.ckpt is corrupt or truncated")
    add("init-foreign-dir", data("init_from=emptydir"), r"emptydir is neither an export .* nor a Hugging Face directory")
    add("init-contradicting-model", data("init_from=export", "model.embed_dim=32"),
        r"model.embed_dim=32 \(the init_from model has 16\) contradicts the architecture of init_from")
    add("init-strict-new-vocab", data("init_from=export", "init_strict=true", "data.tokenizer=char", "data.path=other.txt"),
        r"strict weight loading failed")
    add("resume-other-init", resume("resume_from=auto", "trainer.max_steps=8", "init_from=export"),
        r"cannot resume from .* with init_from='export': its run started from None")
    # ---------------------------------------------------------------- fine-tuning
    add("finetune-without-init", data("finetune.method=lora"), r"finetune.method=lora adapts a trained model: set init_from")
    add("finetune-unknown-target", data("init_from=export", "finetune.method=lora", "finetune.targets=[query]"),
        r"finetune.targets entry='query' is not one of")
    add("finetune-targets-absent", data("init_from=export", "finetune.method=lora", "finetune.targets=[q]", "finetune.layers=[5]"),
        r"finetune.targets=\['q'\] name no projection of this model in layers \[5\].*it has: .*gate_up")
    add("finetune-bad-method", data("init_from=export", "finetune.method=prefix"), r"finetune.method='prefix' is not one of")
    add("chat-unknown-role", data("data.format=chat", "data.path=chat_bad_role.jsonl", "data.tokenizer={run}/tokenizer.json"),
        r"chat_bad_role.jsonl row 2: field messages\[0\].role='human' is not one of system, user, assistant")
    add("chat-missing-column", data("data.format=chat", "data.path=chat_no_messages.jsonl", "data.tokenizer={run}/tokenizer.json"),
        r"chat_no_messages.jsonl row 1: no field 'messages' \(data.messages_column\)")
    add("chat-empty-response", data("data.format=chat", "data.path=chat_empty_reply.jsonl", "data.tokenizer={run}/tokenizer.json"),
        r"chat_empty_reply.jsonl row 1: field messages\[1\].content is an empty assistant response")
    add("chat-template-missing", data("data.format=chat", "data.path=chat_bad_role.jsonl", "data.chat_template=nope.jinja",
                                      "data.tokenizer={run}/tokenizer.json"),
        r"data.chat_template='nope.jinja' is neither a named template \(chatml, llama3, alpaca\) nor an existing Jinja file")
    add("instruction-from-text", data("data.format=instruction", "data.path=toy.txt", "data.tokenizer={run}/tokenizer.json"),
        r"reads rows with columns, but toy.txt is a text file")
    add("instruction-char-tokenizer", data("data.format=instruction", "data.path=chat_bad_role.jsonl"),
        r"data.format=instruction needs a trained tokenizer: init_from .* or data.tokenizer=PATH")
    add("instruction-from-stdlib", TRAIN + LM + ["data.source=python_stdlib", "data.format=chat"], r"data.format=chat reads rows from data.path")
    add("eos-token-unknown", data("data.tokenizer=tok_noeos.json", "data.eos_token=<nope>"),
        r"end-of-text token '<nope>' \(data.eos_token\) is not in the vocabulary")
    add("export-adapter-of-full", EXPORT + ["{lm_ckpt}", "out", "--adapter"], r"is not an adapter checkpoint \(finetune.method=full\)")
    add("export-adapter-and-hf", EXPORT + ["{lm_ckpt}", "out", "--adapter", "--hf"], r"--adapter writes the adapter alone")
    add("sample-system-without-chat", SAMPLE + ["export", "--system", "be brief"], r"--system and --template only apply with --chat")
    add("init-hf-bad-json", data("init_from=hf_bad_json"), r"hf_bad_json/config.json is not valid JSON")
    add("init-hf-missing-key", data("init_from=hf_missing_key"), r"hf_missing_key/config.json lacks 'num_attention_heads'")
    add("init-hf-unsupported", data("init_from=hf_mamba"), r"model_type='mamba' is not supported")
    add("init-broken-export", data("init_from=broken_export"), r"model_config.json is not a valid model config")
    # ---------------------------------------------------------------- sweeps
    add("sweep-config-missing", TRAIN + ["--sweep-config", "nope.yaml"], r"sweep config 'nope.yaml' does not exist")
    add("sweep-config-syntax", TRAIN + ["--sweep-config", "bad.yaml"], r"bad.yaml is not valid YAML")
    add("sweep-grid-as-list", TRAIN + ["--sweep-config", "sweep_grid_list.yaml"], r"'grid' must map each key to its values")
    add("sweep-runs-not-mappings", TRAIN + ["--sweep-config", "sweep_runs_scalar.yaml"], r"'runs' must be a list of mappings")
    add("sweep-unknown-key", TRAIN + ["--sweep-config", "sweep_unknown.yaml"], r"unknown key\(s\) \['grids'\]")
    add("sweep-grid-and-runs", TRAIN + ["--sweep-config", "sweep_both.yaml"], r"exactly one of 'grid'")
    add("sweep-base-missing", TRAIN + ["--sweep-config", "sweep_base_missing.yaml"], r"base config 'nope.yaml' does not exist")
    add("sweep-arg-no-equals", TRAIN + LM + ["--sweep", "model.attention.type"], r"--sweep expects key=v1,v2")
    add("sweep-nothing-valid", TRAIN + ["--sweep", "model.attention.num_kv_heads=3,5", "--"] + LM + ["model.attention.type=gqa"], r"no valid combination")
    add("sweep-both-forms", TRAIN + ["--sweep-config", "sweep_grid_list.yaml", "--sweep", "a=1,2"], r"either --sweep-config or --sweep")
    # ---------------------------------------------------------------- export / convert / sample / predict / compare
    add("export-missing", EXPORT + ["nope.ckpt", "out"], r"checkpoint nope.ckpt does not exist")
    add("export-onto-file", EXPORT + ["{lm_ckpt}", "afile"], r"afile is a file")
    add("export-non-empty-dir", EXPORT + ["{lm_ckpt}", "export"], r"export exists and is not empty")
    add("export-garbage", EXPORT + ["garbage.ckpt", "out"], r"garbage.ckpt is corrupt")
    add("convert-gqa-without-heads", CONVERT + ["{lm_ckpt}", "conv.ckpt", "--to", "gqa"], r"--to gqa needs --num-kv-heads")
    add("convert-existing-out", CONVERT + ["{lm_ckpt}", "afile", "--to", "mqa"], r"afile exists")
    add("convert-heads-not-dividing", CONVERT + ["{lm_ckpt}", "conv.ckpt", "--to", "gqa", "--num-kv-heads", "3", "--no-eval"], r"not divisible by num_kv_heads=3")
    add("convert-regression", CONVERT + ["{reg_ckpt}", "conv.ckpt", "--to", "mqa", "--no-eval"], r"'regression' checkpoint")
    add("convert-out-under-a-file", CONVERT + ["{lm_ckpt}", "garbage.ckpt/conv.ckpt", "--to", "mqa", "--no-eval"],
        r"garbage.ckpt is a file, not a folder: choose another path for conv.ckpt")
    add("sample-missing", SAMPLE + ["nope.ckpt"], r"nope.ckpt does not exist")
    add("sample-garbage", SAMPLE + ["garbage.ckpt"], r"garbage.ckpt is corrupt")
    add("sample-prompt-too-long", SAMPLE + ["export", "--prompt", "x" * 40], r"the prompt is 40 tokens; the model's context is 16")
    add("sample-negative-tokens", SAMPLE + ["export", "--max-new-tokens", "-5"], r"--max-new-tokens -5 must be >= 0")
    add("sample-negative-temperature", SAMPLE + ["export", "--temperature", "-1"], r"--temperature -1.0 must be >= 0")
    add("sample-not-an-int", SAMPLE + ["export", "--top-k", "many"], r"argument --top-k: invalid int value")
    add("predict-lm-checkpoint", PREDICT + ["{lm_ckpt}", "table.csv", "p.csv"], r"is not a regression checkpoint")
    add("predict-input-missing", PREDICT + ["{reg_ckpt}", "nope.csv", "p.csv"], r"'nope.csv' does not exist")
    add("predict-out-folder-missing", PREDICT + ["{reg_ckpt}", "table.csv", "nodir/p.csv"], r"folder nodir for the output p.csv does not exist")
    add("predict-out-exists", PREDICT + ["{reg_ckpt}", "table.csv", "table.csv"], r"table.csv exists; choose another name or pass --overwrite")
    add("predict-out-is-dir", PREDICT + ["{reg_ckpt}", "table.csv", "emptydir"], r"emptydir is a directory")
    add("predict-missing-columns", PREDICT + ["{reg_ckpt}", "other_table.csv", "p.csv"], r"column\(s\) \['a', 'b'\] not in the data")
    add("predict-binary-input", PREDICT + ["{reg_ckpt}", "binary.csv", "p.csv"], r"'binary.csv' is binary")
    add("predict-out-extension", PREDICT + ["{reg_ckpt}", "table.csv", "p.txt"], r"must end in .csv or .parquet")
    add("export-regression", EXPORT + ["{reg_ckpt}", "out"], r"is a 'regression' checkpoint, not a 'lm' one")
    add("sample-regression", SAMPLE + ["{reg_ckpt}"], r"is a 'regression' checkpoint, not a 'lm' one")
    add("compare-damaged-metrics", COMPARE + ["damaged_run", "--no-decode"], r"damaged_run/csv/metrics.csv is damaged")
    add("compare-missing", COMPARE + ["nope_dir", "--no-decode"], r"nope_dir does not exist")
    add("compare-no-runs", COMPARE + ["emptydir", "--no-decode"], r"no run")
    add("runs-missing-dir", RUNS + ["nowhere"], r"nowhere is not a directory \(the out_dir of your runs")
    add("predict-synthetic-not-synthetic", PREDICT + ["{reg_ckpt}", "--synthetic", "p.csv"], r"--synthetic: .* was trained on data.source=files")
    return c


CASES = _cases()


# ---------------------------------------------------------------------------------- workspace
def _write_files(ws: Path) -> None:
    from .transformer.training.conftest import PATTERN

    (ws / "toy.txt").write_text(PATTERN * 40)
    (ws / "other.txt").write_text("ZYXWVUTSRQ 0123456789!? " * 200)  # other characters: another char tokenizer
    (ws / "shuffled.txt").write_text("".join(sorted(PATTERN * 40, reverse=True)))  # same characters, other text
    (ws / "tiny.txt").write_text("hello")
    chat = '{"messages": [{"role": "user", "content": "the quick fox"}, {"role": "assistant", "content": "lazy dog"}]}\n'
    (ws / "chat_bad_role.jsonl").write_text(chat + '{"messages": [{"role": "human", "content": "the"}, {"role": "assistant", "content": "dog"}]}\n')
    (ws / "chat_no_messages.jsonl").write_text('{"conversation": [{"role": "user", "content": "the"}]}\n' + chat)
    (ws / "chat_empty_reply.jsonl").write_text('{"messages": [{"role": "user", "content": "the"}, {"role": "assistant", "content": " "}]}\n' + chat)
    (ws / "empty.txt").write_text("")
    (ws / "ws.txt").write_text("   \n\t\n  " * 20)
    (ws / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (ws / "latin1.txt").write_bytes("caf\u00e9 au lait ".encode("latin-1") * 50)
    (ws / "data.jsonl").write_text('{"body": "some text here"}\n' * 50)
    (ws / "numbers.jsonl").write_text('{"text": 5}\n' * 50)
    (ws / "bad.json").write_text('{"text": "unterminated\n')
    (ws / "file.xyz").write_text("text in a file with an unknown extension")
    (ws / "header.csv").write_text("a,b,y\n")
    (ws / "binary.csv").write_bytes(b"a,b,y\n" + bytes(range(256)) * 4)
    rows = ["a,b,y"] + [f"{i % 7},{(i * 3) % 11},{(i % 7) * 2 + (i * 3) % 11}" for i in range(80)]
    (ws / "table.csv").write_text("\n".join(rows) + "\n")
    (ws / "text_cells.csv").write_text("a,b,y\n1,2,3\n4,5,6\nn/a?,1,2\n" + "1,2,3\n" * 40)
    (ws / "other_table.csv").write_text("c,d,y\n" + "1,2,3\n" * 20)
    (ws / "tok_bad.json").write_text('{"model": {"type": "BPE", ')
    (ws / "tok_wrong.json").write_text('{"hello": "world"}')
    from tokenizers import Tokenizer, models, pre_tokenizers

    noeos = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    noeos.pre_tokenizer = pre_tokenizers.ByteLevel()
    noeos.add_special_tokens(["<pad>"])  # (</s> would be found: Llama-2 / Mistral's end of text)
    noeos.save(str(ws / "tok_noeos.json"))
    (ws / "bad.yaml").write_text("model:\n  embed_dim: [16, 32\n")
    (ws / "list.yaml").write_text("- a\n- b\n")
    (ws / "unknown_key.yaml").write_text("trainer:\n  max_step: 3\n")
    (ws / "bad_value.yaml").write_text("trainer:\n  max_steps: lots\n")
    (ws / "sweep_grid_list.yaml").write_text("grid:\n  - model.attention.type: mha\n  - model.attention.type: mqa\n")
    (ws / "sweep_runs_scalar.yaml").write_text("runs: [mha, mqa]\n")
    (ws / "sweep_unknown.yaml").write_text("grids:\n  model.attention.type: [mha, mqa]\n")
    (ws / "sweep_both.yaml").write_text("grid:\n  a: [1]\nruns:\n  - {a: 1}\n")
    (ws / "sweep_base_missing.yaml").write_text("base: nope.yaml\ngrid:\n  model.attention.type: [mha, mqa]\n")
    (ws / "afile").write_text("a plain file\n")
    (ws / "emptydir").mkdir()
    (ws / "garbage.ckpt").write_bytes(os.urandom(2000))
    for name, text in (("hf_bad_json", "{bad"), ("hf_missing_key", '{"model_type": "llama"}'),
                       ("hf_mamba", '{"model_type": "mamba"}')):
        (ws / name).mkdir()
        (ws / name / "config.json").write_text(text)
    (ws / "garbage.parquet").write_bytes(b"PAR1" + os.urandom(100))
    (ws / "broken_export").mkdir()
    (ws / "broken_export" / "model_config.json").write_text("{not json")
    (ws / "broken_export" / "model.safetensors").write_bytes(b"")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The prepared workspace: bad files, a finished LM run (4 steps), its export, a regression run."""
    import torch

    from regression.cli import run as run_regression
    from transformer.export import export_checkpoint
    from transformer.training.config import load_config
    from transformer.training.tasks import dispatch as run
    from transformer.training.tasks import load_run_config

    ws = tmp_path_factory.mktemp("bad_inputs")
    _write_files(ws)
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        lm = run(load_config(None, LM + ["name=r"]))
        reg = run_regression(load_run_config(REG[1], REG[2:] + ["name=reg"]))
    finally:
        os.chdir(cwd)
    lm_ckpt = (lm.run_dir / "checkpoints" / "last.ckpt")
    export_checkpoint(ws / lm_ckpt, ws / "export")
    (ws / "truncated.ckpt").write_bytes((ws / lm_ckpt).read_bytes()[:3000])
    torch.save([1, 2, 3], ws / "foreign.ckpt")
    reg_ckpt = next((ws / reg.run_dir / "checkpoints").glob("step*.ckpt")).relative_to(ws)
    damaged = ws / "damaged_run"
    shutil.copytree(ws / lm.run_dir, damaged, ignore=shutil.ignore_patterns("checkpoints"))
    (damaged / "csv" / "metrics.csv").write_text('step,train/loss\n0,"unterminated\n')
    return ws, {"lm_ckpt": str(lm_ckpt), "reg_ckpt": str(reg_ckpt), "run": str(lm.run_dir)}


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size, mtime and content hash."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            out[rel] = ("dir",)
        else:
            st = path.stat()
            out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
    return out


def _run_case(case: Case, ws: Path, names: dict, base: Path) -> dict:
    work = base / case.id
    shutil.copytree(ws, work, symlinks=True, copy_function=shutil.copy2)
    before = snapshot(work)
    argv = [a.format(**names) for a in case.argv]
    env = {k: v for k, v in os.environ.items() if k != "TT_DEBUG"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(base / f".hf-{case.id}"))
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=work, capture_output=True, text=True, env=env, timeout=300)
    seconds = time.perf_counter() - started
    after = snapshot(work)
    shutil.rmtree(work, ignore_errors=True)
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "before": before, "after": after,
            "seconds": seconds}


@pytest.fixture(scope="module")
def outcomes(workspace, tmp_path_factory):
    ws, names = workspace
    base = tmp_path_factory.mktemp("cases")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {case.id: pool.submit(_run_case, case, ws, names, base) for case in CASES}
    results = {k: f.result() for k, f in futures.items()}
    if os.environ.get("TT_CASE_TIMES"):
        for k, r in sorted(results.items(), key=lambda kv: -kv[1]["seconds"]):
            print(f"{r['seconds']:6.1f} s  rc={r['rc']}  {k}: {(r['stderr'].strip().splitlines() or [''])[-1][:150]}")
    return results


def test_there_are_enough_cases():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_reported_in_one_line_and_changes_nothing(case, outcomes):
    out = outcomes[case.id]
    both = out["stdout"] + out["stderr"]
    lines = [line for line in out["stderr"].splitlines() if line.strip()]
    assert out["rc"] != 0, f"accepted: {both[-1500:]}"
    assert "Traceback" not in both, both[-3000:]
    assert lines and "error:" in lines[-1], f"last line is not an error: {lines[-3:]}"
    assert re.search(case.expect, lines[-1], re.IGNORECASE), f"{lines[-1]!r} does not match {case.expect!r}"
    changed = {k for k in set(out["before"]) | set(out["after"]) if out["before"].get(k) != out["after"].get(k)}
    assert not changed, f"files changed: {sorted(changed)}"
