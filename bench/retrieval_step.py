"""What retrieval (``regressor.neighbours``, ``regression/retrieval.py``) costs per training step of a tabular
regressor: the tabular default's model (64 x 3, PLE) at randhie's size (14,133 training rows, 9 features, batch 256),
without retrieval, with 32 neighbours searching with fresh keys every step, and with the cached search keys
(refreshed every ``SEARCH_REFRESH`` passes, the default). Interleaved rounds, medians; the ratio is to the model
without retrieval in the same run.

    python bench/retrieval_step.py [--rows 14133] [--steps 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from regression import retrieval
from regression.config import RegressorConfig
from regression.h_transformer import TabularRegressor
from transformer.config import ModelConfig


def model(neighbours: int, x: torch.Tensor, y: torch.Tensor) -> TabularRegressor:
    cfg = ModelConfig(kind="encoder", vocab_size=1, embed_dim=64, num_heads=4, num_layers=3, max_seq_len=256,
                      pooling="cls", norm="layernorm", mlp="gelu", dropout=0.2, attention={"type": "mha", "positional": "none"})
    m = TabularRegressor(cfg, num_features=x.shape[1], num_targets=1,
                         regressor=RegressorConfig(linear_skip=False, retrieval=bool(neighbours), neighbours=neighbours or 32,
                                                   numeric_embedding="ple"))
    m.numeric.fit_edges(x.numpy())
    if neighbours:
        m.retrieval.fit_candidates(x.numpy(), torch.zeros(len(x), 0, dtype=torch.long).numpy(), y.numpy())
    return m.train()


def step_ms(m: TabularRegressor, opt, x, y, steps: int, refresh: int, seed: int) -> float:
    retrieval.SEARCH_REFRESH = refresh
    g = torch.Generator().manual_seed(seed)
    no_cats = torch.zeros(256, 0, dtype=torch.long)
    times = []
    for _ in range(steps):
        rows = torch.randint(0, len(x), (256,), generator=g)
        start = time.perf_counter()
        extra = {"rows": rows} if m.retrieval is not None else {}
        loss = (m(x[rows], no_cats, **extra) - y[rows]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=14133)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(args.rows, 9), torch.randn(args.rows, 1)
    cases = {"no retrieval": (0, 1), "32 neighbours, search keys every step": (32, 1),
             f"32 neighbours, cached search keys (refresh {retrieval.SEARCH_REFRESH})": (32, retrieval.SEARCH_REFRESH)}
    models = {name: model(k, x, y) for name, (k, _) in cases.items()}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=3e-4) for name, m in models.items()}
    results: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, (_, refresh) in cases.items():
            results[name].append(step_ms(models[name], opts[name], x, y, args.steps, refresh, seed=r))
    base = statistics.median(results["no retrieval"])
    print(f"training step, {args.rows:,} candidate rows, batch 256, {torch.get_num_threads()} threads "
          f"(median of {args.rounds} rounds x {args.steps} steps)")
    for name, values in results.items():
        ms = statistics.median(values)
        print(f"  {name:<50} {ms:7.1f} ms   {ms / base:4.2f}x")


if __name__ == "__main__":
    main()
