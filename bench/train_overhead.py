"""Training-step throughput: this toolkit's Lightning step vs a hand-written PyTorch loop.

    python bench/train_overhead.py                     # the embedded default's model and batch, CPU
    python bench/train_overhead.py --steps 40 --rounds 7 model.embed_dim=256
    # one GPU, GPT-2-small (12 x 768, context 1024) in bf16-mixed with the fused sdpa kernel; prints MFU too:
    python bench/train_overhead.py --config configs/lm/multi_gpu_bf16_ddp.yaml --steps 20 --rounds 5 \
        data.path=../shared/data/tinyshakespeare.txt trainer.devices=1 trainer.strategy=auto

Both sides use the same model (same initial weights), the same DataLoader over the same token store,
AdamW with the same parameter groups, the same LR schedule and gradient clipping. The toolkit side
is the real thing: ``build_trainer`` with its callbacks and CSV logger, ``LanguageModelModule`` with
its per-step metrics. Timed: from the start of the 2nd step to the end of the last one (Trainer
construction and the end-of-run sample are one-off costs, excluded). Rounds alternate the two loops;
medians of per-step time are reported, with tokens/s and the overhead ratio. On a GPU both loops run there
(the plain one under the same autocast as the trainer's ``precision``), timings end on a device synchronize, and
MFU is ``model.flops_per_token`` (6N plus attention at the trained length) x tokens/s over the device's peak
(``trainer.peak_flops``, else the table in ``transformer.training.lm_module``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformer.data import LMDataModule  # noqa: E402
from transformer.training.config import load_config  # noqa: E402
from transformer.training.lm_module import PEAK_FLOPS, LanguageModelModule  # noqa: E402
from transformer.training.optim import build_optimizer, build_scheduler  # noqa: E402
from transformer.training.trainer import build_trainer  # noqa: E402


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.start = self.end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 1:
            _sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _sync(pl_module.device)
        self.end = time.perf_counter()


def lightning_round(cfg, module, datamodule, run_dir, steps) -> float:
    cfg.trainer.max_steps = steps
    timer = StepTimer()  # the end-of-run text sample is a one-off cost and is left out
    trainer = build_trainer(cfg, run_dir, callbacks=[timer])
    trainer.fit(module, datamodule=datamodule)
    return (timer.end - timer.start) / (steps - 1)


def plain_round(model, optimizer, scheduler, loader_iter, steps, grad_clip, device, autocast_dtype) -> float:
    model.train()
    for i in range(steps):
        if i == 1:
            _sync(device)
            start = time.perf_counter()
        x, y = (t.to(device, non_blocking=True) for t in next(loader_iter))
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(x, y).loss
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return (time.perf_counter() - start) / (steps - 1)


def endless(loader):
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="steps per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--config", help="a run config file (default: the embedded default)")
    parser.add_argument("overrides", nargs="*", help="run-config overrides (default: the embedded default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [f"out_dir={tmp}", "trainer.progress_bar=false", "trainer.val_check_interval=1000000",
                                 *args.overrides])
        L.seed_everything(cfg.seed, verbose=False)
        datamodule = LMDataModule(cfg.data, seed=cfg.seed, cache_root=Path(tmp) / ".cache")
        corpus = datamodule.prepare()
        cfg.model.vocab_size = corpus.vocab_size
        datamodule.setup()
        module = LanguageModelModule(cfg.model, cfg.optim, max_steps=10**6)

        gpu = cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        device = torch.device("cuda" if gpu else "cpu")
        precision = str(cfg.trainer.precision)
        if precision not in ("32-true", "bf16-mixed"):  # 16-mixed would need the trainer's gradient scaler too
            raise SystemExit(f"bench/train_overhead.py compares 32-true or bf16-mixed runs (got trainer.precision={precision})")
        autocast_dtype = torch.bfloat16 if precision == "bf16-mixed" else None
        torch.set_float32_matmul_precision("high" if cfg.trainer.tf32 else "highest")
        torch.manual_seed(cfg.seed)
        plain_model = LanguageModelModule(cfg.model, cfg.optim, max_steps=10**6).model
        plain_model.load_state_dict(module.model.state_dict())
        plain_model.to(device)
        if cfg.trainer.compile:
            plain_model = torch.compile(plain_model)
        optimizer = build_optimizer(plain_model, cfg.optim, precision)
        scheduler = build_scheduler(optimizer, cfg.optim, 10**6)
        loader_iter = endless(datamodule.train_dataloader())

        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        times = {"toolkit (Lightning)": [], "plain PyTorch loop": []}
        for r in range(args.rounds + 1):  # round 0 is warm-up
            order = list(times) if r % 2 == 0 else list(times)[::-1]
            for name in order:
                if name.startswith("toolkit"):
                    t = lightning_round(cfg, module, datamodule, run_dir, args.steps)
                else:
                    t = plain_round(plain_model, optimizer, scheduler, loader_iter, args.steps, cfg.optim.grad_clip,
                                    device, autocast_dtype)
                if r:
                    times[name].append(t)
        tokens = cfg.data.batch_size * cfg.data.block_size
        print(f"# bench/train_overhead.py {' '.join(sys.argv[1:])}")
        print(f"torch {torch.__version__}, lightning {L.__version__}, {torch.get_num_threads()} threads; model "
              f"{module.model.num_parameters():,} params, batch {cfg.data.batch_size} x {cfg.data.block_size} tokens; "
              f"median of {args.rounds} interleaved rounds x {args.steps - 1} timed steps\n")
        peak = cfg.trainer.peak_flops
        if peak is None and gpu:
            name = torch.cuda.get_device_name(device)
            peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
            print(f"device {name}, peak {peak / 1e12:.0f} TFLOP/s (bf16 dense)" if peak else f"device {name}: peak unknown")
        print("| loop | ms / step | tokens/s | MFU | ratio vs plain |")
        print("|---|---:|---:|---:|---:|")
        base = statistics.median(times["plain PyTorch loop"])
        for name, ts in times.items():
            m = statistics.median(ts)
            mfu = f"{module.flops_per_token * tokens / m / peak:.1%}" if peak else "n/a"
            print(f"| {name} | {m * 1e3:.2f} | {tokens / m:,.0f} | {mfu} | {m / base:.3f} |")
        overhead = statistics.median(times["toolkit (Lightning)"]) / base - 1
        print(f"\ntoolkit overhead: {overhead * 100:+.1f}% (target: at most +3%)")


if __name__ == "__main__":
    main()
