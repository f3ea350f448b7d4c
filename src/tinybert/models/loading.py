"""Loading and saving Hugging Face models and tokenizers from local directories only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification)

from ..artifacts import digest_files, write_json
from ..data import LabelSpace
from ..errors import InputError
from .card import write_card
from .files import RECORD_FILE, RUN_RECORDS
from .legacy import read_config_json, resolve_model_dir
from .static import HEAD_FILE, StaticStudent, label_space_of_static
from .static import read_config as read_static_config
from .tokenizer import load_tokenizer_files


def check_model_dir(path: str | os.PathLike, option: str = "--model") -> Path:
    """The directory to load: ``path``, or the converted copy of a reference-code checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("model directory not found", path=path,
                         fix=f"pass {option} a local directory written by save_pretrained "
                             "(models are never downloaded)")
    path = resolve_model_dir(path)
    if not (path / "config.json").is_file():
        raise InputError("no config.json in the model directory", path=path,
                         fix=f"pass {option} a directory written by save_pretrained")
    if read_static_config(path) is None:
        _check_config(path / "config.json", option)
    return path


def _check_config(path: Path, option: str) -> None:
    """A config.json transformers can read (every caller goes on to read it, many callers deep)."""
    read_config_json(path)
    try:
        AutoConfig.from_pretrained(path.parent)
    except Exception as error:  # no model_type, an unknown one, a value of the wrong type: transformers' own words
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"transformers cannot read this config.json: {reason}", path=path,
                         fix=f"pass {option} a directory written by save_pretrained (its config.json names its "
                             "model_type)") from None


def load_tokenizer(model_dir: str | os.PathLike):
    return load_tokenizer_files(check_model_dir(model_dir), shown=model_dir)


# the model class of each task (sequence, token, qa)
TASK_MODELS = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification,
               "qa": AutoModelForQuestionAnswering}


def label_space_of(model_dir: str | os.PathLike) -> LabelSpace | None:
    """The label space stored with a fine-tuned model (or a static student), or None for a bare encoder."""
    path = check_model_dir(model_dir)
    static = read_static_config(path)
    if static is not None:
        return label_space_of_static(static)
    return LabelSpace.from_config(AutoConfig.from_pretrained(path))


def describe(space: LabelSpace) -> str:
    return {"regression": "scores", "qa": "answer spans"}.get(space.kind) or ", ".join(space.names)


def load_classifier(model_dir: str | os.PathLike, label_space: LabelSpace | None = None):
    """A task model from any local encoder directory (a classifier, a tagger or a QA model, as
    the label space says), or a static student.

    A bare encoder gets a new head sized for ``label_space``; a fine-tuned model keeps its head,
    and its stored labels must match ``label_space`` when one is given.
    """
    path = check_model_dir(model_dir)
    if read_static_config(path) is not None:
        return StaticStudent.from_pretrained(path)
    stored = label_space_of(path)
    if stored is not None and label_space is not None and stored != label_space:
        raise InputError(f"the model was trained for {describe(stored)} ({stored.task} task), the data has "
                         f"{describe(label_space)} ({label_space.task} task)", path=path,
                         fix="fine-tune from the base encoder, or use data with the model's labels")
    space = stored or label_space
    extra = {} if stored is not None or label_space is None else label_space.config_fields()
    # trainable weights in float32 whatever the checkpoint was saved in (transformers 5 keeps an
    # fp16/bf16 checkpoint's dtype, and AdamW on half-precision weights loses the updates)
    return TASK_MODELS[space.task if space else "sequence"].from_pretrained(path, dtype=torch.float32, **extra)


def save_model_dir(model, tokenizer, output_dir: str | os.PathLike, record: dict | None = None) -> None:
    """save_pretrained into a staging directory, then move the files into place: a kill never
    leaves a half-written model (the output directory also holds checkpoints and logs, so it is
    filled, not replaced). ``record``: how the model was made (``record.model_record``), also
    written as the model card."""
    output_dir = Path(output_dir)
    staging = output_dir / ".saving"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if record is not None:
        write_json(staging / RECORD_FILE, record)
    for item in staging.iterdir():
        os.replace(item, output_dir / item.name)
    staging.rmdir()
    if record is not None:
        write_card(output_dir, record, {"params": count_parameters(model), "size_mb": model_size_mb(output_dir)})


def model_size_mb(model_dir: str | os.PathLike) -> float:
    """Size of the model's weight files (not of files saved beside them, such as projections)."""
    weights = list(Path(model_dir).glob("model*.safetensors")) or list(Path(model_dir).glob("pytorch_model*.bin"))
    weights += list(Path(model_dir).glob(HEAD_FILE))  # a static student's head, in model2vec's file
    return sum(path.stat().st_size for path in weights) / 1e6


def digest_model_dir(path: str | os.PathLike) -> str:
    """A fingerprint of what a model directory holds (config, weights, tokenizer, projections)."""
    path = check_model_dir(path)
    return digest_files([item for item in path.iterdir() if item.is_file() and item.name not in RUN_RECORDS], root=path)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
