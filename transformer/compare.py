"""Compare logged runs: a table (Markdown + CSV) and plots, from an experiment directory or run directories.

    python -m transformer.compare runs/attention-20261122-101500          # a sweep's experiment directory
    python -m transformer.compare runs/a-2026... runs/b-2026... --out report/

For every run: attention type, heads / KV heads / latent rank, parameters, KV-cache bytes per token
(analytic, and relative to an MHA cache of the same width), training tokens/s (median of the logged
values), decode tokens/s with the KV cache (measured here on the run's best checkpoint: batch 1, the
same prompt and length for every run, greedy, median of 5 rounds interleaved across the runs, with the
rounds' spread; a spread over 25% is flagged), best validation loss and perplexity, wall time, and the
quality ratio to the MHA run (``ppl_MHA / ppl_run``; 1.0 = as good as MHA). MHA comes first.

Plots: validation loss vs step (1-based, as checkpoint names count) and vs wall time; KV-cache bytes
vs best validation loss with the trade-off frontier, and vs mean probe accuracy where the runs were evaluated
(``python -m transformer.evaluate`` or ``eval.tasks``: its tasks are columns too); each run has one colour in all.
With ``--scaling 512,1024,4096``: time and peak memory of one training step of every run's attention layers at each
length (``transformer.scaling``, as ``bench/attention_scaling.py`` measures one layer), a table and
``attention_scaling.png``.
Runs whose configs differ in anything besides the compared (swept) keys are flagged, naming the keys, so an unfair
comparison is never silent.

Regression runs get their own table: test RMSE / MAE / R², every baseline's test RMSE and the ratio to the best
baseline (from ``result.json``).

Runs are read from ``config.yaml`` + ``csv/metrics.csv`` (+ ``result.json``); a run logged only to
W&B offline contributes its ``wandb-summary.json`` (final values; no history, so no curves).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import yaml

from .training.config import flat_dict
from .training.run_dir import best_or_last_checkpoint

IGNORED_PREFIXES = ("name", "out_dir", "logger.", "resume_", "init_", "sample.", "trainer.progress_bar", "data.cache_dir",
                    "data.num_workers", "data.num_proc", "trainer.log_every_n_steps")
ATTENTION_PREFIX = "model.attention."


@dataclass
class Run:
    path: Path
    config: dict
    flat: dict
    history: pd.DataFrame
    result: dict = field(default_factory=dict)
    row: dict = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)  # config differences from the other runs (fairness)
    notes: list[str] = field(default_factory=list)  # about the measurements (no checkpoint, noisy decode speed)


def run_label(path: Path) -> str:
    """A run directory's name without its ``-YYYYmmdd-HHMMSS`` suffix (the sweep label)."""
    import re

    return re.sub(r"-\d{8}-\d{6}(-\d+)?$", "", path.name)


def find_runs(paths: list[str | Path]) -> tuple[list[Path], list[str]]:
    """Run directories (holding ``config.yaml``) under the given paths, and the swept keys if a sweep says so."""
    runs, swept = [], []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if (p / "config.yaml").is_file():
            runs.append(p)
            continue
        if (p / "sweep.json").is_file():
            swept += json.loads((p / "sweep.json").read_text()).get("swept_keys", [])
        found = sorted(d for d in p.iterdir() if d.is_dir() and (d / "config.yaml").is_file())
        if not found:
            raise FileNotFoundError(f"{p} holds no run directories (directories with config.yaml)")
        runs += found
    return runs, sorted(set(swept))


def load_run(path: Path) -> Run:
    """One run's config, logged history and result; a damaged file is named in a one-line error."""
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path / 'config.yaml'} is not a readable run config ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path / 'config.yaml'} does not hold a run config")
    history = pd.DataFrame()
    if (path / "csv" / "metrics.csv").is_file():
        try:
            history = pd.read_csv(path / "csv" / "metrics.csv")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ValueError(f"{path / 'csv' / 'metrics.csv'} is damaged ({' '.join(str(err).split())[:120]}); "
                             f"leave that run out of the comparison") from None
    else:
        summaries = sorted(path.glob("wandb/*run-*/files/wandb-summary.json"))
        if summaries:
            summary = json.loads(summaries[-1].read_text())
            history = pd.DataFrame([{k: v for k, v in summary.items() if isinstance(v, (int, float))}])
    try:
        result = json.loads((path / "result.json").read_text()) if (path / "result.json").is_file() else {}
    except ValueError:
        raise ValueError(f"{path / 'result.json'} is not valid JSON; leave that run out of the comparison") from None
    return Run(path, config, flat_dict(config), history, result)


NOISY_SPREAD = 0.25  # (max - min) / median of a run's decode rounds above this: the figure is flagged as noisy


@torch.inference_mode()
def decode_speeds(checkpoints: list[Path | None], *, prompt_len: int = 16, new_tokens: int = 64,
                  rounds: int = 5, cache: str = "contiguous") -> list[dict | None]:
    """Decode tokens/s of each checkpoint (batch 1, greedy, KV cache of kind ``cache``), measured in interleaved
    rounds (run A, B, C, then A, B, C again ...) so a machine that gets busier part-way slows every run alike.
    Returns the median and the spread ``(max - min) / median`` over the rounds (None where there is no checkpoint)."""
    from .generation import generate
    from .training.weights import load_model

    jobs = {}
    for i, path in enumerate(checkpoints):
        if path is None:
            continue
        model, _ = load_model(path)
        n = min(new_tokens, model.cfg.max_seq_len - prompt_len)
        prompt = torch.randint(0, model.cfg.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))
        generate(model, prompt, 4, temperature=0, cache=cache)  # warm-up
        jobs[i] = (model, prompt, n, [])
    for _ in range(rounds):
        for model, prompt, n, speeds in jobs.values():
            t0 = time.perf_counter()
            generate(model, prompt, n, temperature=0, cache=cache)
            speeds.append(n / (time.perf_counter() - t0))
    out: list[dict | None] = [None] * len(checkpoints)
    for i, (_, _, _, speeds) in jobs.items():
        median = statistics.median(speeds)
        out[i] = {"median": median, "spread": (max(speeds) - min(speeds)) / median, "rounds": len(speeds)}
    return out


def cache_kind_figures(checkpoint: Path, kinds: list[str], *, eval_batches: int | None = None) -> dict:
    """Per cache kind: KV bytes per token (all layers) and validation perplexity with the split read through
    that cache (``transformer.training.evaluate.validation_loss``), with its change against the contiguous
    cache measured the same way."""
    from .training.checkpoint_io import read_checkpoint
    from .training.checkpoint_keys import RUN_CONFIG
    from .training.config import run_config_from_dict
    from .training.evaluate import validation_loss
    from .training.weights import load_model

    model, _ = load_model(checkpoint)
    run_cfg = run_config_from_dict(read_checkpoint(checkpoint)[RUN_CONFIG])
    losses = {kind: validation_loss(model, run_cfg, cache=kind, max_batches=eval_batches) for kind in dict.fromkeys(["contiguous", *kinds])}
    out = {}
    for kind in kinds:
        caches = model.new_caches(1, 1, kind=kind)
        out[f"kv_bytes_{kind}"] = sum(c.self_attn.bytes_per_token() for c in caches)
        out[f"val_ppl_{kind}"] = round(math.exp(min(losses[kind], 30)), 4)
        out[f"ppl_change_{kind}"] = round(math.exp(losses[kind] - losses["contiguous"]) - 1, 7)
    return out


def _model_figures(config: dict) -> dict:
    """Parameters, decoding-state bytes per token at the trained length and attention FLOPs per token, from the
    config alone (meta device: no memory)."""
    from .config import ModelConfig
    from .transformer_model import build_model

    cfg = ModelConfig.from_dict(config["model"])
    with torch.device("meta"):
        model = build_model(cfg)
    stack = model.decoder if hasattr(model, "decoder") else model.encoder
    attn = stack.blocks[0].attn
    head_dim = cfg.attention.head_dim or cfg.embed_dim // cfg.num_heads
    mha_bytes = 2 * len(stack.blocks) * cfg.num_heads * head_dim * 4
    # Per token averaged over the trained context: rolling windows are capped, linear attention's state is fixed.
    kv_bytes = model.kv_cache_bytes_per_token_at(cfg.max_seq_len, torch.float32)
    kv_bytes = int(kv_bytes) if float(kv_bytes).is_integer() else round(kv_bytes, 1)
    types = list(dict.fromkeys(block.attn.attention_type for block in stack.blocks))
    return {"parameters": model.num_parameters(), "kv_bytes": kv_bytes, "kv_vs_mha": kv_bytes / mha_bytes,
            "kv_heads": getattr(attn, "num_kv_heads", cfg.num_heads), "latent": getattr(attn, "kv_lora_rank", None),
            "attention": "+".join(types), "pattern": _pattern_label(cfg),
            "attention_flops": sum(block.attn.attention_flops_per_token(cfg.max_seq_len) for block in stack.blocks)}


def _pattern_label(cfg) -> str:
    """``local,local,global`` for a pattern (``+overrides`` when layers are overridden), ``-`` when uniform."""
    if cfg.uniform_attention:
        return "-"
    label = ",".join(cfg.attention_pattern) if cfg.attention_pattern else "default"
    return label + (f"+layers {','.join(str(k) for k in sorted(cfg.attention_layers))}" if cfg.attention_layers else "")


def fairness_flags(runs: list[Run], swept: list[str]) -> None:
    """Flag, per run, every non-compared config key whose value differs from the majority of the runs."""
    keys = set().union(*(r.flat for r in runs))
    for key in sorted(keys):
        if key.startswith(IGNORED_PREFIXES) or key in swept or (not swept and key.startswith(ATTENTION_PREFIX)):
            continue
        values = [json.dumps(r.flat.get(key), sort_keys=True) for r in runs]
        if len(set(values)) < 2:
            continue
        majority, _ = Counter(values).most_common(1)[0]
        for run, value in zip(runs, values):
            if value != majority:
                run.flags.append(f"{key}={json.loads(value)!r} (others: {json.loads(majority)!r})")


def order_runs(runs: list[Run]) -> list[Run]:
    """MHA first (the reference every ratio is taken against), then the others in their given (sweep) order."""
    def is_reference(run: Run) -> bool:  # plain MHA in every layer: no pattern, no per-layer override
        model = run.config.get("model", {})
        return (model.get("attention", {}).get("type") == "mha" and not model.get("attention_pattern")
                and not model.get("attention_layers"))

    return sorted(runs, key=lambda r: not is_reference(r))


def build_rows(runs: list[Run], *, measure_decode: bool = True, decode_rounds: int = 5, caches: list[str] | None = None) -> None:
    """One table row per run. ``caches``: KV cache kinds to compare besides the contiguous one (bytes per
    token, validation perplexity through the cache and its change, decode tokens/s)."""
    checkpoints = [best_or_last_checkpoint(run.path) for run in runs]
    speeds = decode_speeds(checkpoints, rounds=decode_rounds) if measure_decode else [None] * len(runs)
    extra_kinds = [k for k in dict.fromkeys(caches or []) if k != "contiguous"]
    kind_speeds = {k: decode_speeds(checkpoints, rounds=decode_rounds, cache=k) if measure_decode else [None] * len(runs)
                   for k in extra_kinds}
    for index, (run, ckpt, speed) in enumerate(zip(runs, checkpoints, speeds)):
        figures = _model_figures(run.config)
        h = run.history
        val = h[["step", "val/loss"]].dropna() if "val/loss" in h else pd.DataFrame()
        best = float(val["val/loss"].min()) if len(val) else float(run.result.get("val_loss", math.nan))
        tps = h["train/tokens_per_sec"].dropna() if "train/tokens_per_sec" in h else pd.Series(dtype=float)
        peak = h["train/peak_memory_mb"].dropna() if "train/peak_memory_mb" in h else pd.Series(dtype=float)
        decode = speed["median"] if speed else math.nan
        spread = speed["spread"] if speed else math.nan
        if ckpt is None:
            run.notes.append("no checkpoint: decode speed not measured")
        elif speed and spread > NOISY_SPREAD:
            run.notes.append(f"decode speed noisy: rounds spread {spread:.0%} of the median (a busy machine?)")
        wall = run.result.get("wall_time_s")
        if wall is None and "time/elapsed_s" in h:
            wall = float(h["time/elapsed_s"].dropna().max())
        run.row = {
            "run": run_label(run.path), "attention": figures["attention"], "pattern": figures["pattern"],
            "heads": run.config["model"]["num_heads"],
            "kv_heads": figures["kv_heads"] if figures["attention"] != "mla" else "-", "latent_rank": figures["latent"] or "-",
            "parameters": figures["parameters"], "kv_cache_bytes_per_token": figures["kv_bytes"],
            "kv_cache_vs_mha": round(figures["kv_vs_mha"], 4), "attention_flops_per_token": round(figures["attention_flops"]),
            "peak_train_memory_mb": round(float(peak.max()), 1) if len(peak) else math.nan,
            "train_tokens_per_s": round(float(tps.median()), 1) if len(tps) else math.nan,
            "decode_tokens_per_s": round(decode, 1), "decode_spread": round(spread, 3), "best_val_loss": round(best, 4), "best_val_ppl": round(math.exp(min(best, 30)), 3),
            "wall_time_s": round(float(wall), 1) if wall is not None else math.nan,
        }
        if extra_kinds and ckpt is not None:
            run.row.update(cache_kind_figures(ckpt, extra_kinds))
            for kind in extra_kinds:
                kind_speed = kind_speeds[kind][index]
                run.row[f"decode_tokens_per_s_{kind}"] = round(kind_speed["median"], 1) if kind_speed else math.nan
    mha = [r for r in runs if r.row["attention"] == "mha" and r.row["pattern"] == "-"]
    evaluated = [eval_figures(run) for run in runs]
    columns = sorted(set().union(*evaluated) - {"probe_acc"})
    for run, figures in zip(runs, evaluated):
        run.row["quality_vs_mha"] = round(math.exp(mha[0].row["best_val_loss"] - run.row["best_val_loss"]), 4) if mha else math.nan
        if any("probe_acc" in f for f in evaluated):
            run.row["probe_acc"] = figures.get("probe_acc", math.nan)
        run.row.update({column: figures.get(column, math.nan) for column in columns})
        run.row["flags"] = "; ".join(run.flags + run.notes)


def attention_scaling(runs: list[Run], lengths: list[int], *, rounds: int = 3, device: str | None = None,
                      isolate: bool = True) -> dict[str, dict[int, dict]]:
    """Per run and length: one training step (forward + backward) of its attention layers at batch 1, averaged
    over the layers of its (first) stack: each distinct layer config is measured once by
    :func:`transformer.scaling.scaling` (interleaved rounds, medians, fresh processes) and weighted by how many
    layers use it, so a 3-local / 1-global pattern counts ¾ local and ¼ global. Lengths may exceed the trained
    context (only the attention layers run). ``{run label: {length: {"seconds", "peak_mib"} | {"skipped": why}}}``."""
    from .config import ModelConfig
    from .scaling import Case, scaling

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    labels = [run_label(run.path) for run in runs]
    labels = [label if labels.count(label) == 1 else run.path.name for label, run in zip(labels, runs)]  # unique rows
    cases, weights = {}, {}
    for run, label in zip(runs, labels):
        model = dict(run.config["model"])
        cfg = ModelConfig.from_dict(model)
        depth = cfg.stack_depths()[0]
        distinct: dict[str, int] = {}  # layer config -> its first layer index
        for index in range(depth):
            options = dataclasses.asdict(cfg.layer_attention(index, depth))
            options.pop("layer_index")
            first = distinct.setdefault(json.dumps(options, sort_keys=True, default=str), index)
            name = f"{label}#{first}"
            cases[name] = Case(model, first)
            weights.setdefault(label, Counter())[name] += 1 / depth
    found = scaling(cases, lengths, rounds=rounds, device=device, isolate=isolate,
                    progress=lambda line: print(line, file=sys.stderr))
    out: dict[str, dict[int, dict]] = {}
    for label, parts in weights.items():
        for length in lengths:
            skipped = [found[(name, length)]["skipped"] for name in parts if "skipped" in found[(name, length)]]
            out.setdefault(label, {})[length] = (
                {"skipped": skipped[0]} if skipped else
                {key: sum(w * found[(name, length)][key] for name, w in parts.items()) for key in ("seconds", "peak_mib")})
    return out


def scaling_section(series: dict[str, dict[int, dict]], lengths: list[int], out: Path, *, rounds: int) -> list[str]:
    """The report's scaling table (Markdown lines), ``scaling.csv`` and ``attention_scaling.png``."""
    from .scaling import plot

    rows = []
    for label, points in series.items():
        row = {"run": label}
        for n in lengths:
            p = points[n]
            row[f"ms@{n}"] = round(p["seconds"] * 1e3, 2) if "seconds" in p else math.nan
        for n in lengths:
            p = points[n]
            row[f"peak_mib@{n}"] = round(p["peak_mib"], 1) if "seconds" in p else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(out / "scaling.csv", index=False)
    plot({label: {n: p for n, p in points.items() if "seconds" in p} for label, points in series.items()},
         out / "attention_scaling.png", title="attention layers: forward + backward per layer (batch 1, fp32)")
    skipped = sorted({f"{label} at {n}: {p['skipped']}" for label, points in series.items() for n, p in points.items()
                      if "skipped" in p})
    return (["## Attention scaling", "", markdown_table(table), "",
             f"- ms@N / peak_mib@N: one forward + backward of the run's attention layers on N tokens (batch 1, fp32, "
             f"random input, the stack's own masks and RoPE), averaged over its layers; median of {rounds} interleaved "
             "rounds, each measurement in a fresh process; peak memory is the growth of the peak over the resident "
             "size before the pass. Lengths past the trained context are fine here: only attention layers run.", ""]
            + [f"- skipped: {line}" for line in skipped] + ([""] if skipped else [])
            + ["![attention_scaling](attention_scaling.png)", ""])


def run_colors(runs: list[Run]) -> dict[str, str]:
    """One colour per run, the same in every plot (matplotlib's tab10 / tab20 cycle, in table order)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(runs) <= 10 else "tab20"]
    return {str(r.path): matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, r in enumerate(runs)}


def write_plots(runs: list[Run], out: Path) -> list[Path]:
    """Validation loss vs step (1-based, as checkpoint names count: Lightning logs the step before it) and vs wall
    time, and KV-cache bytes vs best loss with its frontier; a run keeps its colour in all three."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = run_colors(runs)
    paths = []
    for x_key, name, xlabel in (("step", "val_loss_vs_step.png", "optimizer step"),
                                ("time/elapsed_s", "val_loss_vs_time.png", "training wall time (s)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for run in runs:
            h = run.history
            if "val/loss" in h and x_key in h:
                points = h[[x_key, "val/loss"]].dropna()
                x = points[x_key] + 1 if x_key == "step" else points[x_key]
                ax.plot(x, points["val/loss"], marker="o", markersize=3, label=run_label(run.path), color=colors[str(run.path)])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        paths.append(out / name)
    paths.append(_frontier_plot(runs, colors, "best_val_loss", "best validation loss", out / "kv_cache_vs_loss.png"))
    if any(not math.isnan(r.row.get("probe_acc", math.nan)) for r in runs):
        paths.append(_frontier_plot([r for r in runs if not math.isnan(r.row.get("probe_acc", math.nan))], colors,
                                    "probe_acc", "mean probe accuracy (chance 0.25)", out / "kv_cache_vs_probe_acc.png",
                                    higher_is_better=True))
    return paths


def _frontier_plot(runs: list[Run], colors: dict, y_key: str, ylabel: str, path: Path, *, higher_is_better: bool = False) -> Path:
    """KV-cache bytes per token vs ``y_key`` with the trade-off frontier: a run is on it when no cheaper run is better."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    points = sorted((r.row["kv_cache_bytes_per_token"], r.row[y_key], run_label(r.path), colors[str(r.path)]) for r in runs)
    for x, y, label, color in points:
        ax.scatter(x, y, color=color, label=label, zorder=3)
        ax.annotate(label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points", annotation_clip=False)
    sign = -1 if higher_is_better else 1
    frontier, best = [], math.inf
    for x, y, _, _ in points:  # cheapest cache first: a run is on the frontier if it beats every cheaper one
        if sign * y < best:
            frontier.append((x, y))
            best = sign * y
    ax.plot(*zip(*frontier), linestyle="--", color="gray", label="frontier (no cheaper run is better)")
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.15)  # room for the labels of the outermost points
    ax.set_xlabel("KV-cache bytes per token (fp32, all layers)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def eval_figures(run: Run) -> dict[str, float]:
    """A run's evaluation figures, ``{"<task>/<metric>": value}``: the newest ``python -m transformer.evaluate``
    results in ``<run>/eval/``, else the last values its training logged as ``eval/<task>/<metric>``; and
    ``probe_acc``, the mean accuracy over the built-in probe tasks (passkey, associative recall, copying)."""
    from .evaluation.probes import parse_probe_name
    from .evaluation.runner import latest_results

    figures = {f"{task}/{metric}": value for task, values in latest_results(run.path).items()
               for metric, value in values.items() if not metric.endswith("_stderr")}
    if not figures:
        for column in run.history.columns:
            if column.startswith("eval/") and not column.endswith("_stderr"):
                values = run.history[column].dropna()
                if len(values):
                    figures[column.removeprefix("eval/")] = float(values.iloc[-1])
    probes = [v for k, v in figures.items() if k.endswith("/acc") and parse_probe_name(k.split("/")[0])]
    if probes:
        figures["probe_acc"] = sum(probes) / len(probes)
    return {k: round(v, 4) for k, v in figures.items()}


def markdown_table(table: pd.DataFrame) -> str:
    fmt = lambda v: "" if isinstance(v, float) and math.isnan(v) else f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(table[c]) else "---" for c in table.columns) + "|"
    rows = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def regression_rows(runs: list[Run]) -> None:
    """Rows of regression runs, from their ``result.json``: test metrics in original units (the best checkpoint by
    validation RMSE), each baseline's test RMSE fitted on the same split, and the ratio to the best of them."""
    for run in runs:
        r = run.result
        test, best = r.get("test") or {}, (r.get("best_baseline") or {}).get("test") or {}
        if not test:
            run.notes.append("no result.json test metrics (unfinished run?)")
        h = run.history
        val = h["val/rmse"].dropna() if "val/rmse" in h else pd.Series(dtype=float)
        run.row = {"run": run_label(run.path), "attention": run.config["model"]["attention"]["type"],
                   "window_norm": (run.config.get("regressor") or {}).get("window_norm", "none"),
                   "best_val_rmse": round(float(val.min()), 6) if len(val) else math.nan,
                   "test_rmse": test.get("rmse", math.nan), "test_mae": test.get("mae", math.nan), "test_r2": test.get("r2", math.nan)}
        for name, by_split in (r.get("baselines") or {}).items():
            run.row[f"{name} test_rmse"] = by_split.get("test", {}).get("rmse", math.nan)
        run.row["best_baseline"] = best.get("name", "")
        run.row["rmse_vs_best_baseline"] = round(test["rmse"] / best["rmse"], 4) if test and best.get("rmse") else math.nan
        run.row["wall_time_s"] = round(float(r["wall_time_s"]), 1) if "wall_time_s" in r else math.nan
        run.row["flags"] = "; ".join(run.flags + run.notes)


def regression_report(runs: list[Run], swept: list[str], out: Path) -> Path:
    regression_rows(runs)
    table = pd.DataFrame([r.row for r in runs])
    table.to_csv(out / "report.csv", index=False)
    lines = [f"# Regression comparison ({len(runs)} runs)", "", "Compared keys: " + (", ".join(swept) or "model.attention.*"), "",
             markdown_table(table), "",
             "- test metrics in original units, from each run's best checkpoint by validation RMSE; baselines fitted on "
             "the run's training split and scored on its test examples; rmse_vs_best_baseline <= 1 beats all of them.", ""]
    flagged = [r for r in runs if r.flags]
    lines += ["## Fairness", ""] + ([f"- **{run_label(r.path)}** differs: {'; '.join(r.flags)}" for r in flagged] or
                                    ["All runs share every setting except the compared keys."]) + [""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out


def report(paths: list[str | Path], out: str | Path | None = None, *, measure_decode: bool = True,
           caches: list[str] | None = None, scaling_lengths: list[int] | None = None, scaling_rounds: int = 3) -> Path:
    run_dirs, swept = find_runs(paths)
    runs = order_runs([load_run(p) for p in run_dirs])
    out = Path(out) if out else (Path(paths[0]) if len(paths) == 1 and not (Path(paths[0]) / "config.yaml").is_file()
                                 else Path(paths[0]).parent) / "report"
    tasks = {r.config.get("task", "lm") for r in runs}
    if len(tasks) > 1:
        raise ValueError(f"these runs are of different tasks ({', '.join(sorted(tasks))}); compare runs of one task at a time")
    if scaling_lengths and tasks == {"regression"}:
        raise ValueError("--scaling measures the attention layers of language-model runs; these are regression runs")
    out.mkdir(parents=True, exist_ok=True)
    fairness_flags(runs, swept)
    if tasks == {"regression"}:
        return regression_report(runs, swept, out)
    build_rows(runs, measure_decode=measure_decode, caches=caches)
    table = pd.DataFrame([r.row for r in runs])
    table.to_csv(out / "report.csv", index=False)
    plots = write_plots(runs, out)
    lines = [f"# Attention comparison ({len(runs)} runs)", "", "Compared keys: " + (", ".join(swept) or "model.attention.*"), "",
             markdown_table(table), "",
             "- attention: the layer types in depth order; pattern: model.attention_pattern (and overridden layers), '-' when "
             "every layer is model.attention.",
             "- kv_cache_bytes_per_token: decoding-state bytes of one sequence at the trained length (model.max_seq_len), "
             "fp32, divided by that length: sliding-window layers hold at most their window, linear attention a fixed state.",
             "- kv_cache_vs_mha: those bytes relative to an MHA cache of the same width (2 · layers · heads · head_dim · 4 B).",
             "- attention_flops_per_token: analytic forward FLOPs of the attention scores and weighted values per token at the "
             "trained length, summed over layers (windows, sparsity patterns and linear attention's state counted as computed).",
             "- peak_train_memory_mb: the largest peak logged during training (CUDA: allocated tensors; CPU: the process's "
             "peak resident memory, reset when training starts).",
             "- decode_tokens_per_s: batch 1, 16-token prompt, 64 new tokens, greedy, KV cache; median of 5 rounds interleaved "
             "across the runs (measured by this report). decode_spread: (max - min) / median of the rounds; above "
             f"{NOISY_SPREAD:.0%} the run is flagged as noisy.",
             "- quality_vs_mha: ppl(MHA) / ppl(run), from the best validation losses.",
             "- TASK/METRIC columns: the newest `python -m transformer.evaluate` results in the run's eval/ directory, else "
             "the last eval/TASK/METRIC its training logged (eval.tasks); probe_acc: the mean accuracy over the built-in "
             "probes (4-way choices: chance is 0.25); length_extrapolation/loss@Kx: validation loss at K times the trained "
             "context (tail_loss: its last trained-length positions only).",
             *(["- kv_bytes_KIND / val_ppl_KIND / ppl_change_KIND / decode_tokens_per_s_KIND: the best checkpoint with a KV "
                "cache of that kind; the validation split is read through the cache 16 tokens at a time, and the change is "
                "against the contiguous cache read the same way."] if caches else []), ""]
    flagged = [r for r in runs if r.flags]
    lines += ["## Fairness", ""] + ([f"- **{run_label(r.path)}** differs: {'; '.join(r.flags)}" for r in flagged] or
                                    ["All runs share every setting except the compared keys."]) + [""]
    noted = [r for r in runs if r.notes]
    if noted:
        lines += ["## Measurement notes", ""] + [f"- **{run_label(r.path)}**: {'; '.join(r.notes)}" for r in noted] + [""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    if scaling_lengths:
        series = attention_scaling(runs, scaling_lengths, rounds=scaling_rounds)
        lines += scaling_section(series, scaling_lengths, out, rounds=scaling_rounds)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    from .errors import guarded

    return guarded(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transformer.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="an experiment directory (a sweep's) or run directories")
    parser.add_argument("--out", help="where to write report.md / report.csv / *.png (default: <experiment>/report)")
    parser.add_argument("--no-decode", action="store_true", help="skip measuring decode speed")
    parser.add_argument("--cache", metavar="KINDS", help="comma-separated KV cache kinds to compare as well "
                        "(paged, int8, int4): bytes per token, validation perplexity change, decode speed")
    parser.add_argument("--scaling", metavar="LENGTHS", help="comma-separated sequence lengths (e.g. 512,1024,4096): "
                        "time and peak memory of every run's attention layers at each, a table and attention_scaling.png")
    parser.add_argument("--scaling-rounds", type=int, default=3, metavar="N", help="interleaved rounds for --scaling (default 3)")
    args = parser.parse_args(argv)
    lengths = None
    if args.scaling:
        try:
            lengths = [int(x) for x in args.scaling.split(",") if x.strip()]
        except ValueError:
            lengths = []
        if not lengths or min(lengths) < 1:
            parser.error(f"--scaling {args.scaling!r}: give positive whole lengths separated by commas, e.g. 512,1024,4096")
    if args.scaling_rounds < 1:
        parser.error(f"--scaling-rounds {args.scaling_rounds}: give at least 1")
    caches = None
    if args.cache:
        from .attention.cache_kinds import CACHE_KINDS

        caches = [k.strip() for k in args.cache.split(",") if k.strip()]
        bad = [k for k in caches if k not in CACHE_KINDS]
        if bad or not caches:
            parser.error(f"--cache {args.cache!r}: unknown kind {', '.join(bad) or '(none)'}; choose from {', '.join(CACHE_KINDS)}")
    out = report(args.paths, args.out, measure_decode=not args.no_decode, caches=caches, scaling_lengths=lengths,
                 scaling_rounds=args.scaling_rounds)
    print((out / "report.md").read_text())
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
