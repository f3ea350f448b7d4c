"""Students: preset sizes, layer maps, and building a student from a teacher."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel

from ..data import LabelSpace
from ..errors import InputError
from .loading import TASK_MODELS, check_model_dir, count_parameters, load_classifier

STUDENT_PRESETS = {
    "tinybert-4l-312": {"num_hidden_layers": 4, "hidden_size": 312, "intermediate_size": 1200,
                        "num_attention_heads": 12},
    "tinybert-6l-768": {"num_hidden_layers": 6, "hidden_size": 768, "intermediate_size": 3072,
                        "num_attention_heads": 12},
}
_SHAPE_FIELDS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
# The input's shape and the training regime, not the network's size: these stay the teacher's.
_INHERITED_FIELDS = ("vocab_size", "max_position_embeddings", "type_vocab_size", "pad_token_id",
                     "hidden_act", "layer_norm_eps", "model_type", "hidden_dropout_prob",
                     "attention_probs_dropout_prob")


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """g(m) = m·N/M rounded half up, for m = 1..M (1-based teacher layers; 0 is the embeddings).
    g(M) = N always; N need not be a multiple of M (6→4 gives 2, 3, 5, 6)."""
    return [int(m * teacher_layers / student_layers + 0.5) for m in range(1, student_layers + 1)]


def parse_layer_map(text: str | list[int], student_layers: int, teacher_layers: int) -> list[int]:
    """An explicit mapping: one 1-based teacher layer per student layer, e.g. "2,4,6"."""
    try:
        mapping = [int(part) for part in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise InputError(f"layer map {text!r} is not a list of layer numbers",
                         fix="give one teacher layer per student layer, e.g. --layer-map 3,6,9,12") from None
    if len(mapping) != student_layers:
        raise InputError(f"layer map {text!r} has {len(mapping)} entries but the student has "
                         f"{student_layers} layers", fix=f"give exactly {student_layers} teacher layers")
    if any(not 1 <= layer <= teacher_layers for layer in mapping):
        raise InputError(f"layer map {text!r} names a layer outside 1..{teacher_layers}",
                         fix=f"teacher layers are numbered 1 to {teacher_layers}")
    return mapping


def choose_layer_map(layer_map: str | list[int] | None, student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher layer each student layer learns from: ``layer_map`` when given, else uniform."""
    if layer_map:
        return parse_layer_map(layer_map, student_layers, teacher_layers)
    return uniform_layer_map(student_layers, teacher_layers)


def student_config(teacher_config, shape: dict, label_space: LabelSpace | None):
    values = {name: getattr(teacher_config, name) for name in _INHERITED_FIELDS if hasattr(teacher_config, name)}
    values.update(shape)
    if label_space is not None:
        values.update(label_space.config_fields())
    return AutoConfig.for_model(values.pop("model_type"), **values)


def _new_model(config, label_space: LabelSpace | None):
    """A task model (classifier, tagger, QA), a bare encoder for general distillation."""
    factory = AutoModel if label_space is None else TASK_MODELS[label_space.task]
    return factory.from_config(config)


def build_student(student: str, teacher, label_space: LabelSpace | None, *, layers: int | None = None,
                  init_from_teacher: bool = False, layer_map: list[int] | None = None):
    """A student classifier (a bare encoder when ``label_space`` is None): a preset name, a JSON file of sizes, an existing directory, or
    (``init_from_teacher``) the teacher's embeddings and mapped layers. ``layers`` overrides the
    layer count of a preset or of the teacher copy."""
    teacher_config = teacher.config
    if init_from_teacher:
        shape = {name: getattr(teacher_config, name) for name in _SHAPE_FIELDS}
        shape["num_hidden_layers"] = layers or teacher_config.num_hidden_layers
        model = _new_model(student_config(teacher_config, shape, label_space), label_space)
        mapping = layer_map or uniform_layer_map(shape["num_hidden_layers"], teacher_config.num_hidden_layers)
        _copy_teacher_layers(teacher, model, mapping)
        return model
    if student in STUDENT_PRESETS or str(student).endswith(".json"):
        shape = dict(STUDENT_PRESETS[student]) if student in STUDENT_PRESETS else _read_shape(student)
        if layers:
            shape["num_hidden_layers"] = layers
        return _new_model(student_config(teacher_config, shape, label_space), label_space)
    path = check_model_dir(student, "--student")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        # a configuration without weights (how the reference code names a student's size)
        config = AutoConfig.from_pretrained(path)
        shape = {name: getattr(config, name) for name in _SHAPE_FIELDS}
        shape["num_hidden_layers"] = layers or shape["num_hidden_layers"]
        return _new_model(student_config(teacher_config, shape, label_space), label_space)
    if layers:
        raise InputError("--layers applies to a preset or --init-from-teacher, not to an existing student",
                         path=path, fix="drop --layers, or use a preset name")
    model = (load_classifier(path, label_space) if label_space is not None
             else AutoModel.from_pretrained(path, dtype=torch.float32))
    if model.config.vocab_size != teacher_config.vocab_size:
        raise InputError(f"the student's vocabulary has {model.config.vocab_size} entries, the teacher's "
                         f"{teacher_config.vocab_size}", path=path,
                         fix="distil into a student built on the teacher's tokenizer")
    return model


def _read_shape(path: str) -> dict:
    """A student size from a JSON file, e.g. {"num_hidden_layers": 4, "hidden_size": 256,
    "intermediate_size": 1024, "num_attention_heads": 4}."""
    try:
        shape = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError("student shape file not found", path=path,
                         fix=f"use a preset ({', '.join(STUDENT_PRESETS)}), a student directory, "
                             "or a JSON file with the student's sizes") from None
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON ({error.msg})", path=path, line=error.lineno,
                         fix="write the sizes as a JSON object") from None
    unknown = set(shape) - set(_SHAPE_FIELDS)
    if not isinstance(shape, dict) or unknown:
        raise InputError(f"unknown student size field(s): {', '.join(sorted(unknown))}", path=path,
                         fix=f"use only {', '.join(_SHAPE_FIELDS)}")
    return shape


def _copy_teacher_layers(teacher, student, mapping: list[int]) -> None:
    teacher_base, student_base = teacher.base_model, student.base_model
    student_base.embeddings.load_state_dict(teacher_base.embeddings.state_dict())
    for student_index, teacher_layer in enumerate(mapping):
        student_base.encoder.layer[student_index].load_state_dict(
            teacher_base.encoder.layer[teacher_layer - 1].state_dict())
    if getattr(teacher_base, "pooler", None) is not None and getattr(student_base, "pooler", None) is not None:
        student_base.pooler.load_state_dict(teacher_base.pooler.state_dict())
    # a task head of the same shape starts where the teacher's is, not from random weights
    for name in ("classifier", "qa_outputs"):
        teacher_head, student_head = getattr(teacher, name, None), getattr(student, name, None)
        if teacher_head is not None and student_head is not None and all(
                a.shape == b.shape for a, b in zip(teacher_head.state_dict().values(), student_head.state_dict().values())):
            student_head.load_state_dict(teacher_head.state_dict())


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters that cost compute per token (the embedding tables are look-ups)."""
    embeddings = model.base_model.embeddings
    return count_parameters(model) - count_parameters(embeddings)
