"""The pipeline's YAML config: one section per stage, each taking the settings of the matching
command (``finetune:`` those of `tinybert finetune`, ``intermediate:`` and ``prediction:`` those of
`tinybert distill`, ...) under the same keys, generated from the same dataclasses, plus a few keys
of the pipeline's own. The pipeline supplies the paths that connect the stages.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..augment import AugmentArguments
from ..data import DataOptions
from ..distillation.task import DistillArguments, DistillConfig
from ..errors import InputError
from ..evaluation.measure import EvaluateArguments
from ..inference.export import ExportArguments
from ..models.pruning import PruningOptions
from ..models.static import STATIC, StaticOptions
from ..finetune import FinetuneArguments
from ..distillation.general import GeneralArguments
from ..settings import closest, convert, group, option, settings_of, values_of, with_values


@dataclass
class DataSection:
    dir: str | None = option(None, "a folder with train.*, dev.* or eval.*, test.* (or bundled:rotten-tomatoes)")
    train: str | None = option(None, "training file (instead of dir)")
    dev: str | None = option(None, "dev file: picks epochs, and the test split when there is none")
    test: str | None = option(None, "test file")
    unlabeled: list[str] | None = option(None, "files of unlabelled in-domain text added to the distillation stages' "
                                               "training data (after augmentation), never to the teacher's or the "
                                               "baseline's")
    options: DataOptions = group("reading data", DataOptions)


@dataclass
class GeneralSection:
    run: bool = option(False, "distil a general student here first")
    student_dir: str | None = option(None, "an existing general student to start the student from")
    arguments: GeneralArguments = group("general", GeneralArguments)


@dataclass
class FinetuneSection:
    teacher_dir: str | None = option(None, "an existing fine-tuned teacher (no fine-tuning stage)")
    arguments: FinetuneArguments = group("finetune", FinetuneArguments)


@dataclass
class AugmentSection:
    run: bool = option(True, "augment the training data")
    compare_without: bool = option(False, "also distil on the original data, to measure what augmentation adds")
    arguments: AugmentArguments = group("augment", AugmentArguments)


@dataclass
class BaselineSection:
    run: bool = option(True, "fine-tune the student's starting point without distillation, for comparison")
    arguments: FinetuneArguments = group("baseline", FinetuneArguments)


@dataclass
class ExportSection:
    run: bool = option(True, "export the student to ONNX (+ int8) with the parity checks")
    arguments: ExportArguments = group("export", ExportArguments)


@dataclass
class ReportSection:
    run: bool = option(True, "write report.md, report.html and plots")
    title: str = option("TinyBERT distillation report", "the report's title")
    target_retention: float = option(0.97, "the report names the smallest student keeping this share of the "
                                           "teacher's test metric")


@dataclass
class TopLevel:
    run_dir: str = option("runs/pipeline", "directory of the run (each stage in a folder of it)")


_DATA_KEYS = {s.key for s in settings_of(DataOptions)}
STUDENT_SHAPE = ({"student", "layers", "layer_map", "init_from_teacher"} | {s.key for s in settings_of(PruningOptions)}
                 | {s.key for s in settings_of(StaticOptions)})
# a student's keys that hold for both of its stages (its stage 2 has no section of its own)
BOTH_STAGES = frozenset({"pruned_lr_scale"})
# more students beside the main one: `students: {NAME: {stage-1 keys}}` (those of BOTH_STAGES hold in stage 2 too)
STUDENTS = "students"
STUDENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Section:
    """A section of the config: its dataclass, its defaults, and the keys the pipeline wires itself."""

    kind: type
    default: object
    wired: frozenset = frozenset()

    @property
    def keys(self) -> list[str]:
        return [s.key for s in settings_of(self.kind) if s.key not in self.wired]


def _distill_section(stage: str, wired: set[str]) -> Section:
    return Section(DistillArguments, DistillArguments(config=DistillConfig.for_stage(stage)),
                   frozenset(wired | {"teacher", "train", "eval", "output", "stage", "unlabeled"} | _DATA_KEYS))


SECTIONS: dict[str, Section] = {
    "": Section(TopLevel, TopLevel()),
    "data": Section(DataSection, DataSection()),
    "general": Section(GeneralSection, GeneralSection(), frozenset({"output"})),
    "finetune": Section(FinetuneSection, FinetuneSection(), frozenset({"train", "eval", "output"} | _DATA_KEYS)),
    # augment's own max_examples, when set, cuts the rows augmented further than data.max_examples
    "augment": Section(AugmentSection, AugmentSection(), frozenset({"input", "output"} | _DATA_KEYS - {"max_examples"})),
    "intermediate": _distill_section("intermediate", set()),
    "prediction": _distill_section("prediction", STUDENT_SHAPE),
    "baseline": Section(BaselineSection, BaselineSection(),
                        frozenset({"model", "train", "eval", "output"} | _DATA_KEYS)),
    "evaluate": Section(EvaluateArguments, EvaluateArguments(), frozenset({"model", "data", "json"} | _DATA_KEYS)),
    "export": Section(ExportSection, ExportSection(), frozenset({"model", "output", "data"} | _DATA_KEYS)),
    "report": Section(ReportSection, ReportSection()),
}


@dataclass
class Config:
    path: str
    sections: dict[str, object]  # section name ("" for the top level) → its dataclass instance
    origins: dict[tuple[str, str], str]  # (section, key) → "FILE, line N" or "--set ..."
    # the students beside the main one: name → stage 1's arguments (its section "students.NAME")
    students: dict[str, object] = field(default_factory=dict)

    def section_values(self, section: str, instance=None) -> dict:
        """Every key of a section with the value the run uses (of ``instance``: a section derived from it)."""
        values = values_of(instance or self.sections.get(section) or self.students[_student_name(section)])
        return {key: values[key] for key in _section(section).keys}

    @property
    def values(self) -> dict[str, dict]:
        """section → {key: value} ("" for the top level; a student's, only the keys it sets)."""
        values = {name: self.section_values(name) for name in SECTIONS}
        values.update({f"{STUDENTS}.{name}": self.explicit(f"{STUDENTS}.{name}") for name in self.students})
        return values

    @property
    def command(self) -> str:
        """The command line that runs this config: its file and the overrides applied to it."""
        words = [word for where in self.origins.values() if where.startswith("--set ") for word in where.split(" ", 1)]
        return shlex.join(["tinybert", "pipeline", self.path, *words])

    def explicit(self, section: str) -> dict:
        """The keys of a section that the config or --set gave (not defaults)."""
        return {key: value for key, value in self.section_values(section).items() if (section, key) in self.origins}

    def prediction_section(self):
        """Stage 2's section: it shares stage 1's settings that it does not set, except the per-stage
        ones and the student's shape (it starts from stage 1's output)."""
        not_shared = {"epochs", "max_steps", "lr", "metric"} | STUDENT_SHAPE
        shared = {key: value for key, value in self.explicit("intermediate").items()
                  if key not in not_shared and ("prediction", key) not in self.origins}
        return with_values(self.sections["prediction"], shared)

    def student_stage2(self, name: str):
        """Stage 2's section for a student of `students:`: the shared one with the student's own keys,
        all of them for a static student (``student: static``: stage 2 is its only stage), else those
        that hold for both stages (``BOTH_STAGES``)."""
        own = self.explicit(f"{STUDENTS}.{name}")
        static = self.students[name].student == STATIC
        return with_values(self.prediction_section(), {k: v for k, v in own.items() if static or k in BOTH_STAGES})

    def baseline_section(self):
        """The baseline's section: the teacher's recipe where the baseline section does not say otherwise."""
        recipe = {key: value for key, value in self.explicit("finetune").items()
                  if key in SECTIONS["baseline"].keys and ("baseline", key) not in self.origins}
        return with_values(self.sections["baseline"], recipe)


def load_config(path: str | os.PathLike, overrides=(), quick: bool = False) -> Config:
    """The config file with defaults filled in and ``--set section.key=value`` overrides applied
    (after the ``quick:`` section when ``quick``); unknown sections or keys and values of the
    wrong kind are errors naming the file and line."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("config file not found", path=path, fix="check the path (configs/ has examples)") from None
    except UnicodeDecodeError as error:
        raise InputError(f"not valid UTF-8 (byte {error.object[error.start]:#04x} at offset {error.start})", path=path,
                         fix="save the config as UTF-8 text") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise InputError(f"not valid YAML ({getattr(error, 'problem', error)})", path=path,
                         line=mark.line + 1 if mark else None, fix="correct the YAML syntax") from None
    given: dict[tuple[str, str], tuple[object, str]] = {}  # (section, key) → (value, where)
    quick_overrides = {}
    if root is not None:
        if not isinstance(root, yaml.MappingNode):
            raise InputError("the config must be a mapping of sections", path=path, line=1,
                             fix="start with `run_dir: ...` and sections such as `finetune:`")
        for key_node, value_node in root.value:
            name, line = key_node.value.replace("-", "_"), key_node.start_mark.line + 1
            if name == "quick":
                quick_overrides = _load(value_node) or {}
                if not isinstance(quick_overrides, dict):
                    raise InputError("`quick:` must map section.key to a value", path=path, line=line,
                                     fix="e.g. quick: {finetune.epochs: 1}")
            elif name in SECTIONS[""].keys:
                given[("", name)] = (_load(value_node), f"{path}, line {line}")
            elif name == STUDENTS:
                given.update(_students(value_node, path, line))
            elif name not in SECTIONS:
                raise _unknown(f"section {key_node.value!r}", name, _section_names(), path, line)
            elif value_node.tag != "tag:yaml.org,2002:null":
                if not isinstance(value_node, yaml.MappingNode):
                    raise InputError(f"section {name!r} must be a mapping of keys", path=path, line=line,
                                     fix=f"write `{name}:` followed by indented `key: value` lines")
                for option_node, option_value in value_node.value:
                    key, key_line = option_node.value.replace("-", "_"), option_node.start_mark.line + 1
                    if key not in SECTIONS[name].keys:
                        raise _unknown(f"key {name}.{option_node.value}", key, SECTIONS[name].keys, path, key_line,
                                       section=name)
                    given[(name, key)] = (_load(option_value), f"{path}, line {key_line}")
    applied = list(overrides)
    if quick:
        applied = list(quick_overrides.items()) + applied
    for override in applied:
        section, key, value, where = _parse_override(override, path)
        given[(section, key)] = (value, where)
    return _build(path, given)


def _load(node):
    return yaml.safe_load(yaml.serialize(node))


def _students(node, path: str, line: int) -> dict:
    """``students:``, a mapping of names to stage-1 keys: each student is stage 1's section changed so
    (a student with no keys is registered by the key None)."""
    if not isinstance(node, yaml.MappingNode):
        raise InputError("`students:` must map names to stage-1 keys", path=path, line=line,
                         fix="e.g. students: {pruned-3x192: {init_from_teacher: true, layers: 3, hidden_size: 192}}")
    given = {}
    for name_node, keys_node in node.value:
        name_line = name_node.start_mark.line + 1
        section = _student_section(str(name_node.value), path, name_line)
        given[(section, None)] = (None, f"{path}, line {name_line}")
        if keys_node.tag == "tag:yaml.org,2002:null":
            continue
        if not isinstance(keys_node, yaml.MappingNode):
            raise InputError(f"{section} must be a mapping of stage-1 keys", path=path, line=name_line,
                             fix="e.g. {hidden_size: 192, prune_vocab: true}")
        for key_node, value_node in keys_node.value:
            key, key_line = key_node.value.replace("-", "_"), key_node.start_mark.line + 1
            if key not in SECTIONS["intermediate"].keys:
                raise _unknown(f"key {section}.{key_node.value}", key, SECTIONS["intermediate"].keys, path, key_line,
                               section=section)
            given[(section, key)] = (_load(value_node), f"{path}, line {key_line}")
    return given


def _section_names() -> list[str]:
    return [name for name in SECTIONS if name] + SECTIONS[""].keys + ["quick", STUDENTS]


def _unknown(what: str, name: str, known, path: str, line: int | None, section: str | None = None) -> InputError:
    close = closest(name, known)
    hint = f"did you mean {close!r}? " if close else ""
    where = f"keys of {section}" if section else "sections"
    return InputError(f"unknown {what}", path=path, line=line, fix=f"{hint}{where}: {', '.join(sorted(known))}")


def _parse_override(override, path: str) -> tuple[str, str, object, str]:
    """``section.key=value`` (the value read as YAML), or a (``section.key``, value) pair from Python."""
    if isinstance(override, tuple):
        name, value = override
        text = f"{name}={value}"
    else:
        name, equals, raw = override.partition("=")
        if not equals:
            raise InputError(f"--set {override!r} has no value", fix="write --set section.key=value")
        value, text = (yaml.safe_load(raw) if raw else None), override
    section, dot, key = name.replace("-", "_").rpartition(".")
    if section.startswith(STUDENTS + "."):  # students.NAME.key
        section = _student_section(name.rpartition(".")[0][len(STUDENTS) + 1:], f"--set {text}")
        if key not in SECTIONS["intermediate"].keys:
            raise _unknown(f"key {name!r} in --set {text}", key, SECTIONS["intermediate"].keys, path, None,
                           section=section)
        return section, key, value, f"--set {text}"
    if section not in SECTIONS or not dot and key not in SECTIONS[""].keys:
        raise _unknown(f"section {section!r} in --set {text}", section, _section_names(), path, None)
    if key not in SECTIONS[section].keys:
        raise _unknown(f"key {name!r} in --set {text}", key, SECTIONS[section].keys, path, None,
                       section=section or None)
    return section, key, value, f"--set {text}"


def _build(path: str, given: dict) -> Config:
    by_section: dict[str, dict] = {name: {} for name in SECTIONS}
    for (section, key), (value, where) in given.items():
        values = by_section.setdefault(section, {})
        if key is None:  # a student named, perhaps with no keys of its own
            continue
        setting = next(s for s in settings_of(_section(section).kind) if s.key == key)
        try:
            values[key] = convert(setting, value)
        except ValueError as error:
            name = f"{section}.{key}" if section else key
            raise InputError(f"{name} {error}", path=where,
                             fix=f"give {name} a value of the right kind (see --show-config)") from None
    sections = {name: with_values(copy.deepcopy(SECTIONS[name].default), values)
                for name, values in by_section.items() if name in SECTIONS}
    students = {_student_name(name): with_values(copy.deepcopy(sections["intermediate"]), values)
                for name, values in by_section.items() if name not in SECTIONS}
    return Config(path, sections, {key: where for key, (_, where) in given.items() if key[1] is not None}, students)


def _section(name: str) -> Section:
    """A section's record; a student's (``students.NAME``) is stage 1's."""
    return SECTIONS["intermediate"] if name.startswith(STUDENTS + ".") else SECTIONS[name]


def _student_name(section: str) -> str:
    return section[len(STUDENTS) + 1:]


def _student_section(name: str, where: str, line: int | None = None) -> str:
    """``students.NAME`` for a student's name, which names its stages' folders."""
    if not STUDENT_NAME.fullmatch(name) or name == "original_data":
        raise InputError(f"{STUDENTS}.{name} is no student name", path=where, line=line,
                         fix="name it with letters, digits, '-', '_' or '.' (it names the student's folders), "
                             "e.g. pruned-3x192")
    return f"{STUDENTS}.{name}"


def format_config(config: Config) -> str:
    """Every section and key with the value a run will use (what `--show-config` prints)."""
    values = config.values
    students = {name: values.pop(f"{STUDENTS}.{name}") for name in config.students}
    shown = {**values.pop(""), **values, **({STUDENTS: students} if students else {})}
    return yaml.safe_dump(shown, sort_keys=False, allow_unicode=True)
