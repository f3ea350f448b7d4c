"""What a model directory remembers of how it was made: ``tinybert.json`` beside the weights.

It holds the settings a later command needs to use the model as it was trained: the window
length and (QA) doc stride, the task and its labels, the stage that made it and the teacher it
came from. evaluate, predict, export and distillation's stage 2 default to them, so a QA model
distilled on 384-token windows is evaluated on 384-token windows; a setting given explicitly
still wins. A model from elsewhere has no record: the commands' own defaults apply.

It also holds what the model card (``card.py``) says of how the model was made: the base model,
the recipe (each stage's data, example counts and schedule, a student's earlier stages first),
the best dev metrics, and the command that made it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from ..data import DataOptions, LabelSpace
from ..data.squad import fitting_stride
from ..errors import InputError
from .files import RECORD_FILE

DEFAULT_LENGTH = 128  # tokens per example where neither the user nor the model says


def model_record(stage: str, label_space: LabelSpace | None, max_length: int, doc_stride: int | None,
                 teacher: str | os.PathLike | None = None, started_from: str | os.PathLike | None = None,
                 step: dict | None = None, dev: dict | None = None, command: str | None = None) -> dict:
    """The record of a model made by ``stage`` (finetune, general, intermediate or prediction):
    ``step`` is how that stage trained (``recipe_step``), ``dev`` its best dev metrics, ``command``
    the command line that makes it."""
    task = label_space.task if label_space is not None else None
    base_model, earlier = _lineage(started_from)
    return {"stage": stage, "task": task, "labels": (label_space.names or None) if label_space is not None else None,
            "max_length": max_length, "doc_stride": doc_stride if task == "qa" else None,
            # absolute: the record is read from other working directories
            "teacher": None if teacher is None else str(Path(teacher).resolve()),
            "started_from": _where(started_from),
            "base_model": base_model, "recipe": earlier + ([step] if step else []), "dev": dev, "command": command}


def _where(started_from: str | os.PathLike | None) -> str | None:
    """A directory's absolute path; a preset or size file's name as given."""
    if started_from is None:
        return None
    return str(Path(started_from).resolve()) if Path(started_from).is_dir() else str(started_from)


def recipe_step(stage: str, data: list, examples: dict, training, **settings) -> dict:
    """One stage of how a model was made: its data (file names; examples by origin: original,
    augmented, unlabelled), its schedule (``training``: a ``TrainingConfig``) and ``settings`` of its own."""
    return {"stage": stage, "data": [Path(path).name for path in data], "examples": examples,
            "epochs": training.epochs, "max_steps": training.max_steps, "learning_rate": training.learning_rate,
            "batch_size": training.batch_size, **settings}


def _lineage(started_from) -> tuple[str | None, list]:
    """The base model of a model started from ``started_from``, and the earlier stages of its
    recipe: a student's from the general or stage-1 student it continues; any other model
    directory is the base itself; a preset or a file of sizes is no model."""
    if started_from is None or not Path(started_from).is_dir():
        return None, []
    earlier = read_record(started_from)
    if earlier.get("stage") in ("general", "intermediate"):
        return earlier.get("base_model"), earlier.get("recipe") or []
    return str(started_from), []


def read_record(model_dir: str | os.PathLike) -> dict:
    """A model directory's record ({} when it has none)."""
    path = Path(model_dir) / RECORD_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"not a valid record of how the model was made ({error})", path=path,
                         fix="repair it, or delete it to use the commands' defaults") from None
    if not isinstance(record, dict):
        raise InputError("not a JSON object", path=path, fix="repair it, or delete it to use the commands' defaults")
    return record


def reading_settings(record: dict, max_length: int | None, options: DataOptions, task: str,
                     default_length: int = DEFAULT_LENGTH) -> tuple[int, DataOptions]:
    """The window length and reading options to use a model of ``task`` with: what was given,
    else what the model's ``record`` says, else the defaults. For QA a recorded doc stride that
    does not fit the windows is replaced, with a warning, and a given one is refused; other tasks
    have no windows, and their stride is left alone."""
    length = max_length or record.get("max_length") or default_length
    if task != "qa":
        return length, options
    return length, replace(options, doc_stride=fitting_stride(options.doc_stride, length, record.get("doc_stride")))
