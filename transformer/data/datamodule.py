"""Language-modelling data for Lightning: random windows of the training tokens, fixed blocks for
validation, sharded across processes by samplers of our own (so no sample is duplicated or padded,
and sums over ranks equal the single-process sums).

Shapes: b batch, T block_size. An example is ``(x [T], y [T])`` with ``y[t] = x[t + 1]``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..training.config import DataConfig
from .token_store import PreparedCorpus, prepare_corpus


class TokenWindows(Dataset):
    """Example ``i`` is the window starting at token ``i * stride``."""

    def __init__(self, tokens: np.ndarray, block_size: int, stride: int = 1) -> None:
        self.tokens, self.block_size, self.stride = tokens, block_size, stride
        self.length = (len(tokens) - block_size - 1) // stride + 1

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.stride
        chunk = torch.from_numpy(self.tokens[start : start + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


class RandomWindowSampler(Sampler[int]):
    """Seeded random window starts. Each global batch of ``batch_size * world_size`` indices is drawn in
    one sequence and rank ``r`` takes its slice, so training with W processes at batch b sees exactly the
    examples of one process at batch W*b. Epoch ``e`` draws from generator ``seed + e`` (``set_epoch``)."""

    def __init__(self, num_windows: int, samples_per_epoch: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_windows, self.batch_size, self.seed = num_windows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        global_batch = batch_size * world_size
        self.num_batches = max(1, samples_per_epoch // global_batch)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        starts = torch.randint(self.num_windows, (self.num_batches, self.world_size, self.batch_size), generator=g)
        return iter(starts[:, self.rank].reshape(-1).tolist())


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + W, ...``: every example on exactly one rank, none padded or repeated."""

    def __init__(self, length: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, length, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


class LMDataModule(L.LightningDataModule):
    """Prepares the corpus (once, cached) and serves train / validation loaders."""

    def __init__(self, cfg: DataConfig, *, seed: int, cache_root: str | Path, max_val_batches: int | None = None) -> None:
        super().__init__()
        self.cfg, self.seed, self.cache_root = cfg, seed, cache_root
        self.max_val_batches = max_val_batches
        self.corpus: PreparedCorpus | None = None

    def prepare(self) -> PreparedCorpus:
        """Tokenise and pack now (idempotent); returns the corpus description (vocab size, counts)."""
        if self.corpus is None:
            self.corpus = prepare_corpus(self.cfg, seed=self.seed, cache_root=self.cache_root)
        return self.corpus

    def prepare_data(self) -> None:
        self.prepare()

    def setup(self, stage: str | None = None) -> None:
        self.prepare()
        T = self.cfg.block_size
        self.train_set = TokenWindows(self.corpus.tokens("train"), T, stride=1)
        self.val_set = TokenWindows(self.corpus.tokens("val"), T, stride=T)  # disjoint blocks cover the split

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        b = self.cfg.batch_size
        samples = max(self.corpus.train_tokens // self.cfg.block_size, b * world)  # one "epoch" ~ one pass of tokens
        sampler = RandomWindowSampler(len(self.train_set), samples, b, seed=self.seed, rank=rank, world_size=world)
        return DataLoader(self.train_set, batch_size=b, sampler=sampler, drop_last=True, num_workers=self.cfg.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.cfg.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        length = len(self.val_set)
        if self.max_val_batches is not None:  # the same examples whatever the number of processes
            length = min(length, self.max_val_batches * self.cfg.batch_size)
        return DataLoader(self.val_set, batch_size=self.cfg.batch_size, sampler=ShardSampler(length, rank=rank, world_size=world),
                          num_workers=self.cfg.num_workers, pin_memory=torch.cuda.is_available())
