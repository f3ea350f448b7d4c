"""Orders of examples: a seeded shuffle per epoch (length-grouped for task data), and length-sorted
evaluation batches; both lazy, in memory a few bytes per example whatever the data's size."""

from __future__ import annotations

import itertools
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

_YIELD_CHUNK = 1 << 16  # indices turned into Python ints at a time
_EVAL_WINDOW = 1 << 16  # examples sorted together for evaluation


class EpochSampler(Sampler[int]):
    """A new order every epoch, seeded by seed + epoch: the same seed gives the same orders, and a
    resumed run sees the order it stopped in. With ``lengths``, examples of similar length share
    batches (the order of transformers' ``get_length_grouped_indices``: shuffle, sort each
    megabatch of 50 batches by length, longest batch first), computed without Python lists of
    the whole data: 4 bytes per example for the permutation, 1 or 2 for the lengths."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, lengths: Sequence[int] | None = None):
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator, dtype=torch.int32).numpy()
        if self.lengths is None or self.size == 0:
            for start in range(0, self.size, _YIELD_CHUNK):
                yield from order[start:start + _YIELD_CHUNK].tolist()
            return
        multiple = min(self.size // (self.batch_size * 4), 50) or 1
        size = multiple * self.batch_size
        starts = range(0, self.size, size)
        # the longest example leads the whole epoch, so an out-of-memory error comes at once
        longest = [order[start + int(np.argmax(self.lengths[order[start:start + size]]))] for start in starts]
        longest_megabatch = int(np.argmax(self.lengths[longest]))
        for number, start in enumerate(starts):
            megabatch = self._longest_first(order[start:start + size])
            if number in (0, longest_megabatch):
                megabatch[0] = longest[longest_megabatch if number == 0 else 0]
            yield from megabatch.tolist()

    def _longest_first(self, indices: np.ndarray) -> np.ndarray:
        """``indices`` by decreasing length, ties in their order (a stable sort)."""
        return indices[np.argsort(-self.lengths[indices].astype(np.int64), kind="stable")]


class SortedBatches:
    """Batches of similar lengths for evaluation, so little is padded: each window of examples
    (in file order) is sorted by length, so memory stays bounded on any number of examples."""

    def __init__(self, lengths: Sequence[int], batch_size: int, shard: tuple[int, int] = (0, 1)):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.index, self.shards = shard  # this process takes every shards-th batch, from the index-th

    def __len__(self) -> int:
        windows = range(0, len(self.lengths), _EVAL_WINDOW)
        batches = sum(-(-min(_EVAL_WINDOW, len(self.lengths) - start) // self.batch_size) for start in windows)
        return len(range(self.index, batches, self.shards))

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(self._all(), self.index, None, self.shards)

    def _all(self) -> Iterator[list[int]]:
        for start in range(0, len(self.lengths), _EVAL_WINDOW):
            window = start + np.argsort(self.lengths[start:start + _EVAL_WINDOW], kind="stable")
            for offset in range(0, len(window), self.batch_size):
                yield window[offset:offset + self.batch_size].tolist()
