"""The teacher's pass that fills a cache of its outputs (``teacher_outputs``): over the training
data by one process, or each process over its share of the batches, gathered by the main one.

A cache filled by one process also keeps a key of each example's content (its token ids and types),
and where its rows start. A pass over data whose examples another cache of the same teacher, task
and precision already holds (the original rows of an augmented file, read by the pipeline's
student without augmentation) copies their outputs from there and runs the teacher on the others
only: the same tokens give the same outputs.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..artifacts import Stamp, is_built, read_json
from ..data import eval_loader
from ..data.batching import model_inputs
from ..data.sampling import SortedBatches
from ..errors import InputError

logger = logging.getLogger(__name__)

STAMP_FILE = "outputs.json"
VALUES_FILE = "outputs.f32"
KEYS_FILE = "examples.u64"  # each example's content key and first row
GATHER_BLOCK = 65536  # examples whose shared outputs the main process places at once


def per_token(task: str) -> bool:
    return task in ("token", "qa")


def rebuilt_elsewhere(directory: Path) -> InputError:
    return InputError(f"the teacher's outputs in {directory} were rebuilt by another run for another teacher or data "
                      "file while this one used them", fix="run one of the two at a time, or give each its own "
                      "--cache-dir (or --no-teacher-cache)")


def mapped_values(directory: Path, fingerprint: str, shape: tuple[int, int]) -> np.memmap:
    """The values of the cache in ``directory`` made from the inputs of ``fingerprint``, mapped.
    Another run sharing the cache directory may have rebuilt it (for a teacher retrained where it
    was) since this one found it: the file is opened first, then its stamp read, so the file mapped
    is the one those inputs made, or the check fails."""
    try:
        with open(directory / VALUES_FILE, "rb") as handle:
            stamp = read_json(directory / STAMP_FILE) or {}
            if stamp.get("fingerprint") != fingerprint or os.fstat(handle.fileno()).st_size != 4 * shape[0] * shape[1]:
                raise rebuilt_elsewhere(directory)
            return np.memmap(handle, dtype=np.float32, mode="r", shape=shape)  # a map outlives its file's closing
    except FileNotFoundError:  # between the two renames that replace the folder
        raise rebuilt_elsewhere(directory) from None


def sources(target: Path, inputs: dict, same: tuple[str, ...]) -> list[Path]:
    """The other intact caches beside ``target`` whose inputs agree with ``inputs`` on ``same``
    (teacher, task, precision) and which keep their examples' keys."""
    found = []
    for directory in sorted(target.parent.glob("teacher-outputs-*")):
        stamp = Stamp(directory / STAMP_FILE).read() if directory != target else None
        theirs = (stamp or {}).get("inputs", {})
        if KEYS_FILE in (stamp or {}).get("file_sizes", {}) and all(theirs.get(key) == inputs[key] for key in same) \
                and is_built(directory, STAMP_FILE, theirs):
            found.append(directory)
    return found


def _key(ids: np.ndarray, types: np.ndarray | None) -> int:
    """A 64-bit key of an example's tokens (what the teacher's output on it depends on)."""
    key = hashlib.blake2b(ids.astype("<i8").tobytes(), digest_size=8)
    if types is not None:
        key.update(types.astype("<i8").tobytes())
    return int.from_bytes(key.digest(), "little")


class _Some(torch.utils.data.Dataset):
    """The examples ``indices`` of ``data``, as ``eval_loader`` reads a dataset."""

    def __init__(self, data, indices: np.ndarray):
        self.data, self.indices = data, indices
        self.lengths = np.asarray(data.lengths)[indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.data[int(self.indices[index])]


def _indices(share: Path) -> Path:
    return share.with_name(share.name + ".indices")


class TeacherPass:
    """The teacher's outputs on the data, in batches sorted by length, written where each
    example's rows go: all of them by one process, or each process's share of the batches."""

    def __init__(self, teacher, data, task: str, tokenizer, batch_size: int, accelerator, show_progress: bool):
        self.teacher, self.data, self.task, self.tokenizer = teacher, data, task, tokenizer
        self.batch_size, self.accelerator, self.show_progress = batch_size, accelerator, show_progress
        self.lengths = np.asarray(data.lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)])

    def _rows(self, index: int) -> slice:
        return slice(self.starts[index], self.starts[index + 1]) if per_token(self.task) else slice(index, index + 1)

    def into(self, staging: Path, shape: tuple[int, int], reused: list[Path]) -> dict:
        """All outputs into the cache being built (one process), those of examples that the caches
        ``reused`` hold copied from there, with each example's key and first row."""
        values = np.memmap(staging / VALUES_FILE, dtype=np.float32, mode="w+", shape=shape)
        keys = np.stack([np.zeros(len(self.data), dtype=np.uint64), self.starts[:-1].astype(np.uint64) if
                         per_token(self.task) else np.arange(len(self.data), dtype=np.uint64)], axis=1)
        todo = None
        if reused:
            for index, _, key in self._outputs((0, 1), teacher=False):
                keys[index, 0] = key
            todo = self._copy(values, keys[:, 0], reused)
        logger.info("computing the teacher's outputs on %d examples once", len(self.data) if todo is None else len(todo))
        for index, found, key in self._outputs((0, 1), todo):
            values[self._rows(index)] = found
            keys[index, 0] = key
        values.flush()
        keys.tofile(staging / KEYS_FILE)
        return self._details(shape)

    def _copy(self, values: np.memmap, keys: np.ndarray, reused: list[Path]) -> np.ndarray:
        """Copies into ``values`` the outputs of the examples whose key one of the caches ``reused``
        holds; returns the examples left to compute."""
        missing = np.ones(len(keys), dtype=bool)
        for source in reused:
            stamp = Stamp(source / STAMP_FILE).read() or {}
            theirs = np.fromfile(source / KEYS_FILE, dtype=np.uint64).reshape(-1, 2)
            order = np.argsort(theirs[:, 0], kind="stable")
            at = np.minimum(np.searchsorted(theirs[order, 0], keys), len(order) - 1)
            found = missing & (theirs[order[at], 0] == keys)
            their_values = mapped_values(source, stamp.get("fingerprint"), (stamp.get("rows", 0), values.shape[1]))
            for index in np.flatnonzero(found):
                rows = self._rows(index)
                first = int(theirs[order[at[index]], 1])
                values[rows] = their_values[first:first + rows.stop - rows.start]
            logger.info("the teacher's outputs on %d of %d examples read from %s", found.sum(), len(keys), source)
            missing &= ~found
        return np.flatnonzero(missing)

    def share(self, folder: Path, shard: tuple[int, int], width: int) -> None:
        """This process's share into ``folder``, in the order it computed it: its values, and the
        examples they belong to (in ``.indices``)."""
        if shard[0] == 0:
            logger.info("computing the teacher's outputs on %d examples once, on %d processes", len(self.data),
                        shard[1])
        folder.mkdir(parents=True, exist_ok=True)
        mine = np.fromiter(itertools.chain.from_iterable(SortedBatches(self.lengths, self.batch_size, shard)),
                           dtype=np.int64)
        rows = int(self.lengths[mine].sum()) if per_token(self.task) else len(mine)
        path = folder / f"rank-{shard[0]}"
        mine.tofile(_indices(path))
        if not rows:  # fewer batches than processes
            path.touch()
            return
        values = np.memmap(path, dtype=np.float32, mode="w+", shape=(rows, width))
        done = 0
        for _, found, _ in self._outputs(shard):
            found = found.reshape(-1, values.shape[1])
            values[done:done + len(found)] = found
            done += len(found)
        values.flush()

    def gathered(self, staging: Path, shape: tuple[int, int], folder: Path) -> dict:
        """The cache made of every process's share (the main process, once all are written)."""
        values = np.memmap(staging / VALUES_FILE, dtype=np.float32, mode="w+", shape=shape)
        for rank in range(self.accelerator.num_processes):
            path = folder / f"rank-{rank}"
            order = np.fromfile(_indices(path), dtype=np.int64)
            if not len(order):
                continue
            sizes = self.lengths[order] if per_token(self.task) else np.ones(len(order), dtype=np.int64)
            share = np.memmap(path, dtype=np.float32, mode="r", shape=(int(sizes.sum()), shape[1]))
            begins = np.cumsum(sizes) - sizes  # where each example's rows lie in the share
            for block in range(0, len(order), GATHER_BLOCK):  # a block of examples at a time: bounded memory
                examples = slice(block, block + GATHER_BLOCK)
                rows = share[begins[examples][0]:begins[examples][-1] + sizes[examples][-1]]
                if per_token(self.task):  # each example's rows go to its place in the cache
                    places = np.repeat(self.starts[order[examples]] - begins[examples], sizes[examples])
                    values[places + np.arange(begins[examples][0], begins[examples][0] + len(rows))] = rows
                else:
                    values[order[examples]] = rows
        values.flush()
        return self._details(shape)

    def _details(self, shape: tuple[int, int]) -> dict:
        """What the cache's stamp says of it, beside its inputs."""
        return {"task": self.task, "width": shape[1], "rows": shape[0], "examples": len(self.data)}

    @torch.inference_mode()
    def _outputs(self, shard: tuple[int, int], indices: np.ndarray | None = None,
                 teacher: bool = True) -> Iterator[tuple[int, np.ndarray | None, int]]:
        """(example, its outputs: float32, one row per real token where the task has them, its key)
        for the examples of the batches of ``shard`` (of the examples ``indices``, default all), in
        the order they are computed; without the ``teacher``, keys only (outputs None)."""
        examples = self.data if indices is None else _Some(self.data, indices)
        loader, order = eval_loader(examples, self.tokenizer, self.batch_size, shard=shard)
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            for batch in tqdm(loader, desc="teacher outputs" if teacher else "reading rows", unit="batch", leave=False,
                              disable=not (self.show_progress and self.accelerator.is_main_process)):
                found = None
                if teacher:
                    inputs = {key: value.to(self.accelerator.device) for key, value in model_inputs(batch).items()}
                    with self.accelerator.autocast():
                        output = self.teacher(**inputs)
                    found = (torch.stack([output.start_logits, output.end_logits], dim=-1) if self.task == "qa"
                             else output.logits).float().cpu().numpy()
                real = batch["attention_mask"].bool().numpy()
                types = batch.get("token_type_ids")
                for row in range(len(real)):
                    index = next(order)
                    key = _key(batch["input_ids"][row].numpy()[real[row]],
                               None if types is None else types[row].numpy()[real[row]])
                    outputs = None if found is None else found[row][real[row]] if per_token(self.task) else found[row]
                    yield index if indices is None else int(indices[index]), outputs, key
        finally:
            self.teacher.train(was_training)
