"""Stage 2's teacher outputs, computed once and read back instead of running the teacher again.

The teacher is frozen, so what it outputs for a row never changes, and with a BERT-base teacher
and a 4-layer student its forward pass is most of stage 2's arithmetic. One inference pass over
the training data (sorted by length, large batches, no gradients) writes its outputs to a cache
on disk: class logits (one row per example), tag logits or answer start and end logits (one row
per token, in the order of the data's tokens). The cache is keyed by the teacher's weights, the
training data as tokenised (its token caches' fingerprints, hence its content, tokenizer and max
length), the task and the precision the teacher runs in, and built under the same lock, staging
and integrity rules as the token cache; the training loader then reads each example's outputs
beside its tokens (memory-mapped), and stage 2 never calls the teacher.

It is filled by a pass of its own rather than during stage 1's first epoch: collecting outputs
there would copy them to the host at every step (a wait for the GPU the loop otherwise avoids),
and under several processes or compiled steps no process sees every row.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..artifacts import build_directory, digest, read_json
from ..data import eval_loader
from ..data.batching import model_inputs
from ..models.loading import digest_model_dir

logger = logging.getLogger(__name__)

STAMP_FILE = "outputs.json"
VALUES_FILE = "outputs.f32"
OUTPUTS_KEY = "teacher_outputs"  # what a batch carries the outputs under
VERSION = 1
# the cache is made only where it takes at most this share of the free disk space
DISK_SHARE = 0.5


def _identity(data) -> list:
    """The training data as tokenised: each part's token-cache fingerprint and examples in view."""
    parts = getattr(data, "parts", [data])
    return [[part.meta["fingerprint"], len(part)] for part in parts]


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
    (stage 2 then runs the teacher at every step)."""
    inputs = {"teacher": digest_model_dir(teacher_dir), "data": _identity(data), "task": task,
              "precision": precision, "version": VERSION}
    target = Path(root) / f"teacher-outputs-{digest(inputs)[:16]}"
    width = 2 if task == "qa" else teacher.config.num_labels
    values = int(np.asarray(data.lengths, dtype=np.int64).sum()) if _per_token(task) else len(data)
    size = values * width * 4
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if not (target / STAMP_FILE).is_file() and size > DISK_SHARE * free:
        logger.warning("the teacher's outputs (%.1f GB) would take more than half the free disk space under %s: "
                       "stage 2 runs the teacher at every step instead", size / 1e9, target.parent)
        return None

    def build(staging: Path) -> dict:
        logger.info("computing the teacher's outputs on %d examples once, into %s", len(data), target)
        _fill(np.memmap(staging / VALUES_FILE, dtype=np.float32, mode="w+", shape=(values, width)), teacher, data,
              task, tokenizer, batch_size, accelerator, show_progress)
        return {"task": task, "width": width, "examples": len(data)}

    build_directory(target, STAMP_FILE, inputs, build)
    return TeacherOutputs(target, np.asarray(data.lengths, dtype=np.int64))


@torch.inference_mode()
def _fill(values: np.memmap, teacher, data, task: str, tokenizer, batch_size: int, accelerator,
          show_progress: bool) -> None:
    """The teacher's outputs for every example, in batches sorted by length, each written where
    the example's rows go."""
    lengths = np.asarray(data.lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    loader, order = eval_loader(data, tokenizer, batch_size)
    was_training = teacher.training
    teacher.eval()
    for batch in tqdm(loader, desc="teacher outputs", unit="batch", disable=not show_progress, leave=False):
        inputs = {key: value.to(accelerator.device) for key, value in model_inputs(batch).items()}
        with accelerator.autocast():
            output = teacher(**inputs)
        if task == "qa":
            found = torch.stack([output.start_logits, output.end_logits], dim=-1)
        else:
            found = output.logits
        found = found.float().cpu().numpy()
        real = batch["attention_mask"].bool().numpy()
        for row, index in enumerate(next(order) for _ in range(len(found))):
            if _per_token(task):
                values[starts[index]:starts[index + 1]] = found[row][real[row]]
            else:
                values[index] = found[row]
    teacher.train(was_training)
    values.flush()
