"""The language-model task: text -> token store -> :class:`LanguageModelModule`, through the run skeleton.

Only the pieces that differ from other tasks live here (see :class:`transformer.training.run.Task`):
checking the data files and tokenizer up front, the vocabulary size taken from the tokenizer, the
tokenizer and data fingerprint that a resumed run must match, the text-sample callback, and the
final validation loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import checkpoint_keys as K
from .config import RunConfig, explicit_keys, flat_dict, to_container
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
        from .run_dir import outputs_summary

        return (f"\nrun directory: {self.run_dir}\nfinal validation loss: {self.val_loss:.4f} "
                f"after {self.steps} steps in {self.wall_time:.1f} s\n{outputs_summary(self.run_dir)}")

    def to_json(self) -> dict:
        return {"val_loss": self.val_loss, "steps": self.steps, "wall_time_s": self.wall_time,
                "train_time_s": self.train_time, "finished": True}


class LanguageModelTask(Task):
    name = "lm"
    monitor = "val/loss"

    def schema(self) -> type:
        return RunConfig

    def resolve_init(self, cfg: RunConfig, resume: Resume | None) -> None:
        """A resumed run continues with its checkpoint's model, adapters, base model and data settings
        wherever the config does not set them; a new run with ``init_from`` takes the architecture and
        tokenizer of that model (``init_source``). Then the block size must fit the model now known."""
        self.init_notes = []
        if resume is not None:
            _continue_settings(cfg, resume)
        elif cfg.init_from:
            self.init_notes = _adopt_init_source(cfg)
        if cfg.data.block_size > cfg.model.max_seq_len:
            where = "the init_from model's " if cfg.init_from and resume is None else ""
            raise ValueError(f"data.block_size={cfg.data.block_size} exceeds {where}model.max_seq_len={cfg.model.max_seq_len}; "
                             f"lower data.block_size (or raise model.max_seq_len, with RoPE scaling for a pretrained model)")

    def check_inputs(self, cfg: RunConfig) -> None:
        from ..data.corpus import check_data_files
        from ..data.tokenizer import load_tokenizer

        check_data_files(cfg.data)
        if cfg.data.tokenizer not in ("char", "bpe"):
            if not Path(cfg.data.tokenizer).exists():
                raise FileNotFoundError(f"data.tokenizer={cfg.data.tokenizer!r} is not 'char', 'bpe' or an existing "
                                        f"tokenizer.json / directory holding one")
            load_tokenizer(cfg.data.tokenizer, eos_token=cfg.data.eos_token)  # one-line error if malformed
        if cfg.data.format != "text":
            from ..data.chat import check_template_setting

            if cfg.data.tokenizer in ("char", "bpe"):
                raise ValueError(f"data.format={cfg.data.format} needs a trained tokenizer: init_from (whose tokenizer is "
                                 f"used) or data.tokenizer=PATH, not data.tokenizer={cfg.data.tokenizer}")
            check_template_setting(cfg.data.chat_template)
        if cfg.finetune.method == "qlora":
            from ..adapters.quant import require_torchao

            require_torchao()

    def build_data(self, cfg: RunConfig, rank: int):
        from ..data import ExampleDataModule, LMDataModule

        kind = LMDataModule if cfg.data.format == "text" else ExampleDataModule
        datamodule = kind(cfg.data, seed=cfg.seed, cache_root=Path(cfg.out_dir) / ".cache",
                                  max_val_batches=cfg.trainer.limit_val_batches)
        datamodule.prepare()
        return datamodule

    def prepare_data(self, cfg: RunConfig) -> None:
        self.resolve_init(cfg, None)
        self.check_inputs(cfg)
        self.build_data(cfg, 0)  # the token cache under out_dir/.cache (or data.cache_dir), reused by the runs

    def abandon_data(self, data) -> None:
        from ..data.token_store import discard_corpus

        if data.corpus is not None:
            discard_corpus(data.corpus)

    def settle_config(self, cfg: RunConfig, data, rank: int) -> None:
        vocab = data.corpus.vocab_size
        set_data = explicit_keys(cfg, "data") or set()
        if cfg.init_from and "tokenizer" not in set_data:  # the model's own tokenizer
            if vocab > cfg.model.vocab_size:
                raise ValueError(f"the tokenizer of init_from has {vocab} ids but the model only {cfg.model.vocab_size} "
                                 f"embeddings; set data.tokenizer to the model's own tokenizer")
            # its (often padded: Qwen, Llama-3) vocabulary stays as it is
        elif cfg.model.vocab_size != vocab:
            if rank == 0:
                print(f"model.vocab_size set to {vocab} from the tokenizer (config said {cfg.model.vocab_size})")
            cfg.model.vocab_size = vocab
        if cfg.sample.max_new_tokens:  # a prompt with no room would fail only after training
            prompt = len(data.corpus.tokenizer().encode(cfg.sample.prompt)) or 1
            if prompt >= cfg.model.max_seq_len:
                raise ValueError(f"sample.prompt is {prompt} tokens, which leaves no room under model.max_seq_len="
                                 f"{cfg.model.max_seq_len}; shorten it or set sample.max_new_tokens=0")
        if cfg.eval.tasks:  # unknown tasks, missing data files, probes past the context: before any training
            from .eval_callback import eval_plan

            eval_plan(cfg.eval, cfg.model, data.corpus.tokenizer())

    def check_resume(self, cfg: RunConfig, data, resume: Resume) -> None:
        from ..data.tokenizer import tokenizer_identity

        corpus = data.corpus
        saved_tokenizer = resume.extras.get(K.TOKENIZER)
        if saved_tokenizer is not None and tokenizer_identity(saved_tokenizer) != tokenizer_identity(corpus.tokenizer_path.read_text()):
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
                                   peak_flops=cfg.trainer.peak_flops, token_mean=cfg.data.format != "text")

    def init_weights(self, module, cfg: RunConfig, resume: Resume | None = None):
        """The ``init_from`` weights, then the adapters (``finetune``). A resumed full fine-tune needs neither
        (its checkpoint holds every weight); a resumed adapter run loads its base again — after checking it
        is the base it was trained on — and Lightning then restores the adapters."""
        from .base_model import base_fingerprint, check_base
        from .weights import load_weights

        adapters = cfg.finetune.adapters
        if resume is not None and not adapters:
            return None
        if adapters:  # the base the adapters belong to, by path and content hash (read once)
            self.base = (check_base(resume.extras.get(K.BASE_MODEL) or {}, cfg.init_from, f"resuming {resume.path}")
                         if resume is not None else base_fingerprint(cfg.init_from))
        for note in getattr(self, "init_notes", []):
            print(note)
        report = load_weights(module.model, cfg.init_from, strict=cfg.init_strict, freeze=cfg.init_freeze)
        if adapters:
            from ..adapters import apply_adapters

            adapter_report = apply_adapters(module.model, cfg.finetune)
            module.keep_only_trainable()
            if resume is None:
                print(adapter_report.format(cfg.finetune.method))
        return None if resume is not None else report

    def checkpoint_extras(self, cfg: RunConfig, data) -> dict:
        corpus = data.corpus
        extras = {K.RUN_CONFIG: to_container(cfg), K.TOKENIZER: corpus.tokenizer_path.read_text(),
                  K.DATA_FINGERPRINT: corpus.fingerprint}
        config = corpus.tokenizer_path.with_name("tokenizer_config.json")
        if config.is_file():
            extras[K.TOKENIZER_CONFIG] = config.read_text()
        if getattr(self, "base", None) is not None:
            extras[K.BASE_MODEL] = self.base
        return extras

    def run_files(self, cfg: RunConfig, data) -> dict[str, str]:
        files = {"tokenizer.json": data.corpus.tokenizer_path.read_text()}
        config = data.corpus.tokenizer_path.with_name("tokenizer_config.json")
        if config.is_file():
            files["tokenizer_config.json"] = config.read_text()
        return files

    def hparams(self, cfg: RunConfig, data, module) -> dict:
        model, corpus = module.model, data.corpus
        return {**flat_dict(to_container(cfg)), "model.parameters": model.num_parameters(),
                "model.kv_cache_bytes_per_token": model.kv_cache_bytes_per_token(),
                "model.kv_cache_bytes_per_token_at_max_len": model.kv_cache_bytes_per_token_at(),
                "data.train_tokens": corpus.train_tokens, "data.val_tokens": corpus.val_tokens}

    def describe(self, cfg: RunConfig, data, module) -> str:
        corpus = data.corpus
        text = (f"model: {module.model.num_parameters():,} parameters, attention {_attention_summary(module.model)}; "
                f"data: {corpus.train_tokens:,} train / {corpus.val_tokens:,} val tokens")
        counts = getattr(corpus, "counts", None)
        if counts:  # instruction / chat examples
            text += (f" trained on, in {counts['train_examples']:,} / {counts['val_examples']:,} examples from "
                     f"{counts['rows']:,} rows ({counts['truncated']} truncated, {counts['dropped_overlong']} dropped as "
                     f"longer than data.block_size, {counts['dropped_untrained']} with nothing to train on; template: "
                     f"{counts['template']})")
        return text

    def callbacks(self, cfg: RunConfig, data) -> list:
        from .callbacks import TextSampleCallback

        callbacks = [TextSampleCallback(cfg.sample, data.corpus.tokenizer())]
        if cfg.eval.tasks:
            from .eval_callback import EvalCallback, eval_plan

            tokenizer = data.corpus.tokenizer()
            callbacks.append(EvalCallback(cfg.eval, tokenizer, eval_plan(cfg.eval, cfg.model, tokenizer)))
        return callbacks

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


def _adopt_init_source(cfg: RunConfig) -> list[str]:
    """The architecture (and, unless ``data.tokenizer`` is set, the tokenizer) of ``init_from``; returns the
    report lines naming what was taken and what this config deliberately changed."""
    from .init_source import adopt_model_config, source_model_config, source_tokenizer

    source = source_model_config(cfg.init_from)
    if source is None:  # a checkpoint that records no model config: the config's model is used as it is
        return []
    explicit = explicit_keys(cfg, "model")
    if explicit is None:  # a config built in Python, not by load_config: what differs from the schema's default is set

        default = flat_dict(RunConfig.__dataclass_fields__["model"].default_factory().to_dict())
        explicit = {k for k, v in flat_dict(cfg.model.to_dict()).items() if default.get(k) != v}
    cfg.model, taken, applied = adopt_model_config(source, cfg.model, explicit)
    notes = [f"init_from {cfg.init_from}: the model is built from its architecture"]
    if taken:
        notes.append(f"  taken from it: {', '.join(taken)}")
    if applied:
        notes.append(f"  changed by this config: {', '.join(applied)}")
    set_data = explicit_keys(cfg, "data")
    if set_data is None or "tokenizer" not in set_data:
        tokenizer = source_tokenizer(cfg.init_from, f"{cfg.out_dir}/.cache")
        if tokenizer is None:
            raise ValueError(f"init_from={cfg.init_from} comes with no tokenizer.json; set data.tokenizer to the "
                             f"tokenizer the model was trained with")
        cfg.data.tokenizer = str(tokenizer)
        notes.append(f"  tokenizer: {tokenizer}")
    return notes


def _continue_settings(cfg: RunConfig, resume: Resume) -> None:
    """Fill every ``model`` / ``finetune`` / ``data`` key the config does not set, and ``init_from``, from the
    checkpoint's run: resuming a fine-tune needs no copy of its settings. A key the config sets stays, and
    the resume checks then compare it with the checkpoint's."""
    from ..adapters.config import FinetuneConfig
    from ..config import ModelConfig
    from ..data.config import DataConfig
    from .init_source import nest

    saved = resume.run_config
    saved_init = saved.get("init_from")
    if cfg.init_from and (not saved_init or Path(cfg.init_from).resolve() != Path(saved_init).resolve()):
        raise ValueError(f"cannot resume from {resume.path} with init_from={cfg.init_from!r}: its run started from "
                         f"{saved_init!r}. Leave init_from out (the checkpoint records it)")
    cfg.init_from = saved_init
    for section, build in (("model", ModelConfig.from_dict), ("finetune", lambda d: FinetuneConfig(**d)),
                           ("data", lambda d: DataConfig(**d))):
        set_keys = explicit_keys(cfg, section)
        if set_keys is None or section not in saved:
            continue
        current = flat_dict(to_container(cfg)[section])
        for key, value in flat_dict(saved[section]).items():
            if key in current and key not in set_keys:
                current[key] = value
        setattr(cfg, section, build(nest(current)))


def _attention_summary(model) -> str:
    """``gqa``, or for per-layer attention the layers in depth order with repeat counts
    (``gqa window 512 x3, gqa``)."""
    stack = model.decoder if hasattr(model, "decoder") else model.encoder
    types = [block.attn.attention_type + (f" window {block.attn.sliding_window}" if block.attn.sliding_window else "")
             for block in stack.blocks]
    runs = []
    for name in types:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    return ", ".join(name if count == 1 else f"{name} x{count}" for name, count in runs) if len(runs) > 1 else types[0]
