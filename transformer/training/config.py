"""The training run's config schema (OmegaConf structured configs over dataclasses) and its loading.

``load_config(path, overrides)`` merges, in order: the schema's defaults, the YAML file, and
``key.sub=value`` overrides; then it validates (unknown keys with a suggestion, wrong types, missing
values, cross-field checks), always naming the full key path. The result is a :class:`RunConfig`
of plain dataclasses; :func:`to_yaml` / :func:`flat_dict` give its saved and logged forms.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..adapters.config import FinetuneConfig
from ..config import ModelConfig
from ..data.config import DataConfig
from ..validation import choice, in_range, positive_fields

PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "64-true")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp", "fsdp2", "tp", "fsdp2_tp", "deepspeed")
MODEL_PARALLEL = ("fsdp2", "tp", "fsdp2_tp")  # through Lightning's ModelParallelStrategy (transformer/parallel)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    """AdamW with decoupled weight decay on matrices only, warmup then decay."""

    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 1e-4
    """Learning rate at the end of the schedule."""
    weight_decay: float = 0.1
    """Applied to weight matrices only (not norms, biases or embeddings)."""
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 50
    """Linear warmup from 0 to ``lr``."""
    schedule: str = "cosine"
    """After warmup: ``cosine`` or ``linear`` decay to ``min_lr`` at ``trainer.max_steps``, or ``constant``."""
    decay_steps: int | None = None
    """Length of the warmup + decay schedule (``None``: ``trainer.max_steps``). Set it to stop a run early
    and resume it later on the same schedule."""
    grad_clip: float = 1.0
    """Clip the global gradient norm (0 = off)."""
    fused: bool | None = None
    """Fused AdamW kernel, one kernel per parameter instead of ~10 (``None``: on when the parameters are on
    CPU or CUDA, where torch has it, unless Lightning's mixed-precision plugin clips gradients, which it
    refuses to do for fused optimizers). For the 26 tensors of the 0.8 M-parameter default model on CPU:
    0.44 ms per step vs 2.0 ms for the loop implementation."""

    def __post_init__(self) -> None:
        choice("optim.schedule", self.schedule, SCHEDULES)
        in_range("optim.lr", self.lr, 0.0, low_open=True)
        in_range("optim.min_lr", self.min_lr, 0.0, self.lr)
        for name in ("warmup_steps", "grad_clip", "weight_decay", "eps"):
            in_range(f"optim.{name}", getattr(self, name), 0.0)
        for name in ("beta1", "beta2"):
            in_range(f"optim.{name}", getattr(self, name), 0.0, 1.0, high_open=True)
        positive_fields("optim", self, ("decay_steps",), optional=True)


@dataclass
class TrainerConfig:
    """Lightning Trainer settings."""

    accelerator: str = "auto"
    """``cpu``, ``gpu`` / ``cuda``, ``mps`` or ``auto``."""
    devices: Any = "auto"
    """Devices per node: a count, a list of indices, or ``auto``."""
    num_nodes: int = 1
    strategy: str = "auto"
    """``auto``, ``ddp``, ``fsdp`` (shards each transformer block), ``fsdp2`` (``fully_shard`` per transformer block
    through Lightning's ``ModelParallelStrategy``; bf16 compute with fp32 gradient reduction under ``bf16-mixed``),
    ``tp`` (tensor parallelism over every process: each holds a share of every block's heads and MLP units),
    ``fsdp2_tp`` (``tensor_parallel_size`` processes per tensor-parallel group, FSDP2 across the groups),
    ``ddp_spawn``, ``deepspeed``. See README "Scaling out"."""
    tensor_parallel_size: int | None = None
    """Processes per tensor-parallel group under ``fsdp2_tp`` (required; it must divide the number of processes,
    and every layer's head counts and MLP width); under ``tp`` every process (``None``, or that number)."""
    context_parallel_size: int = 1
    """Under ``fsdp2`` / ``fsdp2_tp``: split every sequence across this many processes (ring attention, zig-zag
    shards; times ``tensor_parallel_size`` it must divide the number of processes, and ``2 x`` it
    ``data.block_size``). The processes of one group share a batch; FSDP2 shards the parameters over the data and
    context ranks. README "Scaling out"."""
    precision: str = "32-true"
    """``32-true``, ``16-mixed``, ``bf16-mixed`` or ``bf16-true``."""
    max_steps: int = 500
    """Optimizer steps to train for (also the length of the LR schedule)."""
    val_check_interval: int = 100
    """Validate (and checkpoint) every this many optimizer steps, and at the end."""
    limit_val_batches: int | None = 20
    """Validation batches per check (``None``: the whole validation split)."""
    log_every_n_steps: int = 10
    accumulate_grad_batches: int = 1
    compile: bool = False
    """``torch.compile`` the model before training."""
    deterministic: bool = False
    """Ask torch for deterministic kernels (slower; CPU runs are deterministic regardless)."""
    tf32: bool = True
    """fp32 matmuls and convolutions on TF32 tensor cores (Ampere+ GPUs; ~8x the fp32 rate with a 10-bit
    mantissa; torch's ``float32_matmul_precision('high')``). ``false`` keeps full fp32. No effect on CPU."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device, for the MFU metric (``None``: looked up for known GPUs, else no MFU)."""
    progress_bar: bool = True
    """Show progress: a bar on a terminal; plain lines (step, loss, tokens/s, lr, elapsed, ETA) when stdout is
    not a terminal (``nohup``, SLURM), plus one line per validation. ``false``: neither."""
    progress_every_n_steps: int | None = None
    """Steps between plain progress lines (``None``: about 50 per run); rounded up to a multiple of
    ``log_every_n_steps``."""
    early_stopping_patience: int | None = None
    """Stop when the monitored validation metric (``val/loss``; regression: ``val/rmse``) has not improved by
    ``early_stopping_min_delta`` for this many validation checks in a row; the best checkpoint is kept and
    used for the final metrics. ``None``: train for ``max_steps``."""
    early_stopping_min_delta: float = 0.0
    """The improvement that counts for early stopping, in the metric's units."""

    def __post_init__(self) -> None:
        self.precision = str(self.precision)
        choice("trainer.precision", self.precision, PRECISIONS)
        choice("trainer.strategy", self.strategy, STRATEGIES)
        positive_fields("trainer", self, ("tensor_parallel_size",), optional=True)
        positive_fields("trainer", self, ("context_parallel_size",))
        if self.context_parallel_size > 1 and self.strategy not in ("fsdp2", "fsdp2_tp"):
            raise ValueError(f"trainer.context_parallel_size={self.context_parallel_size} needs trainer.strategy=fsdp2 or "
                             f"fsdp2_tp (got {self.strategy!r})")
        if self.strategy == "fsdp2_tp" and self.tensor_parallel_size is None:
            raise ValueError("trainer.strategy=fsdp2_tp needs trainer.tensor_parallel_size (processes per "
                             "tensor-parallel group, e.g. the GPUs of one node)")
        if self.tensor_parallel_size is not None and self.strategy not in ("tp", "fsdp2_tp"):
            raise ValueError(f"trainer.tensor_parallel_size={self.tensor_parallel_size} needs trainer.strategy=tp or "
                             f"fsdp2_tp (got {self.strategy!r})")
        choice("trainer.accelerator", self.accelerator, ACCELERATORS)
        self.devices = parse_devices(self.devices)
        positive_fields("trainer", self, ("num_nodes", "max_steps", "val_check_interval", "log_every_n_steps", "accumulate_grad_batches"))
        positive_fields("trainer", self, ("limit_val_batches", "progress_every_n_steps", "early_stopping_patience"), optional=True)
        in_range("trainer.early_stopping_min_delta", self.early_stopping_min_delta, 0.0)
        if self.peak_flops is not None:
            in_range("trainer.peak_flops", self.peak_flops, 0.0, low_open=True)


@dataclass
class WandbConfig:
    enabled: bool = False
    """Log to Weights & Biases."""
    project: str = "transformer-toolkit"
    entity: str | None = None
    group: str | None = None
    """Group runs (sweeps set this to the experiment name)."""
    tags: list[str] = field(default_factory=list)
    offline: bool = False
    """Write the run locally only (also when ``WANDB_MODE=offline``); sync later with ``wandb sync``."""


@dataclass
class LoggerConfig:
    csv: bool = True
    """``<run>/csv/metrics.csv`` and the flat config in ``hparams.yaml``: works everywhere."""
    tensorboard: bool = False
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class CheckpointConfig:
    save_top_k: int = 2
    """Keep the k best checkpoints by validation loss (and always ``last.ckpt``); 0: none, -1: all."""
    save_last: bool = True
    sharded: bool = False
    """Under ``trainer.strategy=fsdp2 | tp | fsdp2_tp``: each rank writes its own shards (``torch.distributed.
    checkpoint``; every checkpoint a directory, no rank ever holds the whole model) instead of one gathered file.
    Resumes onto any number of processes of these strategies; ``transformer.export`` / ``sample`` / ``evaluate``
    read it directly (consolidating the weights)."""

    def __post_init__(self) -> None:
        in_range("checkpoint.save_top_k", self.save_top_k, -1)


@dataclass
class SampleConfig:
    """Text samples printed (and logged) during and after training."""

    every_n_steps: int = 0
    """Print a sample every this many steps (0: only at the end)."""
    prompt: str = "\n"
    max_new_tokens: int = 200
    """Length of each sample (0: no samples)."""
    temperature: float = 0.8
    """0: greedy."""
    top_k: int | None = 50

    def __post_init__(self) -> None:
        in_range("sample.every_n_steps", self.every_n_steps, 0)
        in_range("sample.max_new_tokens", self.max_new_tokens, 0)
        in_range("sample.temperature", self.temperature, 0.0)
        positive_fields("sample", self, ("top_k",), optional=True)


@dataclass
class EvalConfig:
    """Evaluation during training: built-in probes and lm-eval tasks, logged as ``eval/<task>/<metric>``
    (``python -m transformer.evaluate`` runs the same tasks on a finished run; names as there)."""

    tasks: list[str] = field(default_factory=list)
    """e.g. ``[probes]``, ``[passkey_64, assoc_recall, length_extrapolation]``, or lm-eval task names (with
    ``include_path``). Empty: no evaluation."""
    every_n_steps: int = 0
    """Evaluate every this many optimizer steps (0: only at the end of training)."""
    limit: int | None = None
    """At most this many documents per task (None: all)."""
    probe_docs: int = 100
    """Documents generated per probe task."""
    probe_lengths: list[int] | None = None
    """Probe context lengths in tokens (None: a quarter, half and all of ``model.max_seq_len``)."""
    include_path: str | None = None
    """A directory of lm-eval task YAMLs over local files."""
    batch_size: int = 16
    factors: list[int] = field(default_factory=lambda: [1, 2, 4])
    """``length_extrapolation``: multiples of ``model.max_seq_len``."""
    blocks: int = 4
    """``length_extrapolation``: validation blocks of the longest length."""
    seed: int = 0
    """Seed of the probes' documents (the same documents at every evaluation)."""

    def __post_init__(self) -> None:
        in_range("eval.every_n_steps", self.every_n_steps, 0)
        positive_fields("eval", self, ("probe_docs", "batch_size", "blocks"))
        positive_fields("eval", self, ("limit",), optional=True)
        for key in ("factors", "probe_lengths"):
            values = getattr(self, key)
            if values is not None and (not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values)):
                raise ValueError(f"eval.{key}={list(values)!r} must be a non-empty list of positive whole numbers")
        if any(not isinstance(t, str) or not t.strip() for t in self.tasks):
            raise ValueError(f"eval.tasks={list(self.tasks)!r} must be task names")


@dataclass
class RunCommon:
    """The keys every task's run config has (language model, regression, ...), with one name and one docstring."""

    task: str = "lm"
    """Which pipeline runs the config: ``lm`` (:class:`RunConfig`) or ``regression``
    (``regression.config.RegressionRunConfig``); the registry is ``transformer.training.tasks``."""
    name: str = "default"
    """Run name: the run directory is ``<out_dir>/<name>-<timestamp>``."""
    out_dir: str = "runs"
    """Where run directories (and the token cache, ``<out_dir>/.cache``) are created."""
    seed: int = 1337
    resume_from: str | None = None
    """Continue a run exactly: ``auto`` (the newest ``<out_dir>/<name>-*`` run with ``checkpoints/last.ckpt``)
    or a checkpoint path. Restores weights, optimizer, schedule, step, RNG, data position, logger run.
    Resuming a run's ``last.ckpt`` continues in that run's directory (refused while another process
    trains in it); any other checkpoint continues in a new run directory, leaving the original as it is.
    The model, the tokenizer, the training data and the optimizer settings that the restored optimizer
    state carries (``optim.lr``, ``beta1``, ``beta2``, ``eps``, ``weight_decay``) must be those of the
    checkpoint; to change them, start a new run with ``init_from``. Schedule settings and
    ``trainer.max_steps`` may change."""
    resume_allow_data_change: bool = False
    """With ``resume_from``: accept training data that differs from the data the checkpoint was trained on
    (another file, edited contents). Off by default, since the run would silently mix two data sets."""
    init_from: str | None = None
    """Start from a trained model: a checkpoint, an export directory or a Hugging Face directory. The model is
    built from *its* architecture (every ``model.*`` setting, reported) and, unless ``data.tokenizer`` is
    set, uses its tokenizer. A ``model.*`` key that contradicts it is an error, except the deliberate changes
    listed in ``transformer.training.init_source.CHANGEABLE`` (dropout, context length with RoPE scaling,
    key/value heads — converted as in GQA uptraining —, vocabulary size for a new tokenizer, ...)."""
    init_strict: bool = False
    """With ``init_from``: any missing, unexpected or re-initialised key is an error."""
    init_freeze: list[str] = field(default_factory=list)
    """With ``init_from``: module names whose parameters are not trained, e.g. ``[embed, decoder.blocks.0]``."""

    def check_common(self, task: str) -> None:
        if self.task != task:
            raise ValueError(f"task={self.task!r}: this schema is for task: {task}")
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"name={self.name!r} must be a non-empty name without '/' (it names the run directory)")
        if not self.out_dir:
            raise ValueError("out_dir must name a directory")
        in_range("seed", self.seed, 0, 2**32 - 1)
        if self.resume_allow_data_change and not self.resume_from:
            raise ValueError("resume_allow_data_change=true only applies with resume_from")
        check_fused_optimizer(self.optim, self.trainer.precision)
        checkpoint = getattr(self, "checkpoint", None)
        if checkpoint is not None and checkpoint.sharded and self.trainer.strategy not in MODEL_PARALLEL:
            raise ValueError(f"checkpoint.sharded=true needs trainer.strategy={' | '.join(MODEL_PARALLEL)} (got "
                             f"{self.trainer.strategy!r}); other strategies write one gathered file")


@dataclass
class RunConfig(RunCommon):
    """One language-model training run."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        embed_dim=128, num_heads=4, num_layers=4, max_seq_len=128, norm="rmsnorm", mlp="swiglu",
        attention={"type": "mha", "positional": "rope"}))
    """Default: a small Llama-style LM (RoPE, RMSNorm, SwiGLU) that trains in minutes on a CPU."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        self.check_common("lm")
        if self.finetune.adapters and not (self.init_from or self.resume_from):
            raise ValueError(f"finetune.method={self.finetune.method} adapts a trained model: set init_from to it "
                             f"(a Hugging Face directory, an export or a checkpoint)")
        # with init_from / resume_from the model comes from the checkpoint: checked once it is known (lm_task)
        if self.data.block_size > self.model.max_seq_len and not (self.init_from or self.resume_from):
            raise ValueError(
                f"data.block_size={self.data.block_size} exceeds model.max_seq_len={self.model.max_seq_len}"
            )


# ----------------------------------------------------------------------------------- loading
class ConfigError(ValueError):
    """A config problem, with the full key path (and the file or override it came from) in the message."""


def read_yaml(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """A YAML file as a plain dict: one-line errors for a missing file, a syntax error (with its line) or a
    top level that is not a mapping."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a directory; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text (is it a binary file?)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{what} {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys (key: value), not a {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *, schema: type = None) -> RunConfig:
    """Schema defaults <- YAML file <- ``key=value`` overrides, validated into a :class:`RunConfig` (or ``schema``).

    Errors name the key path and where the value came from: the file, or the override. An override
    whose value YAML reads as a mapping or list (``sample.prompt=ROMEO:``) is taken as the plain
    string the user typed when the key holds a string.
    """
    schema = schema or RunConfig
    merged = OmegaConf.structured(schema)
    source = None
    explicit: set[str] = set()
    try:
        if path is not None:
            source = f"in {path}"
            data = read_yaml(path)
            explicit |= set(flat_dict(data))
            merged = OmegaConf.merge(merged, OmegaConf.create(data))
        for override in overrides:
            source = f"from the override {override!r}"
            merged = _apply_override(merged, override)
            explicit.add(override.split("=", 1)[0].lstrip("+~"))
        source = f"in {path}" if path is not None else None
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"missing required config value(s): {', '.join(missing)}")
        source = "in the merged config" if path is not None or overrides else None
        cfg = OmegaConf.to_object(merged)
        set_explicit_keys(cfg, explicit)
        return cfg
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err, schema, source)) from None
    except ValueError as err:  # __post_init__ checks: messages already carry the key path
        raise ConfigError(f"{err}" + (f" ({source})" if source else "")) from None


EXPLICIT_KEYS = "_explicit_keys"


def set_explicit_keys(cfg, keys) -> None:
    """Record which dotted keys the user set (YAML file or override): ``init_from`` and resuming take the
    rest of the model from the checkpoint, and must know a default from a deliberate value."""
    object.__setattr__(cfg, EXPLICIT_KEYS, frozenset(keys))


def explicit_keys(cfg, section: str) -> set[str] | None:
    """The keys under ``section.`` the user set (``{"attention.rope_theta", ...}``); None when unknown (a
    config not made by :func:`load_config`)."""
    keys = getattr(cfg, EXPLICIT_KEYS, None)
    if keys is None:
        return None
    prefix = section + "."
    return {k[len(prefix):] for k in keys if k.startswith(prefix)} | ({""} if section in keys else set())


def _apply_override(merged, override: str):
    if "=" not in override or override.startswith("="):
        raise ConfigError(f"overrides must look like key.sub=value; got {override!r}")
    key, raw = override.split("=", 1)
    try:
        return OmegaConf.merge(merged, OmegaConf.from_dotlist([override]))
    except OmegaConfBaseException:
        if _is_string_field(merged, key):  # YAML read the text as a mapping / list; the key wants the text itself
            return OmegaConf.merge(merged, OmegaConf.create(_nest(key, raw)))
        raise


def _is_string_field(merged, key: str) -> bool:
    """Whether ``key`` names a (possibly null) ``str`` field of the structured config."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(merged, parent_key) if parent_key else merged
    if parent is None or not OmegaConf.is_config(parent):
        return False
    try:
        hints = dataclasses.fields(OmegaConf.get_type(parent))
    except TypeError:
        return False
    return any(f.name == leaf and str(f.type).replace(" ", "") in ("str", "str|None", "Optional[str]") for f in hints)


def _nest(key: str, value: Any) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _describe(err: OmegaConfBaseException, schema: type, source: str | None) -> str:
    key = getattr(err, "full_key", None) or ""
    if not key and source and source.startswith("from the override"):
        key = source.split("'", 2)[1].split("=", 1)[0]
    key = key or "?"
    first = str(err).splitlines()[0]
    where = f" ({source})" if source else ""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and key != "?":
        known = _known_at(schema, key)
        if known is not None and key.rsplit(".", 1)[-1] not in known:
            from ..validation import closest

            leaf = key.rsplit(".", 1)[-1]
            near = closest(leaf, known)
            parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
            hint = f"; did you mean {parent}{near}?" if near else f" (known keys: {', '.join(known)})"
            return f"unknown config key {key}{hint}{where}"
    return f"config key {key}: {first}{where}"


def _known_at(schema: type, key: str) -> list[str] | None:
    """The field names of the section holding ``key`` (``model.attention.foo`` -> the attention fields)."""
    cls = schema
    for part in key.split(".")[:-1]:
        sub = {f.name: f for f in dataclasses.fields(cls)}.get(part) if dataclasses.is_dataclass(cls) else None
        if sub is None:
            return None
        default = sub.default_factory() if sub.default_factory is not dataclasses.MISSING else sub.default
        cls = type(default) if dataclasses.is_dataclass(default) else None
        if cls is None:
            return None
    return sorted(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_container(cfg: RunConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def run_config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a :class:`RunConfig` from its saved dict form (e.g. inside a checkpoint)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(data)))


def flat_dict(cfg: RunConfig | dict, prefix: str = "") -> dict[str, Any]:
    """``{"model.attention.type": "gqa", ...}``: the form loggers get, so runs compare by key."""
    data = to_container(cfg) if dataclasses.is_dataclass(cfg) else cfg
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_dict(value, name + "."))
        else:
            flat[name] = value
    return flat


def amp_clips_gradients(optim: OptimConfig, precision: str) -> bool:
    """Whether Lightning's mixed-precision plugin will clip gradients; it refuses to for fused optimizers."""
    return str(precision) in ("16-mixed", "bf16-mixed") and optim.grad_clip > 0


def check_fused_optimizer(optim: OptimConfig, precision: str) -> None:
    if optim.fused and amp_clips_gradients(optim, precision):
        raise ValueError(
            f"optim.fused=true cannot be combined with optim.grad_clip={optim.grad_clip} under trainer.precision={precision}: "
            "Lightning's mixed-precision plugin does not clip the gradients of a fused optimizer. "
            "Set optim.grad_clip=0 or leave optim.fused unset (it then turns itself off here)"
        )


def parse_devices(value: Any) -> Any:
    """``trainer.devices`` as Lightning takes it: ``auto``, a count >= 1 (``-1``: all), or device indices
    (a list, or a string such as ``"0,1"``); anything else is an error naming the key."""
    if value == "auto" or value == -1:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"trainer.devices={value!r} must be >= 1 (or -1 for all, or auto); to train on CPU set trainer.accelerator=cpu")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return parse_devices(int(text))
        parts = [p.strip() for p in text.strip("[]").split(",") if p.strip()]
        if parts and all(p.isdigit() for p in parts):
            return [int(p) for p in parts]
    elif isinstance(value, (list, tuple)) and value and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        return list(value)
    raise ValueError(f"trainer.devices={value!r} is not a device count, a list of device indices (e.g. [0,1]) or auto")


__all__ = ["RunCommon", "RunConfig", "read_yaml", "DataConfig", "OptimConfig", "TrainerConfig", "LoggerConfig", "WandbConfig",
           "CheckpointConfig", "SampleConfig", "ConfigError", "MISSING", "load_config", "to_yaml", "flat_dict",
           "to_container", "run_config_from_dict", "explicit_keys", "set_explicit_keys", "FinetuneConfig"]
