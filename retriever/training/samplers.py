"""Batch samplers: which examples train together. Pluggable (as in sentence-transformers): the trainer asks a
sampler for the batches of an epoch; ``RandomBatchSampler`` is the default, ``B3BatchSampler`` (``b3.py``)
draws batches from clusters of mutual hard negatives.

A sampler yields *global* batches; under DDP each rank takes its contiguous slice, so the union over ranks is
exactly the batch a single process would train on. Incomplete last batches are dropped, so every step has
the same contrastive batch size (and the same loss scale).
"""
from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np


class BatchSampler(Protocol):
    batch_size: int

    def batches(self, epoch: int) -> list[list[int]]: ...

    def __len__(self) -> int: ...


class RandomBatchSampler:
    def __init__(self, num_examples: int, batch_size: int, seed: int = 0, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if drop_last and num_examples < batch_size:
            raise ValueError(f"{num_examples} training examples is fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed, self.drop_last = num_examples, batch_size, seed, drop_last

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def batches(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        out = [order[i:i + self.batch_size].tolist() for i in range(0, self.n, self.batch_size)]
        return out[: len(self)]


def local_slice(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous share of a global batch (batch size must divide by world size)."""
    if len(batch) % world_size:
        raise ValueError(f"batch of {len(batch)} does not split over {world_size} ranks")
    per = len(batch) // world_size
    return batch[rank * per:(rank + 1) * per]


def iterate(sampler: BatchSampler, start_epoch: int, start_batch: int, epochs: int) -> Iterator[tuple[int, int, list[int]]]:
    """(epoch, batch index, batch) from a resume position onwards."""
    for epoch in range(start_epoch, epochs):
        for b, batch in enumerate(sampler.batches(epoch)):
            if epoch == start_epoch and b < start_batch:
                continue
            yield epoch, b, batch
