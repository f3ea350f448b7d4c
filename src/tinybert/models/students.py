"""Students: preset sizes, layer maps, and building a student in its teacher's family."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel

from ..data import LabelSpace
from ..errors import InputError
from .families import config_name, config_value, family_of
from .loading import TASK_MODELS, check_model_dir, count_parameters, load_classifier
from .pruning import Selection, cut_student, whole
from .tokenizer import load_tokenizer_files
from .vocabulary import check_subset
from ..settings import flag_of


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


def student_config(teacher_config, shape: dict, label_space: LabelSpace | None, teacher_layers: list[int],
                   tokens: list[int] | None = None):
    """The teacher's configuration (its family and everything it sets: relative positions,
    rotary bases, embedding width, activation, ...) with the student's ``shape`` (BERT's field
    names) and task. ``teacher_layers``: the 1-based teacher layer each student layer is copied
    from or learns from, whose per-layer settings (ModernBERT's local or global attention) it
    takes, so that the attention it learns from works as its own. ``tokens``: a pruned
    vocabulary (teacher ids in the student's order), whose special tokens' ids it renumbers."""
    family = family_of(teacher_config)
    values = {name: value for name, value in teacher_config.to_dict().items() if name not in _NOT_INHERITED}
    if tokens is not None:
        new_id = {old: new for new, old in enumerate(tokens)}
        values.update({name: new_id[value] for name, value in values.items()
                       if name.endswith("_token_id") and isinstance(value, int) and value in new_id})
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
                  init_from_teacher: bool = False, layer_map: str | list[int] | None = None,
                  selection: Selection | None = None, teacher_tokenizer=None):
    """A student classifier (a bare encoder when ``label_space`` is None): a preset name, a JSON
    file of sizes, an existing directory, or (``init_from_teacher``) cut from the teacher: its
    embeddings and mapped layers, whole, or narrower as ``selection`` (``pruning``) keeps them.
    ``layers`` overrides the layer count of a preset or of the teacher copy. A new student's layers
    take the per-layer settings (ModernBERT's local or global attention) of the teacher layers
    ``layer_map`` (default: uniform) gives them to learn from. An existing student may have a
    pruned vocabulary of ``teacher_tokenizer``'s (when given)."""
    teacher_config = teacher.config
    teachers = teacher_config.num_hidden_layers
    if init_from_teacher:
        if selection is None:
            count = student_layer_count(student, teacher_config, layers=layers, init_from_teacher=True,
                                        layer_map=layer_map)
            selection = whole(teacher_config, choose_layer_map(layer_map, count, teachers))
        return cut_from_teacher(teacher, label_space, selection)
    if student in STUDENT_PRESETS or str(student).endswith(".json"):
        shape = dict(STUDENT_PRESETS[student]) if student in STUDENT_PRESETS else _read_shape(student)
    else:
        path = check_model_dir(student, "--student")
        if any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
            return _existing_student(path, teacher_config, label_space, layers, teacher_tokenizer)
        # a configuration without weights (how the reference code names a student's size)
        config = AutoConfig.from_pretrained(path)
        shape = {name: config_value(config, name) for name in _SHAPE_FIELDS}
    shape["num_hidden_layers"] = layers or shape.get("num_hidden_layers", teachers)
    _check_heads(shape, teacher_config, student)
    mapping = choose_layer_map(layer_map, shape["num_hidden_layers"], teachers)
    return _new_model(student_config(teacher_config, shape, label_space, teacher_layers=mapping), label_space)


def _existing_student(path: Path, teacher_config, label_space: LabelSpace | None, layers: int | None,
                      teacher_tokenizer=None):
    """A student directory with weights (a general or stage-1 student), as it is."""
    if layers:
        raise InputError("--layers applies to a preset or --init-from-teacher, not to an existing student",
                         path=path, fix="drop --layers, or use a preset name")
    model = (load_classifier(path, label_space) if label_space is not None
             else AutoModel.from_pretrained(path, dtype=torch.float32))
    if teacher_tokenizer is not None and model.config.vocab_size < teacher_config.vocab_size:
        check_subset(teacher_tokenizer, load_tokenizer_files(path), path)  # a pruned vocabulary
    elif model.config.vocab_size != teacher_config.vocab_size:
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


def cut_from_teacher(teacher, label_space: LabelSpace | None, selection: Selection):
    """A new student of the teacher's family, of the shape ``selection`` keeps, with the teacher's
    weights as it keeps them."""
    shape = {"num_hidden_layers": len(selection.layers), "hidden_size": len(selection.channels),
             "num_attention_heads": len(selection.heads[0]), "intermediate_size": len(selection.neurons[0])}
    if selection.tokens is not None:
        shape["vocab_size"] = len(selection.tokens)
    config = student_config(teacher.config, shape, label_space, teacher_layers=selection.layers,
                            tokens=selection.tokens)
    model = _new_model(config, label_space)
    cut_student(teacher, model, selection)
    return model


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters that cost compute per token (the embedding tables are look-ups)."""
    embeddings = model.base_model.embeddings
    return count_parameters(model) - count_parameters(embeddings)
