"""What runs a model for inference: a save_pretrained directory through PyTorch, or an exported
ONNX file through onnxruntime, answering alike (``model(**batch).logits``), so that evaluation and
prediction run unchanged on either."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import InputError
from ..models.loading import check_model_dir, label_space_of, load_classifier, load_tokenizer
from ..models.record import read_record

ONNX_FILE = "model.onnx"


def cpu_session(model: str | bytes):
    """An onnxruntime CPU session for a model file or serialised model."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    # idle onnxruntime threads spin by default, taking CPU from PyTorch running in the same process
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """An onnxruntime session that answers like a transformers model (``model(**batch).logits``, or
    ``.start_logits`` and ``.end_logits`` for QA), so evaluation and prediction run unchanged on either."""

    training = False

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.session = cpu_session(str(path))
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.output_names = [node.name for node in self.session.get_outputs()]

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, **inputs):
        feeds = {name: np.asarray(inputs[name], dtype=np.int64) for name in self.input_names if name in inputs}
        if "token_type_ids" in self.input_names and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        outputs = self.session.run(self.output_names, feeds)
        return SimpleNamespace(**{name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs)})


def load_predictor(model: str | os.PathLike):
    """(model, tokenizer, label space, record of how it was made) for a save_pretrained directory,
    an export directory or a ``.onnx`` file (whose tokenizer, config and record lie beside it, as
    `tinybert export` writes them)."""
    path = Path(model)
    has_weights = path.is_dir() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))
    if path.is_dir() and not has_weights and (path / ONNX_FILE).is_file():
        path = path / ONNX_FILE  # an export directory
    if path.suffix == ".onnx":
        if not path.is_file():
            raise InputError("ONNX file not found", path=path, fix="pass the model.onnx written by `tinybert export`")
        folder = path.parent
        predictor = OnnxClassifier(path)
    else:
        folder = check_model_dir(path)
        predictor = load_classifier(folder).eval()
    label_space = label_space_of(folder)
    if label_space is None:
        raise InputError("no task labels in config.json", path=folder / "config.json",
                         fix="use a model written by `tinybert finetune`, `distill` or `export`")
    return predictor, load_tokenizer(folder), label_space, read_record(folder)
