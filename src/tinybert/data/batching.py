"""Tokenising once and batching: dynamic padding, length-grouped batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import get_length_grouped_indices

from .formats import TaskData
from .labels import LabelSpace

logger = logging.getLogger(__name__)


@dataclass
class EncodedData:
    """Token ids for every example (unpadded), in file order."""

    features: list[dict]
    lengths: list[int]
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.features)


def encode(data: TaskData, tokenizer: PreTrainedTokenizerBase, max_length: int,
           label_space: LabelSpace | None = None, *, chunk_size: int = 2048,
           show_progress: bool = True) -> EncodedData:
    """Tokenise every example once, truncating to ``max_length`` with one warning."""
    features, lengths = [], []
    examples = data.examples
    pairs = data.has_pairs
    progress = tqdm(total=len(examples), desc=f"tokenising {Path(data.path).name}", unit="ex",
                    disable=not show_progress, leave=False)
    at_limit = []
    for start in range(0, len(examples), chunk_size):
        chunk = examples[start:start + chunk_size]
        texts_a = [example.text_a for example in chunk]
        texts_b = [example.text_b or "" for example in chunk] if pairs else None
        batch = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
        for offset, example in enumerate(chunk):
            feature = {key: batch[key][offset] for key in batch.keys()}
            length = len(feature["input_ids"])
            if length == max_length:
                at_limit.append(start + offset)
            if label_space is not None and example.label is not None:
                feature["labels"] = label_space.encode(example, data.path)
            features.append(feature)
            lengths.append(length)
        progress.update(len(chunk))
    progress.close()
    truncated = _count_truncated(examples, at_limit, tokenizer, max_length, pairs)
    if truncated:
        logger.warning("%s: %d of %d examples are longer than %d tokens and were truncated "
                       "(raise --max-length to keep more text)", data.path, truncated, len(examples),
                       max_length)
    return EncodedData(features, lengths, truncated)


def _count_truncated(examples, candidates, tokenizer, max_length, pairs) -> int:
    """Only examples that came out exactly at the limit can have been cut: re-measure those."""
    if not candidates:
        return 0
    texts_a = [examples[i].text_a for i in candidates]
    texts_b = [examples[i].text_b or "" for i in candidates] if pairs else None
    full = tokenizer(texts_a, texts_b, truncation=False, verbose=False)["input_ids"]
    return sum(len(ids) > max_length for ids in full)


class LengthGroupedEpochSampler(Sampler[int]):
    """Shuffles each epoch (seeded by seed + epoch, so a resumed run sees the same order) and
    groups examples of similar length into the same batch, so padding stays small."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def train_loader(encoded: EncodedData, tokenizer, batch_size: int, seed: int = 0) -> DataLoader:
    sampler = LengthGroupedEpochSampler(encoded.lengths, batch_size, seed)
    return DataLoader(encoded.features, batch_size=batch_size, sampler=sampler,
                      collate_fn=DataCollatorWithPadding(tokenizer))


def eval_loader(encoded: EncodedData, tokenizer, batch_size: int) -> tuple[DataLoader, list[int]]:
    """Batches of examples sorted by length; returns the order, to put predictions back."""
    order = sorted(range(len(encoded)), key=encoded.lengths.__getitem__)
    loader = DataLoader(encoded.features, batch_size=batch_size, sampler=order,
                        collate_fn=DataCollatorWithPadding(tokenizer))
    return loader, order

