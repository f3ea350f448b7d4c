"""Students: preset sizes, layer maps, and building a student in its teacher's family."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel

from ..data import LabelSpace
from ..errors import InputError
from .families import config_name, config_value, family_of, layers_prefix
from .loading import TASK_MODELS, check_model_dir, count_parameters, load_classifier
from ..settings import flag_of

logger = logging.getLogger(__name__)

STUDENT_PRESETS = {
    "tinybert-4l-312": {"num_hidden_layers": 4, "hidden_size": 312, "intermediate_size": 1200,
                        "num_attention_heads": 12},
    "tinybert-6l-768": {"num_hidden_layers": 6, "hidden_size": 768, "intermediate_size": 3072,
                        "num_attention_heads": 12},
}
_SHAPE_FIELDS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
# what a configuration says about the teacher's own training and task, not about its family
_NOT_INHERITED = ("architectures", "id2label", "label2id", "num_labels", "problem_type", "finetuning_task",
                  "_name_or_path", "dtype", "torch_dtype", "transformers_version")


def check_depth(student_layers: int, teacher_layers: int) -> None:
    """Refuses a student deeper than its teacher: some of its layers would have no teacher layer of
    their own to learn from (a uniform map gave them layer 0, the embeddings, which records no
    attention, and a copy from the teacher nothing to copy)."""
    if student_layers > teacher_layers:
        raise InputError(f"a {student_layers}-layer student of a {teacher_layers}-layer teacher: a student cannot "
                         "have more layers than its teacher",
                         fix=f"give the student {teacher_layers} layers or fewer (--layers, a smaller preset or "
                             "sizes file, or a shorter --layer-map)")


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """g(m) = m·N/M rounded half up, for m = 1..M (1-based teacher layers; 0 is the embeddings).
    g(M) = N always; N need not be a multiple of M (6→4 gives 2, 3, 5, 6); M ≤ N, so g(1) ≥ 1."""
    check_depth(student_layers, teacher_layers)
    return [int(m * teacher_layers / student_layers + 0.5) for m in range(1, student_layers + 1)]


def _entries(text: str | list[int]) -> list[str | int]:
    return text.split(",") if isinstance(text, str) else list(text)


def parse_layer_map(text: str | list[int], student_layers: int, teacher_layers: int) -> list[int]:
    """An explicit mapping: one 1-based teacher layer per student layer, e.g. "2,4,6"."""
    try:
        mapping = [int(part) for part in _entries(text)]
    except ValueError:
        raise InputError(f"layer map {text!r} is not a list of layer numbers",
                         fix="give one teacher layer per student layer, e.g. --layer-map 3,6,9,12") from None
    if len(mapping) != student_layers:
        raise InputError(f"layer map {text!r} has {len(mapping)} entries but the student has "
                         f"{student_layers} layers", fix=f"give exactly {student_layers} teacher layers")
    check_depth(student_layers, teacher_layers)
    if any(not 1 <= layer <= teacher_layers for layer in mapping):
        raise InputError(f"layer map {text!r} names a layer outside 1..{teacher_layers}",
                         fix=f"teacher layers are numbered 1 to {teacher_layers}")
    return mapping


def choose_layer_map(layer_map: str | list[int] | None, student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher layer each student layer learns from: ``layer_map`` when given, else uniform;
    every entry within 1..N, for a student of at most N layers."""
    if layer_map:
        return parse_layer_map(layer_map, student_layers, teacher_layers)
    return uniform_layer_map(student_layers, teacher_layers)


def student_layer_count(student: str, teacher_config, *, layers: int | None = None, init_from_teacher: bool = False,
                        layer_map: str | list[int] | None = None) -> int:
    """How many layers the student gets: ``layers``; else, copied from the teacher, one per entry of
    ``layer_map`` (all the teacher's without one); else its preset's, sizes file's or directory's."""
    teachers = config_value(teacher_config, "num_hidden_layers")
    if layers:
        return layers
    if init_from_teacher:
        return len(_entries(layer_map)) if layer_map else teachers
    if student in STUDENT_PRESETS:
        return STUDENT_PRESETS[student]["num_hidden_layers"]
    if str(student).endswith(".json"):
        return _read_shape(student).get("num_hidden_layers", teachers)
    return config_value(AutoConfig.from_pretrained(check_model_dir(student, "--student")), "num_hidden_layers")


def check_student_layers(teacher_dir, student: str, *, layers: int | None, layer_map: str | None,
                         init_from_teacher: bool) -> None:
    """Refuses, before any data is read, a student deeper than its teacher or a layer map that does
    not fit it."""
    teacher_config = AutoConfig.from_pretrained(check_model_dir(teacher_dir, "--teacher"))
    count = student_layer_count(student, teacher_config, layers=layers, init_from_teacher=init_from_teacher,
                                layer_map=layer_map)
    choose_layer_map(layer_map, count, config_value(teacher_config, "num_hidden_layers"))


def student_config(teacher_config, shape: dict, label_space: LabelSpace | None, teacher_layers: list[int]):
    """The teacher's configuration (its family and everything it sets: relative positions,
    rotary bases, embedding width, activation, ...) with the student's ``shape`` (BERT's field
    names) and task. ``teacher_layers``: the 1-based teacher layer each student layer is copied
    from or learns from, whose per-layer settings (ModernBERT's local or global attention) it
    takes, so that the attention it learns from works as its own."""
    family = family_of(teacher_config)
    values = {name: value for name, value in teacher_config.to_dict().items() if name not in _NOT_INHERITED}
    resized = any(shape.get(name, config_value(teacher_config, name)) != config_value(teacher_config, name)
                  for name in ("hidden_size", "num_attention_heads"))
    for name in family.derived if resized else ():
        values.pop(name, None)
    for name in family.follow_width:
        if values.get(name) == teacher_config.hidden_size:
            values[name] = shape.get("hidden_size", teacher_config.hidden_size)
    values.update({config_name(teacher_config, name): value for name, value in shape.items()})
    for name in family.per_layer:
        per_layer = list(getattr(teacher_config, name))
        values[name] = [per_layer[layer - 1] for layer in teacher_layers]
    if label_space is not None:
        values.update(label_space.config_fields())
    return AutoConfig.for_model(values.pop("model_type"), **values)


def _new_model(config, label_space: LabelSpace | None):
    """A task model (classifier, tagger, QA), a bare encoder for general distillation."""
    factory = AutoModel if label_space is None else TASK_MODELS[label_space.task]
    return factory.from_config(config)


def check_family(model_dir, option: str = "--teacher") -> None:
    """Refuses a model whose family tinybert cannot distil, before any data is read or model trained."""
    family_of(AutoConfig.from_pretrained(check_model_dir(model_dir, option)))


def check_student_sizes(student: str, teacher_dir) -> None:
    """Refuses a student given as a JSON file of sizes that are not sizes, before any data is read."""
    if str(student).endswith(".json") and student not in STUDENT_PRESETS:
        _check_heads(_read_shape(student), AutoConfig.from_pretrained(check_model_dir(teacher_dir, "--teacher")),
                     student)


def _check_heads(shape: dict, teacher_config, student: str) -> None:
    """The student's heads must divide its width (a size its shape leaves out is the teacher's)."""
    width, heads = (shape.get(name, config_value(teacher_config, name))
                    for name in ("hidden_size", "num_attention_heads"))
    if width % heads:
        raise InputError(f"the student's {heads} attention heads do not divide its hidden size {width}", path=student,
                         fix="choose a head count that divides hidden_size (e.g. 312 with 12 heads)")


def check_layers(layers: int | None, name=flag_of) -> None:
    """Refuses a student layer count below 1 (0 would silently mean the teacher's). ``name(key)``:
    how a message names a setting (a flag; a pipeline's section.key)."""
    if layers is not None and layers < 1:
        raise InputError(f"{name('layers')} {layers} is no layer count", fix="give 1 or more, or leave it out")


def build_student(student: str, teacher, label_space: LabelSpace | None, *, layers: int | None = None,
                  init_from_teacher: bool = False, layer_map: str | list[int] | None = None):
    """A student classifier (a bare encoder when ``label_space`` is None): a preset name, a JSON
    file of sizes, an existing directory, or (``init_from_teacher``) the teacher's embeddings and
    mapped layers. ``layers`` overrides the layer count of a preset or of the teacher copy. A new
    student's layers take the per-layer settings (ModernBERT's local or global attention) of the
    teacher layers ``layer_map`` (default: uniform) gives them to learn from."""
    teacher_config = teacher.config
    teachers = teacher_config.num_hidden_layers
    if init_from_teacher:
        count = student_layer_count(student, teacher_config, layers=layers, init_from_teacher=True,
                                    layer_map=layer_map)
        mapping = choose_layer_map(layer_map, count, teachers)
        shape = {"num_hidden_layers": len(mapping)}
        model = _new_model(student_config(teacher_config, shape, label_space, teacher_layers=mapping), label_space)
        copy_teacher_layers(teacher, model, mapping)
        return model
    if student in STUDENT_PRESETS or str(student).endswith(".json"):
        shape = dict(STUDENT_PRESETS[student]) if student in STUDENT_PRESETS else _read_shape(student)
    else:
        path = check_model_dir(student, "--student")
        if any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
            return _existing_student(path, teacher_config, label_space, layers)
        # a configuration without weights (how the reference code names a student's size)
        config = AutoConfig.from_pretrained(path)
        shape = {name: config_value(config, name) for name in _SHAPE_FIELDS}
    shape["num_hidden_layers"] = layers or shape.get("num_hidden_layers", teachers)
    _check_heads(shape, teacher_config, student)
    mapping = choose_layer_map(layer_map, shape["num_hidden_layers"], teachers)
    return _new_model(student_config(teacher_config, shape, label_space, teacher_layers=mapping), label_space)


def _existing_student(path: Path, teacher_config, label_space: LabelSpace | None, layers: int | None):
    """A student directory with weights (a general or stage-1 student), as it is."""
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
    example = '{"num_hidden_layers": 4, "hidden_size": 312, "intermediate_size": 1200, "num_attention_heads": 12}'
    if not isinstance(shape, dict):
        raise InputError("the student's sizes are not a JSON object", path=path, fix=f"write them as {example}")
    unknown = set(shape) - set(_SHAPE_FIELDS)
    if unknown:
        raise InputError(f"unknown student size field(s): {', '.join(sorted(unknown))}", path=path,
                         fix=f"use only {', '.join(_SHAPE_FIELDS)}")
    wrong = [name for name, value in shape.items()
             if isinstance(value, bool) or not isinstance(value, int) or value < 1]
    if wrong:
        raise InputError(f"{', '.join(wrong)} must be whole numbers of 1 or more", path=path,
                         fix=f"write them as {example}")
    return shape


def copy_teacher_layers(teacher, student, mapping: list[int]) -> None:
    """Copies the teacher's weights into a student of its family and width: student layer m from
    teacher layer ``mapping[m]``, and everything outside the layers as it is (embeddings and
    their projection, DeBERTa's relative-position embeddings, poolers, final norms, a task head
    of the same shape). What the student has and the teacher's mapped layer lacks (ModernBERT's
    first layer has no norm before attention, every other layer has one) keeps its new
    initialisation, and the log says so."""
    teacher_prefix, student_prefix = layers_prefix(teacher), layers_prefix(student)
    teacher_state = teacher.state_dict()
    state = {key: value for key, value in teacher_state.items() if not key.startswith(teacher_prefix)}
    for student_index, teacher_layer in enumerate(mapping):
        source = f"{teacher_prefix}{teacher_layer - 1}."
        state.update({f"{student_prefix}{student_index}.{key[len(source):]}": value
                      for key, value in teacher_state.items() if key.startswith(source)})
    shapes = {key: value.shape for key, value in student.state_dict().items()}
    state = {key: value for key, value in state.items() if shapes.get(key) == value.shape}
    missing, _ = student.load_state_dict(state, strict=False)
    if missing:
        logger.info("student weights not copied from the teacher (new initialisation): %s", ", ".join(missing))


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters that cost compute per token (the embedding tables are look-ups)."""
    embeddings = model.base_model.embeddings
    return count_parameters(model) - count_parameters(embeddings)
