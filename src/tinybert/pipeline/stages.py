"""The pipeline's stages that are more than one library call: the baseline, the evaluation of every
model, and the model cards written again with what the run measured."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from ..data.tasks import scan_labels
from ..distillation.task import DistillConfig, build_initial_student
from ..evaluation.measure import evaluate
from ..models.card import write_card
from ..models.loading import save_model_dir
from ..models.pruning import Selection
from ..models.record import read_record
from ..artifacts import write_json

logger = logging.getLogger(__name__)


def baseline(arguments, stage1: DistillConfig, teacher_dir: str, student_start: str, stage1_dir: Path, files: dict,
             reading, directory: Path) -> None:
    """The distilled student's starting point (pruned as its stage 1, in ``stage1_dir``, pruned it),
    fine-tuned on the labels alone."""
    from accelerate.utils import set_seed
    initial = directory / "initial"
    if not (initial / "config.json").is_file():
        set_seed(arguments.config.training.seed)  # the new task head's initialisation
        data = scan_labels(files["train"], reading)
        shape = DistillConfig(layers=stage1.layers, init_from_teacher=stage1.init_from_teacher,
                              layer_map=stage1.layer_map, pruning=stage1.pruning)
        selection = Selection.read(stage1_dir) if stage1.init_from_teacher else None
        save_model_dir(*build_initial_student(teacher_dir, student_start, data, shape, selection), initial)
    replace(arguments, model=str(initial), train=files["train"], eval=files["dev"], output=str(directory),
            data_options=reading).run()


def write_cards(models: dict, evaluated: dict, test_file: str, augmentation: dict, command: str) -> None:
    """Each model's card again, with what the pipeline measured: test metrics, retention against the
    teacher, size and latency, the augmentation (for the students distilled on it), the pipeline command."""
    teacher = evaluated.get("teacher", {})
    for name, model_dir in models.items():
        figures, theirs = evaluated.get(name, {}), name != "teacher"
        write_card(model_dir, read_record(model_dir), {
            "test": figures, "test_data": test_file, "teacher_test": teacher if theirs else None,
            "teacher_dev": teacher.get("dev") if theirs else None, "params": figures.get("params"),
            "size_mb": figures.get("size_mb"), "latency_ms": figures.get("latency_ms_batch1"),
            "augmentation": augmentation if name.startswith("student") and name != "student_original_data" else None,
            "command": command})


def evaluate_all(models: dict, test_file: str, settings, options, directory: Path) -> None:
    """Every model (a directory, or an ONNX file) on the test file, into ``directory``/results.json."""
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
