"""Training-step throughput: this toolkit's Lightning step vs a hand-written PyTorch loop.

    python bench/train_overhead.py                     # the embedded default's model and batch, CPU
    python bench/train_overhead.py --steps 40 --rounds 7 model.embed_dim=256

Both sides use the same model (same initial weights), the same DataLoader over the same token store,
AdamW with the same parameter groups, the same LR schedule and gradient clipping. The toolkit side
is the real thing: ``build_trainer`` with its callbacks and CSV logger, ``LanguageModelModule`` with
its per-step metrics. Timed: from the start of the 2nd step to the end of the last one (Trainer
construction and the end-of-run sample are one-off costs, excluded). Rounds alternate the two loops;
medians of per-step time are reported, with tokens/s and the overhead ratio.
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
from transformer.training.lm_module import LanguageModelModule  # noqa: E402
from transformer.training.optim import build_optimizer, build_scheduler  # noqa: E402
from transformer.training.trainer import build_trainer  # noqa: E402


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.start = self.end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 1:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def lightning_round(cfg, module, datamodule, run_dir, steps) -> float:
    cfg.trainer.max_steps = steps
    timer = StepTimer()  # the end-of-run text sample is a one-off cost and is left out
    trainer = build_trainer(cfg, run_dir, callbacks=[timer])
    trainer.fit(module, datamodule=datamodule)
    return (timer.end - timer.start) / (steps - 1)


def plain_round(model, optimizer, scheduler, loader_iter, steps, grad_clip) -> float:
    model.train()
    for i in range(steps):
        if i == 1:
            start = time.perf_counter()
        x, y = next(loader_iter)
        loss = model(x, y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / (steps - 1)


def endless(loader):
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="steps per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("overrides", nargs="*", help="run-config overrides (default: the embedded default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"out_dir={tmp}", "trainer.progress_bar=false", "trainer.val_check_interval=1000000",
                                 *args.overrides])
        L.seed_everything(cfg.seed, verbose=False)
        datamodule = LMDataModule(cfg.data, seed=cfg.seed, cache_root=Path(tmp) / ".cache")
        corpus = datamodule.prepare()
        cfg.model.vocab_size = corpus.vocab_size
        datamodule.setup()
        module = LanguageModelModule(cfg.model, cfg.optim, max_steps=10**6)

        torch.manual_seed(cfg.seed)
        plain_model = LanguageModelModule(cfg.model, cfg.optim, max_steps=10**6).model
        plain_model.load_state_dict(module.model.state_dict())
        optimizer = build_optimizer(plain_model, cfg.optim)
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
                    t = plain_round(plain_model, optimizer, scheduler, loader_iter, args.steps, cfg.optim.grad_clip)
                if r:
                    times[name].append(t)
        tokens = cfg.data.batch_size * cfg.data.block_size
        print(f"# bench/train_overhead.py {' '.join(sys.argv[1:])}")
        print(f"torch {torch.__version__}, lightning {L.__version__}, {torch.get_num_threads()} threads; model "
              f"{module.model.num_parameters():,} params, batch {cfg.data.batch_size} x {cfg.data.block_size} tokens; "
              f"median of {args.rounds} interleaved rounds x {args.steps - 1} timed steps\n")
        print("| loop | ms / step | tokens/s | ratio vs plain |")
        print("|---|---:|---:|---:|")
        base = statistics.median(times["plain PyTorch loop"])
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"| {name} | {m * 1e3:.2f} | {tokens / m:,.0f} | {m / base:.3f} |")
        overhead = statistics.median(times["toolkit (Lightning)"]) / base - 1
        print(f"\ntoolkit overhead: {overhead * 100:+.1f}% (target: at most +3%)")


if __name__ == "__main__":
    main()
