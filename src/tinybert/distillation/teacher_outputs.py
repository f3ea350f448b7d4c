"""Stage 2's teacher outputs, computed once and read back instead of running the teacher again.

The teacher is frozen, so what it outputs for a row never changes, and with a BERT-base teacher
and a 4-layer student its forward pass is most of stage 2's arithmetic. One inference pass over
the training data (sorted by length, large batches, no gradients) writes its outputs to a cache
on disk: class logits (one row per example), tag logits or answer start and end logits (one row
per token, in the order of the data's tokens). The cache is keyed by the teacher's weights, the
training data as tokenised (its token caches' fingerprints, hence its content, tokenizer and max
length), the task and the precision the teacher runs in, and built under the same lock, staging
and integrity rules as the token cache (named, like it, by where its inputs live, so a changed
teacher or file rebuilds it in place); the training loader then reads each example's outputs
beside its tokens (memory-mapped), and stage 2 never calls the teacher. Under several processes
each computes its share of the batches, and the main one gathers them into the cache.

It is filled by a pass of its own rather than during stage 1's first epoch: collecting outputs
there would copy them to the host at every step (a wait for the GPU the loop otherwise avoids),
and under several processes no process sees every row.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from ..artifacts import Stamp, build_directory, digest, is_built, read_json, read_lock
from ..data import eval_loader
from ..data.batching import model_inputs
from ..data.sampling import SortedBatches
from ..errors import InputError
from ..models.loading import digest_model_dir
from ..training import main_process_first

logger = logging.getLogger(__name__)

STAMP_FILE = "outputs.json"
VALUES_FILE = "outputs.f32"
OUTPUTS_KEY = "teacher_outputs"  # what a batch carries the outputs under
VERSION = 1
# the cache is made only where it takes at most this share of the free disk space
DISK_SHARE = 0.5
GATHER_BLOCK = 65536  # examples whose shared outputs the main process places at once


def _parts(data) -> list:
    return getattr(data, "parts", [data])


def _identity(data) -> list:
    """The training data as tokenised: each part's token-cache fingerprint and examples in view."""
    return [[part.meta["fingerprint"], len(part)] for part in _parts(data)]


def _per_token(task: str) -> bool:
    return task in ("token", "qa")


def _rebuilt_elsewhere(directory: Path) -> InputError:
    return InputError(f"the teacher's outputs in {directory} were rebuilt by another run for another teacher or data "
                      "file while this one used them", fix="run one of the two at a time, or give each its own "
                      "--cache-dir (or --no-teacher-cache)")


class TeacherOutputs:
    """A built cache: ``of(i)`` is example i's outputs (float32), a vector of class logits, or one
    row per token (tag logits; for QA the start and end logits side by side)."""

    def __init__(self, directory: Path, lengths: np.ndarray, inputs: dict):
        self.directory = directory
        self.fingerprint = digest(inputs)
        meta = Stamp(directory / STAMP_FILE).read()
        if meta is None or meta.get("fingerprint") != self.fingerprint:
            raise _rebuilt_elsewhere(directory)
        self.per_token = _per_token(meta["task"])
        self.shape = (int(lengths.sum()) if self.per_token else len(lengths), meta["width"])
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]) if self.per_token else None
        self._values = None
        self._reading = read_lock(directory / STAMP_FILE)  # in use while it lives

    def __getstate__(self) -> dict:
        """Sent to a process started afresh (DataLoader workers under spawn): it maps the file itself
        (a pickled memmap would carry a copy of every value; the process that sent it holds the
        cache in use)."""
        return {**self.__dict__, "_values": None, "_reading": None}

    def _mapped(self) -> np.memmap:
        """The values, mapped once per process. Another run sharing the cache directory may have
        rebuilt it (for a teacher retrained where it was) since this one found it ready: the file
        is opened first, then its stamp read, so the file mapped is the one this run's inputs
        made, or the check fails."""
        try:
            with open(self.directory / VALUES_FILE, "rb") as handle:
                stamp = read_json(self.directory / STAMP_FILE) or {}
                size = os.fstat(handle.fileno()).st_size
                if stamp.get("fingerprint") != self.fingerprint or size != 4 * self.shape[0] * self.shape[1]:
                    raise _rebuilt_elsewhere(self.directory)
                return np.memmap(handle, dtype=np.float32, mode="r", shape=self.shape)  # maps survive the close
        except FileNotFoundError:  # between the two renames that replace the folder
            raise _rebuilt_elsewhere(self.directory) from None

    def of(self, index: int) -> np.ndarray:
        if self._values is None:
            self._values = self._mapped()
        if self.per_token:
            return np.array(self._values[self.starts[index]:self.starts[index + 1]])
        return np.array(self._values[index])


class WithTeacherOutputs(torch.utils.data.Dataset):
    """A training dataset whose examples also carry the teacher's outputs (under ``OUTPUTS_KEY``)."""

    def __init__(self, data, outputs: TeacherOutputs):
        self.data, self.outputs = data, outputs
        self.lengths = data.lengths

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        return {**self.data[index], OUTPUTS_KEY: self.outputs.of(index)}


def teacher_outputs(teacher, teacher_dir, data, task: str, tokenizer, root: str | Path, *, precision: str,
                    accelerator, batch_size: int = 64, show_progress: bool = True) -> TeacherOutputs | None:
    """The cache of ``teacher``'s outputs on ``data`` (labelled training data in its order) under
    ``root``, built by one pass when it does not exist yet, or None when it would not fit on disk
    (stage 2 then runs the teacher at every step). Called on every process: under several, each
    runs the teacher on its share of the batches and the main process gathers their outputs."""
    inputs = {"teacher": digest_model_dir(teacher_dir), "data": _identity(data), "task": task,
              "precision": precision, "version": VERSION}
    # named by where its teacher and data live (as a token cache is, by its file): a retrained
    # teacher or an edited file rebuilds it in place instead of leaving the old one on disk
    place = {"teacher": str(Path(teacher_dir).resolve()), "data": [[part.directory.name, len(part)]
                                                                  for part in _parts(data)], "task": task,
             "precision": precision}
    target = Path(root) / f"teacher-outputs-{digest(place)[:16]}"
    lengths = np.asarray(data.lengths, dtype=np.int64)
    shape = (int(lengths.sum()) if _per_token(task) else len(data), 2 if task == "qa" else teacher.config.num_labels)
    plan = None
    if accelerator.is_main_process:
        # this run's own folder for the processes' shares: runs sharing the cache directory never mix them
        plan = (_plan(target, inputs, shape, accelerator.num_processes), uuid.uuid4().hex[:12])
    if accelerator.num_processes > 1:  # every process follows the main one's decision
        plan = broadcast_object_list([plan])[0]
    decision, run = plan
    if decision == "teacher":
        return None
    if decision == "build":
        fill = _Fill(teacher, data, task, tokenizer, batch_size, accelerator, show_progress)
        described = {"teacher": str(teacher_dir), "sources": [part.meta["source"] for part in _parts(data)]}
        if accelerator.num_processes == 1:
            build_directory(target, STAMP_FILE, inputs, lambda staging: {**fill.into(staging, shape), **described})
        else:
            shares = target.with_name(f".{target.name}.shares-{run}")
            try:
                fill.share(shares, (accelerator.process_index, accelerator.num_processes), shape[1])
                accelerator.wait_for_everyone()
                # the main process gathers (the others then find the cache built); its failure stops them all
                main_process_first(accelerator, lambda: build_directory(
                    target, STAMP_FILE, inputs, lambda staging: {**fill.gathered(staging, shape, shares), **described}))
            finally:
                if accelerator.is_main_process:
                    shutil.rmtree(shares, ignore_errors=True)
    return TeacherOutputs(target, lengths, inputs)


def _plan(target: Path, inputs: dict, shape: tuple[int, int], processes: int) -> str:
    """"ready" (built from these inputs), "build", or "teacher" (it would not fit on disk: under
    several processes their shares are on disk beside the cache being gathered from them)."""
    if is_built(target, STAMP_FILE, inputs):
        return "ready"
    size = shape[0] * shape[1] * 4 * (2 if processes > 1 else 1)
    target.parent.mkdir(parents=True, exist_ok=True)
    if size > DISK_SHARE * shutil.disk_usage(target.parent).free:
        logger.warning("the teacher's outputs (%.1f GB to build) would take more than half the free disk space "
                       "under %s: stage 2 runs the teacher at every step instead", size / 1e9, target.parent)
        return "teacher"
    return "build"


def _indices(share: Path) -> Path:
    return share.with_name(share.name + ".indices")


class _Fill:
    """The teacher's outputs on the data, in batches sorted by length, written where each
    example's rows go: all of them by one process, or each process's share of the batches."""

    def __init__(self, teacher, data, task: str, tokenizer, batch_size: int, accelerator, show_progress: bool):
        self.teacher, self.data, self.task, self.tokenizer = teacher, data, task, tokenizer
        self.batch_size, self.accelerator, self.show_progress = batch_size, accelerator, show_progress
        self.lengths = np.asarray(data.lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)])

    def _rows(self, index: int) -> slice:
        return slice(self.starts[index], self.starts[index + 1]) if _per_token(self.task) else slice(index, index + 1)

    def into(self, staging: Path, shape: tuple[int, int]) -> dict:
        """All outputs into the cache being built (one process)."""
        logger.info("computing the teacher's outputs on %d examples once", len(self.data))
        values = np.memmap(staging / VALUES_FILE, dtype=np.float32, mode="w+", shape=shape)
        for index, found in self._outputs((0, 1)):
            values[self._rows(index)] = found
        values.flush()
        return self._details(shape)

    def share(self, folder: Path, shard: tuple[int, int], width: int) -> None:
        """This process's share into ``folder``, in the order it computed it: its values, and the
        examples they belong to (in ``.indices``)."""
        if shard[0] == 0:
            logger.info("computing the teacher's outputs on %d examples once, on %d processes", len(self.data),
                        shard[1])
        folder.mkdir(parents=True, exist_ok=True)
        mine = np.fromiter(itertools.chain.from_iterable(SortedBatches(self.lengths, self.batch_size, shard)),
                           dtype=np.int64)
        rows = int(self.lengths[mine].sum()) if _per_token(self.task) else len(mine)
        path = folder / f"rank-{shard[0]}"
        mine.tofile(_indices(path))
        if not rows:  # fewer batches than processes
            path.touch()
            return
        values = np.memmap(path, dtype=np.float32, mode="w+", shape=(rows, width))
        done = 0
        for _, found in self._outputs(shard):
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
            sizes = self.lengths[order] if _per_token(self.task) else np.ones(len(order), dtype=np.int64)
            share = np.memmap(path, dtype=np.float32, mode="r", shape=(int(sizes.sum()), shape[1]))
            begins = np.cumsum(sizes) - sizes  # where each example's rows lie in the share
            for block in range(0, len(order), GATHER_BLOCK):  # a block of examples at a time: bounded memory
                examples = slice(block, block + GATHER_BLOCK)
                rows = share[begins[examples][0]:begins[examples][-1] + sizes[examples][-1]]
                if _per_token(self.task):  # each example's rows go to its place in the cache
                    places = np.repeat(self.starts[order[examples]] - begins[examples], sizes[examples])
                    values[places + np.arange(begins[examples][0], begins[examples][0] + len(rows))] = rows
                else:
                    values[order[examples]] = rows
        values.flush()
        return self._details(shape)

    def _details(self, shape: tuple[int, int]) -> dict:
        """What the cache's stamp says of it, beside its inputs."""
        return {"task": self.task, "width": shape[1], "examples": len(self.data)}

    @torch.inference_mode()
    def _outputs(self, shard: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
        """(example, its outputs: float32, one row per real token where the task has them) for the
        examples of the batches of ``shard``, in the order they are computed."""
        loader, order = eval_loader(self.data, self.tokenizer, self.batch_size, shard=shard)
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            for batch in tqdm(loader, desc="teacher outputs", unit="batch", leave=False,
                              disable=not (self.show_progress and self.accelerator.is_main_process)):
                inputs = {key: value.to(self.accelerator.device) for key, value in model_inputs(batch).items()}
                with self.accelerator.autocast():
                    output = self.teacher(**inputs)
                if self.task == "qa":
                    found = torch.stack([output.start_logits, output.end_logits], dim=-1)
                else:
                    found = output.logits
                found = found.float().cpu().numpy()
                real = batch["attention_mask"].bool().numpy()
                for row in range(len(found)):
                    yield next(order), found[row][real[row]] if _per_token(self.task) else found[row]
        finally:
            self.teacher.train(was_training)
