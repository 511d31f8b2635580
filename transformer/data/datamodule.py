"""Language-modelling data for Lightning: random windows of the training tokens, fixed blocks for
validation, sharded across processes by samplers of our own (so no sample is duplicated or padded,
and sums over ranks equal the single-process sums).

Shapes: b batch, T block_size. An example is ``(x [T], y [T])`` with ``y[t] = x[t + 1]``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import DataConfig
from .token_store import PreparedCorpus, prepare_corpus


class TokenWindows(Dataset):
    """Example ``i`` is the window starting at token ``i * stride``.

    ``documents_of``: the end-of-text id; each window then also carries ``positions`` and ``documents``
    (``[T]`` each) that restart after every end-of-text token, so with ``data.packing`` no token attends
    across a document boundary and positions count from each document's start."""

    def __init__(self, tokens: np.ndarray, block_size: int, stride: int = 1, *, documents_of: int | None = None) -> None:
        self.tokens, self.block_size, self.stride = tokens, block_size, stride
        self.length = (len(tokens) - block_size - 1) // stride + 1
        self.eos = documents_of

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        start = i * self.stride
        chunk = torch.from_numpy(self.tokens[start : start + self.block_size + 1].astype(np.int64))
        x, y = chunk[:-1], chunk[1:]
        if self.eos is None:
            return x, y
        ends = x == self.eos  # a document ends at its end-of-text token; the next starts after it
        documents = torch.cumsum(ends.long(), 0) - ends.long()  # [T]
        index = torch.arange(len(x))
        starts = torch.zeros_like(index)
        starts[1:] = torch.where(ends[:-1], index[1:], torch.zeros_like(index[1:]))
        positions = index - torch.cummax(starts, 0).values  # [T] distance from the document's first token
        return x, y, positions, documents


def data_parallel_rank_world(trainer) -> tuple[int, int]:
    """``(rank, size)`` of this process among those that see different data: every process under DDP / FSDP,
    one per tensor-parallel group under ``tp`` / ``fsdp2_tp`` and one per context-parallel group (the ranks of a
    group share each batch: the strategy's ``distributed_sampler_kwargs`` say how)."""
    if trainer is None:
        return 0, 1
    kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None)
    if kwargs and "num_replicas" in kwargs:
        return int(kwargs.get("rank", 0)), int(kwargs["num_replicas"])
    return trainer.global_rank, trainer.world_size


class RandomWindowSampler(Sampler[int]):
    """An endless, seeded stream of window starts that can start at any batch.

    Global batch ``i`` belongs to epoch ``i // batches_per_epoch``; each epoch's starts are drawn from a
    generator seeded with ``seed + epoch`` as one ``[batches, world_size, batch_size]`` block, and rank
    ``r`` takes its slice. So W processes at batch b see exactly the examples of one process at batch
    W*b, and a resumed run that starts at batch ``start_batch`` sees exactly what an uninterrupted run
    would have seen. It has no length: training is bounded by ``trainer.max_steps``.
    """

    def __init__(self, num_windows: int, samples_per_epoch: int, batch_size: int, *, seed: int, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0) -> None:
        self.num_windows, self.batch_size, self.seed = num_windows, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.batches_per_epoch = max(1, samples_per_epoch // (batch_size * world_size))

    def _epoch(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + epoch)
        starts = torch.randint(self.num_windows, (self.batches_per_epoch, self.world_size, self.batch_size), generator=g)
        return starts[:, self.rank]  # [batches, b]

    def __iter__(self):
        epoch, within = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            for batch in self._epoch(epoch)[within:].tolist():
                yield from batch
            epoch, within = epoch + 1, 0


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
        eos = self.corpus.eos_id if self.cfg.packing else None
        self.train_set = TokenWindows(self.corpus.tokens("train"), T, stride=1, documents_of=eos)
        self.val_set = TokenWindows(self.corpus.tokens("val"), T, stride=T, documents_of=eos)  # disjoint blocks cover the split

    def _batches_consumed(self) -> int:
        """Micro-batches behind the (restored) optimizer step: where a resumed run's data continues."""
        trainer = getattr(self, "trainer", None)
        return trainer.global_step * trainer.accumulate_grad_batches if trainer is not None else 0

    def _rank_world(self) -> tuple[int, int]:
        return data_parallel_rank_world(getattr(self, "trainer", None))

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        b = self.cfg.batch_size
        samples = max(self.corpus.train_tokens // self.cfg.block_size, b * world)  # one "epoch" ~ one pass of tokens
        sampler = RandomWindowSampler(len(self.train_set), samples, b, seed=self.seed, rank=rank, world_size=world,
                                      start_batch=self._batches_consumed())
        return self._loader(self.train_set, sampler, persistent_workers=self.cfg.num_workers > 0)

    def _loader(self, dataset, sampler, **extra) -> DataLoader:
        return DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler, num_workers=self.cfg.num_workers,
                          collate_fn=self.collate, generator=self._loader_generator(), pin_memory=torch.cuda.is_available(),
                          **extra)

    collate = None
    """How examples become a batch (None: stack them, as every token window has the same length)."""

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        length = len(self.val_set)
        if self.max_val_batches is not None:  # the same examples whatever the number of processes
            length = min(length, self.max_val_batches * self.cfg.batch_size)
        return self._loader(self.val_set, ShardSampler(length, rank=rank, world_size=world))

    def _loader_generator(self) -> torch.Generator:
        """Creating a DataLoader iterator draws a seed; from the global RNG that would shift dropout's random
        stream whenever a loader restarts (validation, resume). A private generator keeps it exact."""
        return torch.Generator().manual_seed(self.seed)


class EpochSampler(RandomWindowSampler):
    """An endless, seeded stream of example indices: each epoch a permutation (seeded with ``seed + epoch``),
    cut into ``[batches, world_size, batch_size]``; rank r takes its slice, and ``start_batch`` continues a
    resumed run exactly where it stopped (:class:`RandomWindowSampler`'s stream, drawn without replacement)."""

    def __init__(self, num_examples: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0) -> None:
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        per_step = batch_size * world_size
        self.batches_per_epoch = max(1, num_examples // per_step)

    def _epoch(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + epoch)
        need = self.batches_per_epoch * self.world_size * self.batch_size
        order = torch.cat([torch.randperm(self.n, generator=g) for _ in range(-(-need // self.n))])[:need]
        return order.view(self.batches_per_epoch, self.world_size, self.batch_size)[:, self.rank]


class ExampleDataModule(LMDataModule):
    """Instruction / chat examples (``data.format`` instruction | chat): tokenised once with the chat template,
    served right-padded, or packed into full blocks with document masks (``data.packing``)."""

    def prepare(self):
        if self.corpus is None:
            from .sft import prepare_examples

            self.corpus = prepare_examples(self.cfg, seed=self.seed, cache_root=self.cache_root)
        return self.corpus

    def setup(self, stage: str | None = None) -> None:
        from .sft import ExampleDataset, PackedDataset, pad_batch

        self.prepare()
        sets = {split: ExampleDataset(*self.corpus.examples(split)) for split in ("train", "val")}
        if self.cfg.packing:
            sets = {split: PackedDataset(d, self.cfg.block_size, self.corpus.pad_id) for split, d in sets.items()}
        else:  # a plain function (picklable for loader workers): right-pad each batch to its longest example
            self.collate = functools.partial(pad_batch, pad_id=self.corpus.pad_id)
        self.train_set, self.val_set = sets["train"], sets["val"]


    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        sampler = EpochSampler(len(self.train_set), self.cfg.batch_size, seed=self.seed, rank=rank, world_size=world,
                               start_batch=self._batches_consumed())
        return self._loader(self.train_set, sampler, persistent_workers=self.cfg.num_workers > 0)
