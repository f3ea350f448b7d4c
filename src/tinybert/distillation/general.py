"""General distillation: a pretrained encoder + plain text → a general student."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import AutoModel

from ..data import train_loader
from ..data.corpus import build_corpus_cache
from .distillers import IntermediateDistiller, IntermediateLosses, check_intermediate, loss_settings
from ..models.loading import check_model_dir, load_tokenizer, save_model_dir
from ..models.record import model_record, recipe_step
from ..settings import command_line, group, option, values_of
from ..models.students import build_student, choose_layer_map
from ..training import (STATE_FILE, TrainingConfig, frozen_teacher, is_complete, main_process_first,
                        make_accelerator, run_training, shapes_of_run)

logger = logging.getLogger(__name__)

CACHE_DIR = "corpus_cache"


@dataclass
class GeneralConfig:
    training: TrainingConfig = group("training", lambda: TrainingConfig(
        epochs=3, batch_size=256, learning_rate=1e-4, schedule="linear", warmup_ratio=0.1, checkpoint_every=500))
    max_length: int = option(128, "tokens per example (lines are packed up to it, longer ones cut)",
                             flags=("--max_seq_length", "--max_seq_len"))
    losses: IntermediateLosses = group("losses", IntermediateLosses)
    shared_projection: bool = option(False, "one projection for embeddings and hidden states (the reference "
                                            "code's way)")
    layers: int | None = option(None, "student layer count (with a preset)")
    layer_map: str | None = option(None, "teacher layer for each student layer, 1-based (default: uniform)")


@dataclass
class GeneralArguments:
    teacher: str | None = option(None, "pretrained encoder directory", flags=("--teacher_model",), required=True)
    corpus: list[str] | None = option(None, "plain-text files, one sentence or paragraph per line",
                                      flags=("--train_file_path",), required=True)
    student: str = option("tinybert-4l-312", "preset (tinybert-4l-312, tinybert-6l-768), JSON file of sizes, "
                                             "or directory", flags=("--student_model",))
    output: str | None = option(None, "output directory of the general student", flags=("--output_dir",),
                                required=True)
    config: GeneralConfig = group("general distillation", GeneralConfig)

    def run(self, show_progress: bool = True) -> dict:
        return general_distill(self.teacher, self.corpus, self.output, student=self.student, config=self.config,
                               show_progress=show_progress)


def general_distill(teacher_dir: str | os.PathLike, corpus: list[str | os.PathLike], output_dir: str | os.PathLike,
                    student: str = "tinybert-4l-312", config: GeneralConfig | None = None,
                    show_progress: bool = True) -> dict:
    """Attention + hidden (+ embedding) distillation of a pretrained encoder into a general student
    written to ``output_dir`` (a bare encoder, projections beside it). Re-running the same call
    resumes from the last checkpoint."""
    config = config or GeneralConfig()
    check_intermediate(teacher_dir, student, config.losses, layers=config.layers, layer_map=config.layer_map)
    output_dir = Path(output_dir)
    if is_complete(output_dir):
        logger.info("%s is already complete; delete it to train again", output_dir)
        return json.loads((output_dir / STATE_FILE).read_text())
    training = config.training
    accelerator = make_accelerator(training, output_dir)
    set_seed(training.seed)
    tokenizer = load_tokenizer(teacher_dir)
    teacher, dataset = main_process_first(accelerator, lambda: (
        AutoModel.from_pretrained(check_model_dir(teacher_dir, "--teacher"), dtype=torch.float32).eval(),
        build_corpus_cache(corpus, tokenizer, config.max_length, output_dir / CACHE_DIR,
                           show_progress=show_progress and accelerator.is_main_process)))
    student_model = build_student(student, teacher, None, layers=config.layers, layer_map=config.layer_map)
    layers_s, layers_t = student_model.config.num_hidden_layers, teacher.config.num_hidden_layers
    layer_map = choose_layer_map(config.layer_map, layers_s, layers_t)
    teacher = frozen_teacher(teacher, training, accelerator)
    distiller = IntermediateDistiller(student_model, teacher, layer_map, config.losses, config.shared_projection)
    # a new seeded order every epoch, as the reference code samples: batches from many documents
    shapes = shapes_of_run(training, accelerator, len(dataset), config.max_length)
    loader = train_loader(dataset, tokenizer, training.batch_size, training.seed, group_by_length=False,
                          shapes=shapes)

    arguments = GeneralArguments(teacher=str(teacher_dir), corpus=[str(path) for path in corpus], student=student,
                                 output=str(output_dir), config=config)
    step = recipe_step("general", corpus, len(dataset), training)

    def save(unwrapped, _metrics):
        save_model_dir(unwrapped.student, tokenizer, output_dir, model_record(
            "general", None, config.max_length, None, teacher=teacher_dir, started_from=student, step=step,
            command=command_line("general", arguments, GeneralArguments())))
        unwrapped.save_projections(output_dir)

    logger.info("general distillation %s → %d-layer student on %d examples, layer map %s", teacher_dir,
                layers_s, len(dataset), layer_map)
    return run_training(output_dir=output_dir, config=training, module=distiller, train_loader=loader,
                        compute_losses=lambda module, batch: module(batch), on_improved=save,
                        accelerator=accelerator, description="general distillation",
                        inputs={"corpus": dataset.fingerprint,
                                "losses": loss_settings(config.losses, config.shared_projection)},
                        settings=values_of(arguments),
                        compiled=shapes is not None, show_progress=show_progress)
