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
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from ..artifacts import build_directory, digest, is_built, read_json
from ..data import eval_loader
from ..data.batching import model_inputs
from ..data.sampling import SortedBatches
from ..models.loading import digest_model_dir

logger = logging.getLogger(__name__)

STAMP_FILE = "outputs.json"
VALUES_FILE = "outputs.f32"
OUTPUTS_KEY = "teacher_outputs"  # what a batch carries the outputs under
VERSION = 1
# the cache is made only where it takes at most this share of the free disk space
DISK_SHARE = 0.5


def _parts(data) -> list:
    return getattr(data, "parts", [data])


def _identity(data) -> list:
    """The training data as tokenised: each part's token-cache fingerprint and examples in view."""
    return [[part.meta["fingerprint"], len(part)] for part in _parts(data)]


def _per_token(task: str) -> bool:
    return task in ("token", "qa")


class TeacherOutputs:
    """A built cache: ``of(i)`` is example i's outputs (float32), a vector of class logits, or one
    row per token (tag logits; for QA the start and end logits side by side)."""

    def __init__(self, directory: Path, lengths: np.ndarray):
        self.directory = directory
        meta = read_json(directory / STAMP_FILE)
        self.per_token = _per_token(meta["task"])
        rows = int(lengths.sum()) if self.per_token else len(lengths)
        self.values = np.memmap(directory / VALUES_FILE, dtype=np.float32, mode="r", shape=(rows, meta["width"]))
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]) if self.per_token else None

    def of(self, index: int) -> np.ndarray:
        if self.per_token:
            return np.array(self.values[self.starts[index]:self.starts[index + 1]])
        return np.array(self.values[index])


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
        plan = _plan(target, inputs, shape)
    if accelerator.num_processes > 1:  # every process follows the main one's decision
        plan = broadcast_object_list([plan])[0]
    if plan == "teacher":
        return None
    if plan == "build":
        fill = _Fill(teacher, data, task, tokenizer, batch_size, accelerator, show_progress)
        if accelerator.num_processes == 1:
            build_directory(target, STAMP_FILE, inputs, lambda staging: fill.into(staging, shape, (0, 1)))
        else:
            share = fill.share(target, (accelerator.process_index, accelerator.num_processes))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                build_directory(target, STAMP_FILE, inputs, lambda staging: fill.gathered(staging, shape, target))
            accelerator.wait_for_everyone()
            share.unlink()
            _indices(share).unlink()
    return TeacherOutputs(target, lengths)


def _plan(target: Path, inputs: dict, shape: tuple[int, int]) -> str:
    """"ready" (built from these inputs), "build", or "teacher" (it would not fit on disk)."""
    if is_built(target, STAMP_FILE, inputs):
        return "ready"
    size = shape[0] * shape[1] * 4
    target.parent.mkdir(parents=True, exist_ok=True)
    if size > DISK_SHARE * shutil.disk_usage(target.parent).free:
        logger.warning("the teacher's outputs (%.1f GB) would take more than half the free disk space under %s: "
                       "stage 2 runs the teacher at every step instead", size / 1e9, target.parent)
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

    def into(self, staging: Path, shape: tuple[int, int], shard: tuple[int, int]) -> dict:
        """All outputs into the cache being built (one process)."""
        logger.info("computing the teacher's outputs on %d examples once", len(self.data))
        values = np.memmap(staging / VALUES_FILE, dtype=np.float32, mode="w+", shape=shape)
        for index, found in self._outputs(shard):
            values[self._rows(index)] = found
        values.flush()
        return {"task": self.task, "width": shape[1], "examples": len(self.data)}

    def share(self, target: Path, shard: tuple[int, int]) -> Path:
        """This process's share, in the order it computed it, beside the cache: its values, and the
        examples they belong to (in ``.indices``)."""
        if shard[0] == 0:
            logger.info("computing the teacher's outputs on %d examples once, on %d processes", len(self.data),
                        shard[1])
        mine = np.fromiter(itertools.chain.from_iterable(SortedBatches(self.lengths, self.batch_size, shard)),
                           dtype=np.int64)
        rows = int(self.lengths[mine].sum()) if _per_token(self.task) else len(mine)
        path = target.with_name(f"{target.name}.share-{shard[0]}-of-{shard[1]}")
        values = np.memmap(path, dtype=np.float32, mode="w+", shape=(rows, self._width()))
        done = 0
        for _, found in self._outputs(shard):
            found = found.reshape(-1, values.shape[1])
            values[done:done + len(found)] = found
            done += len(found)
        values.flush()
        mine.tofile(_indices(path))
        return path

    def gathered(self, staging: Path, shape: tuple[int, int], target: Path) -> dict:
        """The cache made of every process's share (the main process, once all are written)."""
        values = np.memmap(staging / VALUES_FILE, dtype=np.float32, mode="w+", shape=shape)
        count = self.accelerator.num_processes
        for rank in range(count):
            path = target.with_name(f"{target.name}.share-{rank}-of-{count}")
            order = np.fromfile(_indices(path), dtype=np.int64)
            sizes = self.lengths[order] if _per_token(self.task) else np.ones(len(order), dtype=np.int64)
            share = np.memmap(path, dtype=np.float32, mode="r", shape=(int(sizes.sum()), shape[1]))
            for index, start, size in zip(order, np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes):
                values[self._rows(index)] = share[start:start + size]
        values.flush()
        return {"task": self.task, "width": shape[1], "examples": len(self.data)}

    def _width(self) -> int:
        return 2 if self.task == "qa" else self.teacher.config.num_labels

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
