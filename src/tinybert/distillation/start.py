"""The student a distillation stage starts from, with its tokenizer: a preset or a file of sizes
(random weights), an existing student directory (a general or stage-1 student), or cut from the
fine-tuned teacher, whole or pruned narrower (``models.pruning``: its channels, heads, neurons and
vocabulary chosen on the task's data)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoConfig

from ..artifacts import digest_file
from ..data import LabelSpace
from ..data.cache import CACHE_DIR
from ..data.tasks import task_data
from ..errors import InputError
from ..evaluation.sizes import largest_within
from ..models.importance import measure_importance
from ..models.loading import check_model_dir, describe, digest_model_dir, label_space_of, load_classifier, load_tokenizer
from ..models.pruning import PruningOptions, Selection, pruned_shape, select, shape_only, whole
from ..models.record import DEFAULT_LENGTH
from ..models.static import STATIC, StaticStudent, check_dims, counted_tokens, token_vectors
from ..models.students import build_student, choose_layer_map, student_layer_count
from ..models.vocabulary import kept_tokens, pruned_tokenizer, retokenized_share, token_map
from ..settings import flag_of
from ..training import main_process_first

logger = logging.getLogger(__name__)


@dataclass
class Start:
    label_space: LabelSpace
    teacher: torch.nn.Module
    student: torch.nn.Module
    tokenizer: object  # the student's: the teacher's, unless its vocabulary was pruned
    layer_map: list[int]  # the 1-based teacher layer each student layer learns from
    selection: Selection | None  # what a pruned student keeps of the teacher (None: not pruned)


def check_labels(label_space: LabelSpace, train_data) -> None:
    """The data's labels must be some of the teacher's (classes, or tags), or scores for scores."""
    if label_space.kind == "qa" or not train_data.raw_labels:  # answers, or text without labels
        return
    if label_space.kind == "token":
        data_labels = LabelSpace.of_tags(train_data.raw_labels)
    else:
        data_labels = LabelSpace.infer(train_data)
    if label_space.is_regression != data_labels.is_regression or not set(data_labels.names) <= set(label_space.names):
        raise InputError(f"the data's labels ({describe(data_labels)}) do not fit the teacher's "
                         f"({describe(label_space)})", path=train_data.path,
                         fix="distil on data of the task the teacher was fine-tuned for")


def check_pruning(options: PruningOptions, init_from_teacher: bool, teacher_config, name=flag_of,
                  static: bool = False) -> None:
    """What no pruned student can be, refused before any data is read (a static student may prune
    its vocabulary alone)."""
    if (options.narrows or options.prune_vocab and not static) and not init_from_teacher:
        given = next(key for key in ("hidden_size", "heads", "intermediate_size", "latency_ms", "prune_vocab")
                     if getattr(options, key) not in (None, False))
        raise InputError(f"{name(given)} prunes the teacher, which needs {name('init_from_teacher')}",
                         fix=f"add {name('init_from_teacher')}, or give a student of random weights its sizes "
                             "in a JSON file (--student sizes.json)")
    widths = [key for key in ("hidden_size", "heads", "intermediate_size") if getattr(options, key) is not None]
    if options.latency_ms is not None and widths:
        raise InputError(f"{name('latency_ms')} picks the widths, and {name(widths[0])} gives one",
                         fix=f"give {name('latency_ms')} or the widths, not both")
    if options.prune_samples < 1:
        raise InputError(f"{name('prune_samples')} {options.prune_samples} is no number of rows",
                         fix="give 1 or more (a few hundred is enough)")
    if options.narrows and options.latency_ms is None:
        pruned_shape(teacher_config, options, name)


def check_pruned_rate(scale: float, name=flag_of) -> None:
    """The multiple of the learning rate a pruned student trains at must be one."""
    if not scale > 0:
        raise InputError(f"{name('pruned_lr_scale')} {scale} is no multiple of a learning rate",
                         fix="give a number above 0 (1: a pruned student trains at the learning rate as given)")


def own_tokenizer(student: str, teacher_tokenizer):
    """The tokenizer of a student directory whose vocabulary was pruned from the teacher's; the
    teacher's for any other student."""
    if not Path(student).is_dir():
        return teacher_tokenizer
    try:
        tokenizer = load_tokenizer(student)
    except InputError:  # a directory of sizes only: the student takes the teacher's tokenizer
        return teacher_tokenizer
    return tokenizer if len(tokenizer) < len(teacher_tokenizer) else teacher_tokenizer


def prepare_student(teacher_dir, student: str, train_data, config, tokenizer, rows=None,
                    selection: Selection | None = None, shape: dict | None = None,
                    show_progress: bool = False, device: torch.device | str = "cpu") -> Start:
    """The teacher, and the student as stage 1 starts it (``config``: a ``DistillConfig``).

    A pruned student is cut as ``selection`` says when given (a run resumed, a baseline), else as
    chosen now on ``rows`` (the training data, tokenised by the teacher's ``tokenizer``) for its
    ``shape`` (default: what ``config.pruning`` asks); without rows (a plan) it gets the shape
    alone. The teacher comes on ``device``; the student on the CPU."""
    label_space = label_space_of(teacher_dir)
    if label_space is None:
        raise InputError("the teacher has no task head", path=teacher_dir,
                         fix="fine-tune it first with `tinybert finetune`, then distil from the result")
    teacher = load_classifier(teacher_dir).eval().to(device)  # the units are scored where it runs
    check_labels(label_space, train_data)
    if student == STATIC:
        return _static_start(teacher, label_space, tokenizer, rows, config, show_progress)
    teacher_layers = teacher.config.num_hidden_layers
    if not config.init_from_teacher:
        student_model = build_student(student, teacher, label_space, layers=config.layers, layer_map=config.layer_map,
                                      teacher_tokenizer=tokenizer)
        layer_map = choose_layer_map(config.layer_map, student_model.config.num_hidden_layers, teacher_layers)
        kept = Selection.read(student) if Path(student).is_dir() else None  # a pruned student continued
        return Start(label_space, teacher, student_model, own_tokenizer(student, tokenizer), layer_map, kept)
    # the mapping also picks which teacher layers are copied (a shape measured for a latency may say how
    # many; a selection made before, which ones)
    layers = student_layer_count(student, teacher.config, layers=config.layers or (shape or {}).get("num_hidden_layers"),
                                 init_from_teacher=True, layer_map=config.layer_map)
    layer_map = list(selection.layers) if selection is not None else choose_layer_map(config.layer_map, layers,
                                                                                     teacher_layers)
    student_tokenizer = tokenizer
    options: PruningOptions = config.pruning
    if selection is None and options.prunes:
        shape = shape or (pruned_shape(teacher.config, options) if options.narrows else None)
        if rows is None:
            selection = shape_only(teacher.config, layer_map, shape) if shape else None
        else:
            selection, student_tokenizer = choose_units(teacher, tokenizer, rows, layer_map, options, shape,
                                                        show_progress)
    elif selection is not None and selection.tokens is not None:
        student_tokenizer, _ = pruned_tokenizer(tokenizer, set(selection.tokens))
    student_model = build_student(student, teacher, label_space, layers=len(layer_map), init_from_teacher=True,
                                  layer_map=layer_map, selection=selection)
    return Start(label_space, teacher, student_model, student_tokenizer, layer_map, selection)


def choose_units(teacher, tokenizer, rows, layer_map: list[int], options: PruningOptions, shape: dict | None,
                 show_progress: bool):
    """(what a student of ``shape`` keeps of the teacher, chosen on ``rows``; its tokenizer)."""
    if shape is None:
        selection = whole(teacher.config, layer_map)
    else:
        importance = measure_importance(teacher, rows, tokenizer, layer_map, options.prune_by, options.prune_samples,
                                        show_progress)
        selection = select(importance, layer_map, shape)
        selection.ranked_by = options.prune_by  # the later stages' cards say it, whatever their own options
    if not options.prune_vocab:
        return selection, tokenizer
    student_tokenizer, selection.tokens = _pruned_vocabulary(teacher, tokenizer, rows, options)
    return selection, student_tokenizer


def _pruned_vocabulary(teacher, tokenizer, rows, options: PruningOptions):
    """(the student's tokenizer, the teacher ids it keeps in its order)."""
    student_tokenizer, tokens = pruned_tokenizer(tokenizer, kept_tokens(rows, tokenizer, teacher.config,
                                                                        options.keep_tokens))
    logger.info("vocabulary pruned to %s of %s tokens", f"{len(tokens):,}", f"{len(tokenizer):,}")
    return student_tokenizer, tokens


def check_static(config, student: str, teacher_dir, name=flag_of, data_task: tuple[str, str] | None = None) -> None:
    """What a static student cannot be, refused before any training data is tokenised (``config``:
    a ``DistillConfig``; ``name(key)``: how a message names a setting; ``data_task``: (training
    file, its task), which a teacher still to be fine-tuned on it will have)."""
    if student != STATIC:
        return
    if config.stage != "prediction":
        raise InputError("--student static trains in stage 2 alone, on the teacher's predictions",
                         fix="give --stage prediction")
    shaping = [key for key in ("init_from_teacher", "layers", "layer_map") if getattr(config, key)]
    shaping += [key for key in ("hidden_size", "heads", "intermediate_size", "latency_ms")
                if getattr(config.pruning, key) is not None]
    if shaping:
        raise InputError(f"{name(shaping[0])} shapes a transformer student; a static student has no layers",
                         fix=f"leave out {name(shaping[0])}; the static student's width is {name('static_dims')}")
    space = label_space_of(teacher_dir)
    fix = "distil it into a transformer student (leave out --student static)"
    if space is not None and space.task != "sequence":
        raise InputError(f"the static student predicts a label or a score per text; the teacher is a {space.task} "
                         "model", path=teacher_dir, fix=fix)
    if space is None and data_task is not None and data_task[1] != "sequence":
        raise InputError(f"the static student predicts a label or a score per text; the training data "
                         f"{data_task[0]} is {data_task[1]} data", fix=fix)
    check_dims(config.static.static_dims, AutoConfig.from_pretrained(check_model_dir(teacher_dir)).hidden_size, name)


def _static_start(teacher, label_space: LabelSpace, tokenizer, rows, config, show_progress: bool) -> Start:
    """A static student made from the teacher (``models.static``), its vocabulary pruned if asked."""
    student_tokenizer, tokens = tokenizer, list(range(len(tokenizer)))
    if config.pruning.prune_vocab and rows is not None:
        student_tokenizer, tokens = _pruned_vocabulary(teacher, tokenizer, rows, config.pruning)
    counts = rows.token_counts() if rows is not None else None
    vectors = token_vectors(teacher, tokenizer, tokens, config.static, counts, show_progress)
    # model2vec's max_length counts a text's tokens without the special ones
    length = (config.max_length or DEFAULT_LENGTH) - len(tokenizer("")["input_ids"])
    student = StaticStudent(vectors, counted_tokens(student_tokenizer, len(tokens)), label_space, length)
    return Start(label_space, teacher, student, student_tokenizer, [], None)


def latency_shape(teacher_dir, config, data_path, data_options, max_length: int | None = None) -> dict | None:
    """The shape ``--latency-ms`` asks for: the largest `tinybert sizes` measures within it."""
    latency = config.pruning.latency_ms
    if latency is None or not config.init_from_teacher:
        return None
    teacher_config = AutoConfig.from_pretrained(check_model_dir(teacher_dir))
    layers = student_layer_count("x", teacher_config, layers=config.layers, init_from_teacher=True,
                                 layer_map=config.layer_map) if config.layers or config.layer_map else None
    return largest_within(teacher_dir, latency, layers=layers, max_length=max_length or config.max_length,
                          data_path=data_path, data_options=data_options)


def start_of_run(teacher_dir, student: str, train, training_data, config, tokenizer, output_dir: Path, accelerator,
                 data_options, show: bool) -> Start:
    """The student as a run starts it. A pruned one's selection is chosen by the main process alone
    (every process of a run must cut the same student) and kept in the output directory
    (``pruning.json``, beside the model it explains), where the other processes, and a resumed
    run, read it."""
    selection = None
    if config.init_from_teacher and config.pruning.prunes:
        parts = getattr(training_data, "parts", [training_data])
        keep = config.pruning.keep_tokens
        made_from = {"teacher": digest_model_dir(teacher_dir), "data": [part.meta["fingerprint"] for part in parts],
                     "layers": config.layers, "layer_map": config.layer_map, "pruning": config.pruning.__dict__,
                     "keep_tokens": digest_file(keep) if keep else None}

        def choose() -> Selection:
            saved = Selection.read(output_dir, made_from)
            if saved is not None:
                return saved
            shape = latency_shape(teacher_dir, config, train.path, data_options)
            chosen = prepare_student(teacher_dir, student, train, config, tokenizer, rows=training_data, shape=shape,
                                     show_progress=show, device=accelerator.device)
            chosen.selection.save(output_dir, made_from)
            logger.info("pruned student: %s", chosen.selection.describe(chosen.teacher.config))
            return chosen.selection
        selection = main_process_first(accelerator, choose)
    return prepare_student(teacher_dir, student, train, config, tokenizer, rows=training_data, selection=selection,
                           show_progress=show, device=accelerator.device)


def rate_of_run(training, config, student: str, start: Start):
    """The training settings at the rate the student trains at: a static student's own
    (--static-lr: a rate no transformer would survive), a student pruned narrower than its teacher
    --pruned-lr-scale times --lr (its cut layers recover faster at larger steps), else --lr."""
    if student == STATIC:
        return replace(training, learning_rate=config.static.static_lr)
    if start.selection is None or not start.selection.narrower_than(start.teacher.config):
        return training
    rate = training.learning_rate * config.pruned_lr_scale
    logger.info("a student pruned narrower than its teacher: learning rate %g (%g × %g)", rate,
                config.pruned_lr_scale, training.learning_rate)
    return replace(training, learning_rate=rate)


def pruning_summary(start: Start, teacher_config, tokenizer, config, dev, eval_path, kind: str, max_length: int,
                    data_options, output_dir: Path, show: bool) -> str:
    """What the model card says of a pruned student: what it keeps, how that was chosen, and (with a
    pruned vocabulary and a dev set of texts) the share of dev texts it tokenizes otherwise than the
    teacher."""
    summary = start.selection.describe(teacher_config)
    if start.selection.tokens is not None and dev is not None and kind != "qa":
        as_teacher = task_data(kind, eval_path, tokenizer, max_length, data_options, output_dir / CACHE_DIR, show,
                               limit=False)
        share = retokenized_share(as_teacher, dev, token_map(tokenizer, start.tokenizer))
        logger.info("%.1f %% of the dev texts tokenize otherwise with the pruned vocabulary", 100 * share)
        summary += f"; {100 * share:.1f} % of dev texts tokenized otherwise than by the teacher"
    return summary
