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
each computes its share of the batches, and the main one gathers them into the cache. The pass
(``teacher_pass``) copies the outputs of examples another cache of the same teacher already holds
(the pipeline's student without augmentation: its rows are the augmented file's original rows).

It is filled by a pass of its own rather than during stage 1's first epoch: collecting outputs
there would copy them to the host at every step (a wait for the GPU the loop otherwise avoids),
and under several processes no process sees every row.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from ..artifacts import Stamp, build_directory, digest, is_built, read_lock
from ..models.loading import digest_model_dir
from ..training import main_process_first
from .teacher_pass import STAMP_FILE, TeacherPass, mapped_values, per_token, rebuilt_elsewhere, sources

logger = logging.getLogger(__name__)

OUTPUTS_KEY = "teacher_outputs"  # what a batch carries the outputs under
VERSION = 2  # 2: each example's content key beside the outputs
# the cache is made only where it takes at most this share of the free disk space
DISK_SHARE = 0.5


def _parts(data) -> list:
    return getattr(data, "parts", [data])


def _identity(data) -> list:
    """The training data as tokenised: each part's token-cache fingerprint and examples in view."""
    return [[part.meta["fingerprint"], len(part)] for part in _parts(data)]


class TeacherOutputs:
    """A built cache: ``of(i)`` is example i's outputs (float32), a vector of class logits, or one
    row per token (tag logits; for QA the start and end logits side by side)."""

    def __init__(self, directory: Path, lengths: np.ndarray, inputs: dict):
        self.directory = directory
        self.fingerprint = digest(inputs)
        meta = Stamp(directory / STAMP_FILE).read()
        if meta is None or meta.get("fingerprint") != self.fingerprint:
            raise rebuilt_elsewhere(directory)
        self.per_token = per_token(meta["task"])
        self.shape = (int(lengths.sum()) if self.per_token else len(lengths), meta["width"])
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]) if self.per_token else None
        self._values = None
        self._reading = read_lock(directory / STAMP_FILE)  # in use while it lives

    def __getstate__(self) -> dict:
        """Sent to a process started afresh (DataLoader workers under spawn): it maps the file itself
        (a pickled memmap would carry a copy of every value; the process that sent it holds the
        cache in use)."""
        return {**self.__dict__, "_values": None, "_reading": None}

    def of(self, index: int) -> np.ndarray:
        if self._values is None:  # mapped once per process, checked as it is (another run may have rebuilt it)
            self._values = mapped_values(self.directory, self.fingerprint, self.shape)
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
    shape = (int(lengths.sum()) if per_token(task) else len(data), 2 if task == "qa" else teacher.config.num_labels)
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
        fill = TeacherPass(teacher, data, task, tokenizer, batch_size, accelerator, show_progress)
        described = {"teacher": str(teacher_dir), "sources": [part.meta["source"] for part in _parts(data)]}
        if accelerator.num_processes == 1:  # other caches of this teacher may hold some of the rows
            build_directory(target, STAMP_FILE, inputs, lambda staging: {
                **fill.into(staging, shape, sources(target, inputs, ("teacher", "task", "precision", "version"))),
                **described})
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
