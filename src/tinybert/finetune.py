"""Teacher fine-tuning: any local encoder + labelled data → a sequence classifier."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from accelerate.utils import set_seed

from .evaluation import measure
from .data import DataOptions, train_loader
from .data.batching import model_inputs
from .data.tasks import detect_task, label_space_of_data, train_and_dev
from .data.cache import CACHE_DIR, data_fingerprints
from .evaluation.metrics import selection_metric
from .data.squad import fitting_stride
from .models.loading import describe, load_classifier, load_tokenizer, save_model_dir
from .models.record import model_record, recipe_step
from .settings import command_line, group, option, values_of
from .training import (STATE_FILE, TaskFiles, TrainingConfig, is_complete, main_process_first,
                       make_accelerator, run_training, shapes_of_run)

logger = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    # a teacher trains until dev stops improving (2 evaluations without improvement), --epochs at
    # most: a cap high enough that a user following the defaults does not stop it while it is still learning
    training: TrainingConfig = group("training", lambda: TrainingConfig(learning_rate=2e-5, epochs=10,
                                                                        checkpoint_every=200, patience=2))
    max_length: int = option(128, "tokens per example (longer ones are truncated)",
                             flags=("--max_seq_length", "--max_seq_len"))
    metric: str | None = option(None, "dev metric that picks the best epoch (default accuracy; pearson for "
                                      "regression)")
    eval_batch_size: int = option(64, "examples per forward pass when evaluating")


@dataclass
class FinetuneArguments(TaskFiles):
    model: str | None = option(None, "local model directory (save_pretrained, or a reference-code checkpoint)",
                               flags=("--bert_model",), required=True)
    config: FinetuneConfig = group("fine-tuning", FinetuneConfig)

    def run(self, show_progress: bool = True) -> dict:
        return finetune(self.model, self.train, self.output, eval_path=self.eval, config=self.config,
                        data_options=self.data_options, show_progress=show_progress)


def finetune(model_dir: str | os.PathLike, train_path: str | os.PathLike, output_dir: str | os.PathLike,
             eval_path: str | os.PathLike | None = None, config: FinetuneConfig | None = None,
             data_options: DataOptions | None = None, show_progress: bool = True) -> dict:
    """Fine-tune ``model_dir`` on ``train_path`` (text classification or regression, token
    classification or extractive QA, as the data says); the best dev checkpoint (or the last,
    without ``eval_path``) is written to ``output_dir`` as a plain save_pretrained directory.

    Returns the training summary; a finished ``output_dir`` is left as it is.
    """
    config = config or FinetuneConfig()
    data_options = data_options or DataOptions()
    output_dir = Path(output_dir)
    if is_complete(output_dir):
        logger.info("%s is already complete; delete it to train again", output_dir)
        return json.loads((output_dir / STATE_FILE).read_text())
    # the run's settings as given: the trackers' hyper-parameters, the command on the model card
    arguments = FinetuneArguments(model=str(model_dir), train=str(train_path), eval=eval_path and str(eval_path),
                                  output=str(output_dir), config=config, data_options=data_options)
    tokenizer = load_tokenizer(model_dir)
    accelerator = make_accelerator(config.training, output_dir)
    kind = detect_task(train_path, data_options)
    if kind == "qa":
        data_options = replace(data_options, doc_stride=fitting_stride(data_options.doc_stride, config.max_length))
    # one process tokenises, the others then read its cache
    train, dev = main_process_first(accelerator, lambda: train_and_dev(
        kind, train_path, eval_path, tokenizer, config.max_length, data_options, output_dir / CACHE_DIR,
        show_progress and accelerator.is_main_process))
    label_space = label_space_of_data(kind, train)
    metric = selection_metric(config.metric, label_space)
    set_seed(config.training.seed)  # the new classifier head's initialisation depends on it
    model = main_process_first(accelerator, lambda: load_classifier(model_dir, label_space))
    train = train.labelled(label_space)
    shapes = shapes_of_run(config.training, accelerator, len(train), config.max_length)
    loader = train_loader(train, tokenizer, config.training.batch_size, config.training.seed, shapes=shapes)

    evaluate = None
    if dev is not None:
        dev = dev.labelled(label_space)

        def evaluate(unwrapped):
            return measure.evaluate_dataset(unwrapped, dev, tokenizer, label_space, config.eval_batch_size,
                                            device=accelerator.device, show_progress=show_progress,
                                            accelerator=accelerator, shapes=shapes)

    step = recipe_step("finetune", [train_path], train.origins(), config.training, patience=config.training.patience)

    def save(unwrapped, metrics):
        save_model_dir(unwrapped, tokenizer, output_dir, model_record(
            "finetune", label_space, config.max_length, data_options.doc_stride, started_from=model_dir, step=step,
            dev={"data": str(eval_path), "metric": metric, **metrics} if metrics else None,
            command=command_line("finetune", arguments, FinetuneArguments())))

    logger.info("fine-tuning %s on %d examples (%s: %s)", model_dir, len(train), label_space.kind,
                describe(label_space))
    return run_training(output_dir=output_dir, config=config.training, module=model, train_loader=loader,
                        compute_losses=lambda module, batch: {"loss": module(**model_inputs(batch, labels=True)).loss},
                        evaluate=evaluate, metric=metric, on_improved=save, accelerator=accelerator,
                        description="fine-tuning", inputs=data_fingerprints(train, dev), settings=values_of(arguments),
                        compiled=shapes is not None, show_progress=show_progress)
