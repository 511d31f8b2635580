"""The language-model task: text -> token store -> :class:`LanguageModelModule`, through the run skeleton.

Only the pieces that differ from other tasks live here (see :class:`transformer.training.run.Task`):
checking the data files and tokenizer up front, the vocabulary size taken from the tokenizer, the
tokenizer and data fingerprint that a resumed run must match, the text-sample callback, and the
final validation loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint_keys as K
from .config import RunConfig, flat_dict, to_container
from .run import Resume, Task, warn


@dataclass
class RunResult:
    run_dir: Path
    val_loss: float
    steps: int
    wall_time: float
    sample: str | None
    train_time: float = 0.0

    def format(self) -> str:
        return (f"\nrun directory: {self.run_dir}\nfinal validation loss: {self.val_loss:.4f} "
                f"after {self.steps} steps in {self.wall_time:.1f} s")

    def to_json(self) -> dict:
        return {"val_loss": self.val_loss, "steps": self.steps, "wall_time_s": self.wall_time,
                "train_time_s": self.train_time, "finished": True}


class LanguageModelTask(Task):
    name = "lm"
    monitor = "val/loss"

    def schema(self) -> type:
        return RunConfig

    def check_inputs(self, cfg: RunConfig) -> None:
        from ..data.corpus import check_data_files
        from ..data.tokenizer import load_tokenizer

        check_data_files(cfg.data)
        if cfg.data.tokenizer not in ("char", "bpe"):
            load_tokenizer(cfg.data.tokenizer)  # one-line error naming the file if it is missing or malformed

    def build_data(self, cfg: RunConfig, rank: int):
        from ..data import LMDataModule

        datamodule = LMDataModule(cfg.data, seed=cfg.seed, cache_root=Path(cfg.out_dir) / ".cache",
                                  max_val_batches=cfg.trainer.limit_val_batches)
        datamodule.prepare()
        return datamodule

    def abandon_data(self, data) -> None:
        from ..data.token_store import discard_corpus

        if data.corpus is not None:
            discard_corpus(data.corpus)

    def settle_config(self, cfg: RunConfig, data, rank: int) -> None:
        vocab = data.corpus.vocab_size
        if cfg.model.vocab_size != vocab:
            if rank == 0:
                print(f"model.vocab_size set to {vocab} from the tokenizer (config said {cfg.model.vocab_size})")
            cfg.model.vocab_size = vocab
        if cfg.sample.max_new_tokens:  # a prompt with no room would fail only after training
            prompt = len(data.corpus.tokenizer().encode(cfg.sample.prompt)) or 1
            if prompt >= cfg.model.max_seq_len:
                raise ValueError(f"sample.prompt is {prompt} tokens, which leaves no room under model.max_seq_len="
                                 f"{cfg.model.max_seq_len}; shorten it or set sample.max_new_tokens=0")

    def check_resume(self, cfg: RunConfig, data, resume: Resume) -> None:
        corpus = data.corpus
        saved_tokenizer = resume.extras.get(K.TOKENIZER)
        if saved_tokenizer is not None and _json(saved_tokenizer) != _json(corpus.tokenizer_path.read_text()):
            raise ValueError(
                f"cannot resume from {resume.path}: the tokenizer differs from the one the run trained with (a "
                f"different data.tokenizer, or a char tokenizer rebuilt from changed text). Resume with the run's own "
                f"tokenizer (data.tokenizer={resume.path.parent.parent / 'tokenizer.json'}), or start a new run "
                f"with init_from={resume.path}")
        saved_data = resume.extras.get(K.DATA_FINGERPRINT)
        if saved_data is None:
            warn(f"{resume.path} records no data fingerprint (written by an older version); cannot check the data")
        elif saved_data != corpus.fingerprint:
            what = (f"{saved_data.get('train_tokens')} -> {corpus.train_tokens} training tokens"
                    if saved_data.get("train_tokens") != corpus.train_tokens else "same size, other contents")
            if not cfg.resume_allow_data_change:
                raise ValueError(
                    f"cannot resume from {resume.path}: the training data differs from the data it was trained on "
                    f"({what}). Point data.* at the original data, or set resume_allow_data_change=true to continue "
                    f"on the new data")
            warn(f"resuming on changed data ({what}), as resume_allow_data_change=true asks")
        saved = resume.run_config
        if saved.get("data") != to_container(cfg)["data"] or saved.get("seed") != cfg.seed:
            warn("data or seed settings differ from the checkpoint's run; the data order will not continue exactly")

    def build_module(self, cfg: RunConfig, data):
        from .lm_module import LanguageModelModule

        return LanguageModelModule(cfg.model, cfg.optim, max_steps=cfg.trainer.max_steps, compile=cfg.trainer.compile,
                                   peak_flops=cfg.trainer.peak_flops)

    def init_weights(self, module, cfg: RunConfig):
        from .weights import load_weights

        return load_weights(module.model, cfg.init_from, strict=cfg.init_strict, freeze=cfg.init_freeze)

    def checkpoint_extras(self, cfg: RunConfig, data) -> dict:
        corpus = data.corpus
        return {K.RUN_CONFIG: to_container(cfg), K.TOKENIZER: corpus.tokenizer_path.read_text(),
                K.DATA_FINGERPRINT: corpus.fingerprint}

    def run_files(self, cfg: RunConfig, data) -> dict[str, str]:
        return {"tokenizer.json": data.corpus.tokenizer_path.read_text()}

    def hparams(self, cfg: RunConfig, data, module) -> dict:
        model, corpus = module.model, data.corpus
        return {**flat_dict(to_container(cfg)), "model.parameters": model.num_parameters(),
                "model.kv_cache_bytes_per_token": model.kv_cache_bytes_per_token(),
                "data.train_tokens": corpus.train_tokens, "data.val_tokens": corpus.val_tokens}

    def describe(self, cfg: RunConfig, data, module) -> str:
        corpus = data.corpus
        return (f"model: {module.model.num_parameters():,} parameters, attention {cfg.model.attention.type}; "
                f"data: {corpus.train_tokens:,} train / {corpus.val_tokens:,} val tokens")

    def callbacks(self, cfg: RunConfig, data) -> list:
        from .callbacks import TextSampleCallback

        return [TextSampleCallback(cfg.sample, data.corpus.tokenizer())]

    def fit(self, cfg: RunConfig, trainer, module, data, ckpt_path: str | None) -> None:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        if trainer.global_step % cfg.trainer.val_check_interval or "val/loss" not in trainer.callback_metrics:
            trainer.validate(module, datamodule=data, verbose=False)  # the final figure is always fresh

    def result(self, cfg: RunConfig, trainer, module, data, run_dir: Path, seconds: float) -> RunResult | None:
        val_loss = float(trainer.callback_metrics["val/loss"])
        if not trainer.is_global_zero:
            return None
        sample = next((c.last_sample for c in trainer.callbacks if hasattr(c, "last_sample")), None)
        return RunResult(run_dir, val_loss, trainer.global_step, seconds, sample, module.train_seconds())


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text
