"""Tokenising, and batches padded to their own longest example (never to max length)."""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..compiling import StaticShapes
from ..errors import InputError
from .formats import TaskData
from .labels import LabelSpace
from .sampling import EpochSampler, SortedBatches

logger = logging.getLogger(__name__)


@dataclass
class Tokens:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None  # None where the model takes none
    truncated: int  # how many texts were longer than the limit


class TextEncoder:
    """Token ids (and token types) of texts or text pairs, truncated to ``max_length`` as
    ``tokenizer(..., truncation=True)`` does. A fast tokenizer's Rust core is called directly
    (a private copy set to truncate): the same ids, without transformers' per-text conversion,
    which took a third of the time of tokenising a large file, and it reports which texts it cut."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.types = "token_type_ids" in tokenizer.model_input_names
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.core = None if backend is None else Tokenizer.from_str(backend.to_str())
        if self.core is not None:
            self.core.no_padding()
            self.core.enable_truncation(max_length, stride=0, strategy="longest_first",
                                        direction=tokenizer.truncation_side)

    def __call__(self, texts_a: list[str], texts_b: list[str] | None = None) -> Tokens:
        if self.core is not None:
            encodings = self.core.encode_batch(list(zip(texts_a, texts_b)) if texts_b is not None else texts_a)
            return Tokens([e.ids for e in encodings], [e.type_ids for e in encodings] if self.types else None,
                          sum(bool(e.overflowing) for e in encodings))
        batch = self.tokenizer(texts_a, texts_b, truncation=True, max_length=self.max_length,
                               return_attention_mask=False)
        ids = batch["input_ids"]
        # only texts that came out exactly at the limit can have been cut: re-measure those
        at_limit = [i for i, row in enumerate(ids) if len(row) == self.max_length]
        full = self.tokenizer([texts_a[i] for i in at_limit], [texts_b[i] for i in at_limit] if texts_b else None,
                              truncation=False, verbose=False)["input_ids"] if at_limit else []
        return Tokens(ids, batch.get("token_type_ids") if self.types else None,
                      sum(len(row) > self.max_length for row in full))


def warn_truncated(path, truncated: int, total: int, max_length: int) -> None:
    if truncated:
        logger.warning("%s: %d of %d examples are longer than %d tokens and were truncated "
                       "(raise --max-length to keep more text)", path, truncated, total, max_length)


@dataclass
class EncodedData(Dataset):
    """Token ids for every example (unpadded), in file order, in memory: for small data (a chunk
    of rows to predict); training and evaluation read from the on-disk token cache."""

    features: list[dict]
    lengths: list[int]
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict:
        return self.features[index]

    def first(self, count: int | None) -> "EncodedData":
        return EncodedData(self.features[:count], self.lengths[:count])


def encode(data: TaskData, tokenizer: PreTrainedTokenizerBase, max_length: int,
           label_space: LabelSpace | None = None, *, chunk_size: int = 2048,
           show_progress: bool = True) -> EncodedData:
    """Tokenise every example once, truncating to ``max_length`` with one warning."""
    features, lengths, truncated = [], [], 0
    examples = data.examples
    pairs = data.has_pairs
    progress = tqdm(total=len(examples), desc=f"tokenising {Path(data.path).name}", unit="ex",
                    disable=not show_progress, leave=False)
    encoder = TextEncoder(tokenizer, max_length)
    for start in range(0, len(examples), chunk_size):
        chunk = examples[start:start + chunk_size]
        tokens = encoder([e.text_a for e in chunk], [e.text_b or "" for e in chunk] if pairs else None)
        truncated += tokens.truncated
        for offset, example in enumerate(chunk):
            feature = {"input_ids": tokens.input_ids[offset]}
            if tokens.token_type_ids is not None:
                feature["token_type_ids"] = tokens.token_type_ids[offset]
            if label_space is not None and example.label is not None:
                feature["labels"] = label_space.encode(example, data.path)
            features.append(feature)
            lengths.append(len(feature["input_ids"]))
        progress.update(len(chunk))
    progress.close()
    warn_truncated(data.path, truncated, len(examples), max_length)
    return EncodedData(features, lengths, truncated)


MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
IGNORED_LABEL = -100  # transformers' label of positions that count in no loss or metric
LABELS = ("labels", "start_positions", "end_positions")


def model_inputs(batch: dict, labels: bool = False) -> dict:
    """The part of a batch a model takes (its inputs, and its labels when ``labels``)."""
    keys = MODEL_INPUTS + (LABELS if labels else ())
    return {key: value for key, value in batch.items() if key in keys}


class PadToLongest:
    """Pads a batch to its longest example (to a length bucket of ``shapes`` when steps are
    compiled) and adds the attention mask: the tensors transformers' ``DataCollatorWithPadding``
    gives, built with numpy. ``tokenizer.pad`` handles each example in Python, which left an H100
    waiting for its batches."""

    def __init__(self, tokenizer, shapes: StaticShapes | None = None):
        self.pad_id, self.type_pad_id = tokenizer.pad_token_id, tokenizer.pad_token_type_id
        self.left = tokenizer.padding_side == "left"
        self.shapes = shapes

    def __call__(self, features: list[dict]) -> dict:
        lengths = np.fromiter((len(f["input_ids"]) for f in features), dtype=np.int64, count=len(features))
        width = int(lengths.max())
        if self.shapes:
            width = self.shapes.width(width)
        columns = np.arange(width)[None, :]
        real = columns >= (width - lengths)[:, None] if self.left else columns < lengths[:, None]
        batch = {}
        for key, value in features[0].items():
            if isinstance(value, list):  # a value per token: padded (a tag with -100, an offset with -1)
                padded = np.full((len(features), width), self._padding(key), dtype=np.int64)
                padded[real] = np.concatenate([f[key] for f in features])
                batch[key] = torch.from_numpy(padded)
            elif isinstance(value, np.ndarray) and value.ndim == 2:  # a vector per token (teacher outputs): 0-padded
                padded = np.zeros((len(features), width, value.shape[1]), dtype=value.dtype)
                padded[real] = np.concatenate([f[key] for f in features])
                batch[key] = torch.from_numpy(padded)
            elif isinstance(value, np.ndarray):  # a vector per example
                batch[key] = torch.from_numpy(np.stack([f[key] for f in features]))
            else:  # a value per example
                values = [f[key] for f in features]
                batch[key] = torch.tensor(values, dtype=torch.float32 if isinstance(values[0], float) else torch.int64)
        batch["attention_mask"] = torch.from_numpy(real.astype(np.int64))
        return batch

    def _padding(self, key: str) -> int:
        return {"input_ids": self.pad_id, "token_type_ids": self.type_pad_id, "labels": IGNORED_LABEL}.get(key, -1)


def _workers() -> int:
    """Processes that read and pad batches while the GPU computes (none on a CPU, which has no time to spare)."""
    return min(4, (os.cpu_count() or 1) // 2) if torch.cuda.is_available() else 0


def train_loader(dataset, tokenizer, batch_size: int, seed: int = 0, group_by_length: bool = True,
                 shapes: StaticShapes | None = None) -> DataLoader:
    """Batches in a new seeded order every epoch (``loader.sampler.set_epoch``), of similar lengths
    unless ``group_by_length`` is False, padded to their longest example. With ``shapes`` (steps
    compiled) they are padded to a length bucket and the short last batch is left out.
    ``dataset`` is an ``EncodedData`` or a ``TokenCache`` (anything indexable with ``lengths``),
    or the corpus of general distillation. On a GPU, batches are made in pinned memory, so their
    copies to the device do not wait."""
    if shapes and len(dataset) < batch_size:
        raise InputError(f"compiled steps take whole batches of {batch_size}, and the data has {len(dataset)} "
                         f"examples", fix="use a smaller --batch-size, or --compile never")
    sampler = EpochSampler(len(dataset), batch_size, seed, lengths=dataset.lengths if group_by_length else None)
    workers = _workers()
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=_own_generator(seed),
                      collate_fn=PadToLongest(tokenizer, shapes), pin_memory=torch.cuda.is_available(),
                      num_workers=workers, persistent_workers=workers > 0, drop_last=shapes is not None)


def _own_generator(seed: int = 0) -> torch.Generator:
    """A DataLoader draws a seed from its generator each time it is iterated, from torch's global
    one unless it has its own: that draw would shift the dropout masks of a run resumed mid-epoch
    (its loader starts mid-epoch, the uninterrupted one started at the epoch's beginning)."""
    return torch.Generator().manual_seed(seed)


def eval_loader(dataset, tokenizer, batch_size: int, shard: tuple[int, int] = (0, 1),
                shapes: StaticShapes | None = None) -> tuple[DataLoader, Iterator[int]]:
    """Batches of examples sorted by length, made as they are read (any number of examples), and
    the order they come in (an iterator), to put predictions back in file order. ``shard``: (this
    process, processes) takes every processes-th batch. ``shapes``: padded to length buckets."""
    batches = SortedBatches(dataset.lengths, batch_size, shard)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=PadToLongest(tokenizer, shapes),
                        generator=_own_generator(),
                        num_workers=_workers(), pin_memory=torch.cuda.is_available())
    return loader, itertools.chain.from_iterable(batches)
