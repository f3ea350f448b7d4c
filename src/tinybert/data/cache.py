"""The token cache of a task file: every example tokenised once, on disk, read back by index.

Training and evaluation read task data from here, so memory does not grow with the number of
rows and every process of a multi-GPU run reads only the examples of its own batches. One
directory per (file, tokenizer, max length); it is rebuilt when the file's content, the
tokenizer, the length or the column options change. Files:

* ``ids.bin``: the token ids of all examples, one after another (uint16, or uint32 for large
  vocabularies); ``types.bin``: their token types (uint8), sentence pairs only;
* ``offsets.bin``: where each example starts in ``ids.bin`` (uint64, one more than examples);
* ``lengths.bin``: tokens per example (uint8 up to 255 tokens, else uint16), what length-grouped
  batching sorts by;
* ``labels.bin``: each example's label as an index into the label table of ``meta.json``
  (int32): the raw labels are interpreted by whichever model reads the cache;
* ``meta.json``: the stamp (inputs, counts, the label table with each label's first line).
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..artifacts import Stamp, cache_root, digest, digest_file, read_json, staged_directory
from ..errors import InputError
from ..tokenizer import tokenizer_digest
from .formats import report_bad_lines
from .options import DataOptions, TaskLabels, count_lines
from .labels import LabelSpace
from .batching import TextEncoder, warn_truncated

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
CACHE_DIR = "token_cache"  # inside a stage's output directory, unless --cache-dir says otherwise
VERSION = 2
_CHUNK_ROWS = 2048
_SKIPPED_SHOWN = 100


class TokenCache(Dataset):
    """The cached examples, as features for ``DataCollatorWithPadding``; ``labelled`` and
    ``first`` give views with labels encoded for a model, or the first N examples only."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.meta = read_json(self.directory / META_FILE)
        self.path = self.meta["source"]
        self.count = self.meta["examples"]
        self.has_pairs = self.meta["pairs"]
        self.lengths = np.fromfile(self.directory / "lengths.bin", dtype=self.meta["length_dtype"])
        self._id_dtype = np.dtype(self.meta["id_dtype"])
        self._label_values: list | None = None
        self._files = None

    def __len__(self) -> int:
        return self.count

    @property
    def raw_labels(self) -> dict[str, int]:
        """The distinct labels of the examples in view, as written in the file, with their first line."""
        table = dict(zip(self.meta["labels"], self.meta["label_lines"]))
        if self.count == self.meta["examples"]:
            return table
        used = np.unique(np.fromfile(self.directory / "labels.bin", dtype="<i4", count=self.count))
        return {self.meta["labels"][i]: self.meta["label_lines"][i] for i in used}

    def first(self, count: int | None) -> "TokenCache":
        """A view of the first ``count`` examples (all when None)."""
        view = copy.copy(self)
        if count is not None and count < self.count:
            view.count, view.lengths = count, self.lengths[:count]
        return view

    def labelled(self, label_space: LabelSpace) -> "TokenCache":
        """A view whose examples carry their label encoded in ``label_space`` (an unknown label is
        an error naming its first line)."""
        view = copy.copy(self)
        view._label_values = [label_space.encode_value(raw, self.path, line)
                              for raw, line in zip(self.meta["labels"], self.meta["label_lines"])]
        return view

    def _handles(self):
        if self._files is None:  # opened lazily, once per process (DataLoader workers fork)
            names = ("offsets.bin", "ids.bin", "types.bin", "labels.bin")
            self._files = [os.open(self.directory / name, os.O_RDONLY) if (self.directory / name).exists() else None
                           for name in names]
        return self._files

    def __getitem__(self, index: int) -> dict:
        offsets, ids, types, labels = self._handles()
        start, end = (int(v) for v in np.frombuffer(os.pread(offsets, 16, 8 * index), dtype="<u8"))
        size = self._id_dtype.itemsize
        feature = {"input_ids": np.frombuffer(os.pread(ids, (end - start) * size, start * size),
                                              dtype=self._id_dtype).tolist()}
        if types is not None:
            feature["token_type_ids"] = list(os.pread(types, end - start, start))
        elif self.meta["token_types"]:
            feature["token_type_ids"] = [0] * (end - start)
        if self._label_values is not None:
            label = int(np.frombuffer(os.pread(labels, 4, 4 * index), dtype="<i4")[0])
            feature["labels"] = self._label_values[label]
        return feature


def data_fingerprints(train: TokenCache, dev: TokenCache | None) -> dict:
    """What a training checkpoint must have been made from to be resumed: the same examples of the
    same files, tokenised the same way."""
    return {"train": train.meta["fingerprint"], "examples": len(train),
            "eval": dev.meta["fingerprint"] if dev is not None else None}


def task_cache(path: str | os.PathLike, tokenizer, max_length: int, options: DataOptions,
               default_dir: str | os.PathLike | None = None, show_progress: bool = True) -> TokenCache:
    """The token cache of ``path``, in ``options.cache_dir`` (else ``default_dir``, else the user
    cache), built now unless one made from the same inputs is there. ``options.max_examples`` is
    not applied here (``TokenCache.first`` does)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path, fix="check the path")
    columns = [options.text_column, options.pair_column, options.label_column]
    inputs = {"file": digest_file(path), "tokenizer": tokenizer_digest(tokenizer), "max_length": max_length,
              "columns": columns, "skip_bad_lines": options.skip_bad_lines, "version": VERSION}
    name = f"{path.stem}-{digest([str(path.resolve()), inputs['tokenizer'], max_length, columns])[:12]}"
    directory = Path(options.cache_dir or default_dir or cache_root() / "tokens") / name
    if not Stamp(directory / META_FILE).matches(inputs):
        with staged_directory(directory) as staging:
            meta = _build(path, tokenizer, max_length, options, staging, show_progress)
            Stamp(staging / META_FILE).write(inputs, **meta)
        logger.info("%s: %d examples tokenised into %s", path, meta["examples"], directory)
    cache = TokenCache(directory)
    # what the build said, said again on every use of the cache
    if cache.meta["skipped"]:
        report_bad_lines(str(path), cache.meta["skipped_lines"], True, total=cache.meta["skipped"])
    warn_truncated(path, cache.meta["truncated"], cache.meta["examples"], max_length)
    return cache


def _build(path: Path, tokenizer, max_length: int, options: DataOptions, staging: Path, show_progress: bool) -> dict:
    layout, rows = options.open(path)
    pairs = layout.has_pairs
    id_dtype = np.dtype("<u2") if len(tokenizer) < 2**16 else np.dtype("<u4")
    length_dtype = np.dtype("<u1") if max_length < 2**8 else np.dtype("<u2")  # 1 byte an example at 64 tokens
    if max_length >= 2**16:
        raise InputError(f"--max-length {max_length} is beyond the cache's 65,535 tokens", fix="use a shorter length")
    encoder = TextEncoder(tokenizer, max_length)
    table: dict[str, int] = {}
    first_lines: list[int] = []
    bad: list[tuple[int, str]] = []
    skipped = examples = position = truncated = 0
    bar = tqdm(total=count_lines(path) if show_progress else None, desc=f"tokenising {path.name}", unit="line",
               unit_scale=True, disable=not show_progress, leave=False)
    handles = {name: open(staging / name, "wb") for name in ("ids.bin", "offsets.bin", "lengths.bin", "labels.bin")}
    if pairs:
        handles["types.bin"] = open(staging / "types.bin", "wb")
    handles["offsets.bin"].write(np.zeros(1, dtype="<u8").tobytes())
    try:
        while chunk := list(itertools.islice(rows, _CHUNK_ROWS)):
            good = [row.example for row in chunk if row.example is not None]
            for row in chunk:
                if row.problem:
                    skipped += 1
                    if len(bad) < _SKIPPED_SHOWN:
                        bad.append((row.line, row.problem))
            if good:
                tokens = encoder([e.text_a for e in good], [e.text_b or "" for e in good] if pairs else None)
                lengths = np.fromiter((len(ids) for ids in tokens.input_ids), dtype=np.int64, count=len(good))
                handles["ids.bin"].write(np.fromiter(itertools.chain.from_iterable(tokens.input_ids),
                                                     dtype=id_dtype, count=int(lengths.sum())).tobytes())
                if pairs:
                    handles["types.bin"].write(np.fromiter(itertools.chain.from_iterable(tokens.token_type_ids),
                                                           dtype=np.uint8, count=int(lengths.sum())).tobytes())
                handles["offsets.bin"].write((position + np.cumsum(lengths)).astype("<u8").tobytes())
                handles["lengths.bin"].write(lengths.astype(length_dtype).tobytes())
                for example in good:
                    if example.label not in table:
                        table[example.label] = len(table)
                        first_lines.append(example.line)
                handles["labels.bin"].write(np.fromiter((table[e.label] for e in good), dtype="<i4",
                                                        count=len(good)).tobytes())
                position += int(lengths.sum())
                examples += len(good)
                truncated += tokens.truncated
            bar.update(chunk[-1].line - bar.n)
    finally:
        for handle in handles.values():
            handle.close()
        bar.close()
    if bad and not options.skip_bad_lines:
        report_bad_lines(str(path), bad, False, total=skipped)
    if not examples:
        raise InputError("no usable examples", path=path, fix="check the file's format and columns")
    LabelSpace.infer(TaskLabels(str(path), dict(zip(table, first_lines))))  # labels no model can read: stop here
    return {"source": str(path), "examples": examples, "tokens": position, "pairs": pairs,
            "id_dtype": id_dtype.str, "length_dtype": length_dtype.str, "token_types": pairs or "token_type_ids" in tokenizer.model_input_names,
            "labels": list(table), "label_lines": first_lines, "truncated": truncated,
            "skipped": skipped, "skipped_lines": bad}
