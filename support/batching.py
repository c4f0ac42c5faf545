"""Length-grouped batches for the CLI (--group-by-length): less padding, still shuffled."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of examples of similar length, in random order: less padding, still shuffled.

    Each epoch: shuffle all indices, cut them into chunks of `chunk_batches` batches, sort each
    chunk by length and cut it into batches, then shuffle the batches. The order depends only on
    (seed, epoch); call set_epoch(epoch) before iterating (train_model does).
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int = 123, chunk_batches: int = 50, drop_last: bool = False
    ):
        if batch_size < 1 or chunk_batches < 1:
            raise ValueError(f"batch_size and chunk_batches must be >= 1, got {batch_size}, {chunk_batches}")
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.chunk_size = batch_size * chunk_batches  # a multiple of batch_size: no batch spans two chunks
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.chunk_size):
            chunk = sorted(order[start : start + self.chunk_size], key=self.lengths.__getitem__, reverse=True)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]  # only the last chunk can leave one
        rng.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


def length_grouped_loader(
    loader: DataLoader, seed: int = 123, chunk_batches: int = 50, drop_last: bool | None = None
) -> DataLoader:
    """The same dataset, batch size and collate function as `loader`, batched by LengthGroupedBatchSampler.

    drop_last defaults to the loader's own (create_dataloaders' train loader drops the last partial batch).
    """
    # an item is a TokenizedExample (token_ids, prompt_length) or a plain list of token IDs
    lengths = [len(getattr(item, "token_ids", item)) for item in loader.dataset]
    sampler = LengthGroupedBatchSampler(
        lengths, loader.batch_size, seed, chunk_batches, loader.drop_last if drop_last is None else drop_last
    )
    # A generator of its own, so starting an epoch never draws from torch's global RNG.
    return DataLoader(
        loader.dataset,
        batch_sampler=sampler,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
