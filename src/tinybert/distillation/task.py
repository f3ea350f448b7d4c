"""Task distillation: stage 1 (embeddings, hidden states, attention scores) and stage 2 (logits)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from accelerate.utils import set_seed

from ..evaluation import measure
from ..artifacts import write_json
from transformers import AutoConfig

from ..data import DataOptions, train_loader
from ..data.tasks import detect_task, task_data
from ..data.cache import CACHE_DIR, data_fingerprints
from ..data.features import Joined
from .distillers import (IntermediateDistiller, IntermediateLosses, PredictionDistiller, check_intermediate,
                         loss_settings)
from .teacher_outputs import WithTeacherOutputs, teacher_outputs
from ..errors import InputError
from ..evaluation.metrics import selection_metric
from ..models.loading import check_model_dir, count_parameters, label_space_of, load_tokenizer, save_model_dir
from ..models.record import model_record, read_record, reading_settings, recipe_step
from ..settings import command_line, group, option, values_of
from ..models.pruning import PruningOptions, Selection
from ..models.students import non_embedding_parameters
from ..models.vocabulary import check_prunable, token_map
from .start import (check_pruned_rate, check_pruning, check_static, latency_shape, prepare_student, pruning_summary,
                    rate_of_run, start_of_run)
from ..models.static import STATIC, StaticOptions
from ..training import (STATE_FILE, TaskFiles, TrainingConfig, frozen_teacher, is_complete,
                        main_process_first, make_accelerator, run_training, shapes_of_run)

logger = logging.getLogger(__name__)

STAGES = ("intermediate", "prediction")


# settings that change how fast a stage runs, not the student it makes
SPEED_ONLY = frozenset({"no_teacher_cache"})
# settings that change only a student pruned narrower than its teacher
PRUNED_ONLY = frozenset({"pruned_lr_scale"})
# the learning rates a static student does not train at (it trains at static_lr)
STATIC_IGNORES = frozenset({"lr", "pruned_lr_scale"})


@dataclass
class DistillConfig:
    stage: Literal["intermediate", "prediction"] = option(
        "intermediate", "intermediate (stage 1: embeddings, hidden states, attention scores) or prediction "
                        "(stage 2: logits)")
    training: TrainingConfig | None = group("training")  # None: the stage's defaults (for_stage)
    max_length: int | None = option(None, "tokens per example (default: in stage 2 the length stage 1 "
                                          "recorded; else 64 for single texts, 128 for pairs and tagging, 384 for "
                                          "QA windows)",
                                    flags=("--max_seq_length", "--max_seq_len"))
    losses: IntermediateLosses = group("stage-1 losses", IntermediateLosses)
    temperature: float = option(1.0, "softmax temperature of the logit loss (stage 2)")
    hard_label_weight: float = option(0.0, "stage 2: weight α of the gold labels, (1 − α)·soft + α·cross-entropy "
                                           "against the label (MSE for scores), on original rows only: not on "
                                           "augmented variants or unlabelled text (0: the paper's soft loss alone)")
    no_teacher_cache: bool = option(False, "stage 2: run the teacher at every step, instead of reading its outputs "
                                           "from a cache made by one pass (beside the token cache)")
    shared_projection: bool = option(False, "one projection for embeddings and hidden states (the reference "
                                            "code's way)")
    layers: int | None = option(None, "student layer count (with a preset or --init-from-teacher)")
    init_from_teacher: bool = option(False, "start from the teacher's embeddings and mapped layers: whole, or pruned "
                                            "narrower (--hidden-size, --heads, --intermediate-size, --prune-vocab)")
    layer_map: str | None = option(None, "teacher layer for each student layer, 1-based, e.g. 3,6,9,12 "
                                         "(default: uniform)")
    pruning: PruningOptions = group("pruning (with --init-from-teacher)", PruningOptions)
    pruned_lr_scale: float = option(2.0, "a student pruned narrower than its teacher trains at this multiple of --lr, "
                                         "in stage 1 and in stage 2 from its output: its cut layers recover faster at "
                                         "larger steps (1: --lr as given)")
    static: StaticOptions = group("static student (--student static)", StaticOptions)
    metric: str | None = option(None, "dev metric that picks the best epoch of stage 2")
    eval_batch_size: int = option(64, "examples per forward pass when evaluating")

    @classmethod
    def for_stage(cls, stage: str) -> "DistillConfig":
        """The paper's settings: stage 1 lr 5e-5 constant, 20 epochs; stage 2 lr 3e-5 linear with
        10% warm-up, 3 epochs; batch 32 for both."""
        if stage == "intermediate":
            training = TrainingConfig(epochs=20, batch_size=32, learning_rate=5e-5, schedule="constant",
                                      warmup_ratio=0.0)
        else:
            training = TrainingConfig(epochs=3, batch_size=32, learning_rate=3e-5, schedule="linear",
                                      warmup_ratio=0.1)
        return cls(stage=stage, training=training)


@dataclass
class DistillArguments(TaskFiles):
    teacher: str | None = option(None, "fine-tuned teacher directory", flags=("--teacher_model",), required=True)
    student: str = option("tinybert-4l-312", "preset (tinybert-4l-312, tinybert-6l-768), JSON file of sizes, "
                                             "student directory (a general student, or the stage-1 output for "
                                             "stage 2), or static (stage 2 alone: a static-embedding student in "
                                             "model2vec's format)", flags=("--student_model",))
    unlabeled: list[str] | None = option(None, "files of unlabelled in-domain text (texts, words, or questions with "
                                               "contexts, in any task format) added to the training data; their "
                                               "labels, if any, are not read")
    config: DistillConfig = group("distillation", DistillConfig)

    def run(self, show_progress: bool = True) -> dict:
        return distill(self.teacher, self.student, self.train, self.output, eval_path=self.eval, config=self.config,
                       data_options=self.data_options, show_progress=show_progress, unlabeled=self.unlabeled)


@dataclass
class Plan:
    stage: str
    teacher_layers: int
    student_layers: int
    layer_map: list[int]
    projections: dict[str, list[int]]
    attention: str
    teacher_params: int
    student_params: int
    expected_speedup: float
    pruned: str | None = None  # what a pruned student keeps of the teacher

    def describe(self) -> str:
        mapping = ", ".join(f"student {m} ← teacher {t}" for m, t in enumerate(self.layer_map, start=1))
        lines = [f"stage: {self.stage}",
                 f"layers: teacher {self.teacher_layers}, student {self.student_layers}",
                 f"mapping: embeddings ← embeddings; {mapping}"]
        lines += [f"pruned: {self.pruned}"] if self.pruned else []
        lines += [f"projection {name}: {shape[0]} → {shape[1]}" for name, shape in self.projections.items()]
        lines += [f"attention loss: {self.attention}",
                  f"parameters: teacher {self.teacher_params:,}, student {self.student_params:,} "
                  f"({self.teacher_params / self.student_params:.1f}× smaller)",
                  f"expected speed-up: about {self.expected_speedup:.1f}× (ratio of per-token compute)"]
        return "\n".join(lines)


def build_initial_student(teacher_dir, student, train_data, config: DistillConfig,
                          selection: Selection | None = None):
    """The student exactly as stage 1 starts it (shape and initialisation; pruned as ``selection``
    says, stage 1's own), with its tokenizer, e.g. for a baseline fine-tuned without distillation."""
    start = prepare_student(teacher_dir, student, train_data, config, load_tokenizer(teacher_dir), selection=selection)
    return start.student, start.tokenizer


def _check_settings(teacher_dir, student: str, config: DistillConfig) -> None:
    """What no run can do, refused before any data is read or model built."""
    if config.stage not in STAGES:
        raise InputError(f"unknown stage {config.stage!r}", fix="use --stage intermediate or --stage prediction")
    if not 0 <= config.hard_label_weight <= 1:
        raise InputError(f"--hard-label-weight {config.hard_label_weight} is not a weight between 0 and 1",
                         fix="give α from 0 (the teacher alone) to 1 (the gold labels alone)")
    check_pruned_rate(config.pruned_lr_scale)
    check_static(config, student, teacher_dir)
    if student != STATIC:  # a static student has no layers, and reads the teacher's predictions alone
        check_intermediate(teacher_dir, student, config.losses, layers=config.layers, layer_map=config.layer_map,
                           init_from_teacher=config.init_from_teacher)
    check_pruning(config.pruning, config.init_from_teacher, AutoConfig.from_pretrained(check_model_dir(teacher_dir)),
                  static=student == STATIC)
    if config.pruning.prune_vocab:
        check_prunable(load_tokenizer(teacher_dir))


def plan(teacher_dir, student, train_data, config: DistillConfig) -> Plan:
    _check_settings(teacher_dir, student, config)
    if student == STATIC:
        raise InputError("--plan describes a transformer student's layers and projections; a static student has "
                         "none", fix="leave out --plan (the static student's size is its vocabulary × --static-dims)")
    start = prepare_student(teacher_dir, student, train_data, config, load_tokenizer(teacher_dir),
                            shape=latency_shape(teacher_dir, config, train_data.path, None))
    teacher, student_model, layer_map = start.teacher, start.student, start.layer_map
    width_s, width_t = student_model.config.hidden_size, teacher.config.hidden_size
    projections = {"W_h (hidden)": [width_s, width_t]}
    if not config.shared_projection:
        projections["W_e (embeddings)"] = [width_s, width_t]
    losses = config.losses
    if losses.attention_loss == "relations":
        attention = (f"KL of query, key and value relations in {losses.relation_heads or teacher.config.num_attention_heads}"
                     f" relation heads (teacher {teacher.config.num_attention_heads} heads, student "
                     f"{student_model.config.num_attention_heads})")
    else:
        attention = f"MSE of pre-softmax scores, {teacher.config.num_attention_heads} heads"
    pruned = None
    if start.selection is not None:
        scored = start.selection.ranked_by and config.stage == "intermediate"  # else chosen by an earlier stage
        pruned = (start.selection.describe(teacher.config)
                  + (f" on {config.pruning.prune_samples} training rows" if scored else "")
                  + ("; vocabulary: the training data's tokens, counted when the run starts"
                     if config.pruning.prune_vocab and scored else ""))
    return Plan(config.stage, teacher.config.num_hidden_layers, student_model.config.num_hidden_layers,
                layer_map, projections, attention, count_parameters(teacher), count_parameters(student_model),
                non_embedding_parameters(teacher) / non_embedding_parameters(student_model), pruned)


def task_of(teacher_dir, train_path, options: DataOptions) -> str:
    """The teacher's task, which the data must be of."""
    space = label_space_of(teacher_dir)
    kind = detect_task(train_path, options, expected=space.task if space else None)
    if space is not None and space.task != kind:
        raise InputError(f"the teacher was fine-tuned for a {space.task} task, the data is a {kind} task",
                         path=train_path, fix="distil on data of the teacher's task (or say --task)")
    return kind


def _stage_one_record(student: str) -> dict:
    """The record of a stage-1 output given as the student ({} for anything else)."""
    record = read_record(student) if Path(student).is_dir() else {}
    return record if record.get("stage") == "intermediate" else {}


def _recorded_reading(stage: str, teacher_dir, student: str, kind: str) -> dict:
    """How the data was read before, unless told otherwise: stage 2 from a stage-1 output reads
    as stage 1 did; otherwise a QA teacher's windows (its length and stride) are what it learnt
    answers on, and what the student learns from it on."""
    record = _stage_one_record(student) if stage == "prediction" else {}
    if not record and kind == "qa":
        record = read_record(teacher_dir)
    return record


def default_length(kind: str, options: DataOptions, path) -> int:
    """The paper's lengths: 64 tokens for a text, 128 for a pair or a sentence to tag, 384 for a
    question with its context (windows of it)."""
    if kind == "sequence":
        return 128 if options.open(path, require_labels=False)[0].has_pairs else 64
    return {"token": 128, "qa": 384}[kind]


def distill(teacher_dir: str | os.PathLike, student: str, train_path: str | os.PathLike,
            output_dir: str | os.PathLike, eval_path: str | os.PathLike | None = None,
            config: DistillConfig | None = None, data_options: DataOptions | None = None,
            show_progress: bool = True, unlabeled: list | None = None) -> dict:
    """Run one distillation stage; the student goes to ``output_dir`` as a plain
    save_pretrained classifier (stage 1: with the projections beside it in ``distill_projections.safetensors``).

    ``student`` is a preset name (``tinybert-4l-312``, ``tinybert-6l-768``) or a directory (a
    general student, or the stage-1 output for stage 2). Neither stage's loss needs labels: rows of
    ``train_path`` may lack them, and the files ``unlabeled`` (read whole) join the training data
    without theirs. The dev set needs its labels.
    """
    config = config or DistillConfig()
    _check_settings(teacher_dir, student, config)
    output_dir = Path(output_dir)
    if is_complete(output_dir):
        logger.info("%s is already complete; delete it to distil again", output_dir)
        return json.loads((output_dir / STATE_FILE).read_text())
    data_options = data_options or DataOptions()
    given_training = config.training or DistillConfig.for_stage(config.stage).training
    kind = task_of(teacher_dir, train_path, data_options)
    unlabeled = [str(path) for path in unlabeled or ()]
    for path in unlabeled:
        task_of(teacher_dir, path, data_options)
    given_options = data_options
    recorded = _recorded_reading(config.stage, teacher_dir, student, kind)
    max_length, data_options = reading_settings(recorded, config.max_length, data_options, kind,
                                                default_length(kind, data_options, train_path))
    config = replace(config, training=given_training, max_length=max_length)  # as given: the card's command

    accelerator = make_accelerator(given_training, output_dir)
    tokenizer = load_tokenizer(teacher_dir)  # the training data is the teacher's tokens, for both models
    show = show_progress and accelerator.is_main_process

    def read():
        return task_data(kind, train_path, tokenizer, max_length, data_options, output_dir / CACHE_DIR, show,
                         labels="optional"), [task_data(kind, path, tokenizer, max_length, data_options,
                                                        output_dir / CACHE_DIR, show, limit=False, labels="ignored")
                                              for path in unlabeled]
    train, extra = main_process_first(accelerator, read)  # one process tokenises, the others read its caches
    training_data = Joined([train, *extra]) if extra else train
    set_seed(given_training.seed)
    start = start_of_run(teacher_dir, student, train, training_data, config, tokenizer, output_dir, accelerator,
                         data_options, show)
    dev = None
    if config.stage == "prediction" and eval_path:  # as the student reads texts: with its own tokenizer
        dev = main_process_first(accelerator, lambda: task_data(kind, eval_path, start.tokenizer, max_length,
                                                                data_options, output_dir / CACHE_DIR, show,
                                                                limit=False))
    label_space, student_model, layer_map = start.label_space, start.student, start.layer_map
    teacher_config = start.teacher.config
    training = rate_of_run(given_training, config, student, start)
    # held here alone, so that it is freed once the cache holds all its outputs
    teacher, start.teacher = frozen_teacher(start.teacher, training, accelerator), None
    logger.info("distilling (%s) %s → %s student, layer map %s, on %s", config.stage, teacher_dir,
                STATIC if student == STATIC else f"{student_model.config.num_hidden_layers}-layer", layer_map,
                ", ".join(f"{count:,} {origin}" for origin, count in training_data.origins().items()))
    training_rows = training_data.labelled(label_space)
    if config.stage == "prediction" and not config.no_teacher_cache:
        cache_root = data_options.cache_dir or output_dir / CACHE_DIR
        outputs = teacher_outputs(teacher, teacher_dir, training_rows, label_space.task, tokenizer, cache_root,
                                  precision=training.mixed_precision, accelerator=accelerator,
                                  batch_size=config.eval_batch_size, show_progress=show)
        if outputs:  # every output is read from the cache: the teacher's memory (a GPU's) goes to the student
            training_rows, teacher = WithTeacherOutputs(training_rows, outputs), None
    if config.stage == "intermediate":
        distiller = IntermediateDistiller(student_model, teacher, layer_map, config.losses, config.shared_projection,
                                          start.selection)
        if Path(student).is_dir():
            distiller.load_projections(check_model_dir(student, "--student"))
    else:
        distiller = PredictionDistiller(student_model, teacher, config.temperature, label_space.is_regression,
                                        label_space.task, config.hard_label_weight)
    distiller.read_student_ids(token_map(tokenizer, start.tokenizer))
    shapes = shapes_of_run(training, accelerator, len(training_data), max_length)
    loader = train_loader(training_rows, tokenizer, training.batch_size, training.seed, shapes=shapes)
    metric = selection_metric(config.metric, label_space)
    evaluate = None
    if dev is not None:
        dev = dev.labelled(label_space)

        def evaluate(unwrapped):
            return measure.evaluate_dataset(unwrapped.student, dev, start.tokenizer, label_space, config.eval_batch_size,
                                            device=accelerator.device, show_progress=show_progress,
                                            accelerator=accelerator, shapes=shapes)

    arguments = DistillArguments(teacher=str(teacher_dir), student=str(student), train=str(train_path),
                                 eval=eval_path and str(eval_path), output=str(output_dir), config=config,
                                 data_options=given_options, unlabeled=unlabeled or None)
    # the stage's loss settings change the trained weights: a checkpoint resumes only under its own
    if config.stage == "prediction":
        losses = {"temperature": config.temperature, "hard_label_weight": config.hard_label_weight}
    else:
        losses = loss_settings(config.losses, config.shared_projection)
    pruned = {} if start.selection is None else {"pruned": pruning_summary(
        start, teacher_config, tokenizer, config, dev, eval_path, kind, max_length, data_options, output_dir, show)}
    step = recipe_step(config.stage, [train_path, *unlabeled], training_data.origins(), training,
                       **(losses if config.stage == "prediction" else {}), **pruned)
    # what `tinybert distill --stage STAGE` defaults to: the card's command gives the stage and what differs
    defaults = DistillArguments(config=DistillConfig.for_stage(config.stage))

    def save(unwrapped, metrics):
        save_model_dir(unwrapped.student, start.tokenizer, output_dir, model_record(
            config.stage, label_space, max_length, data_options.doc_stride, teacher=teacher_dir,
            started_from=teacher_dir if config.init_from_teacher else student, step=step,
            dev={"data": str(eval_path), "metric": metric, **metrics} if metrics else None,
            command=command_line("distill", arguments, defaults, always=("stage",))))
        if config.stage == "intermediate":
            unwrapped.save_projections(output_dir)
        write_json(output_dir / "distill_config.json", {"teacher": str(teacher_dir), "layer_map": layer_map,
                                                         **asdict(config)})

    return run_training(output_dir=output_dir, config=training, module=distiller, train_loader=loader,
                        compute_losses=lambda module, batch: module(batch), evaluate=evaluate, metric=metric,
                        on_improved=save, accelerator=accelerator, description=f"distilling ({config.stage})",
                        inputs={**data_fingerprints(train, dev), "stage": config.stage, "losses": losses,
                                **({"unlabeled": [cache.meta["fingerprint"] for cache in extra]} if extra else {})},
                        settings=values_of(arguments), compiled=shapes is not None, show_progress=show_progress)
