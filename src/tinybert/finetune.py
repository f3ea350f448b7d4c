"""Teacher fine-tuning: any local encoder + labelled data → a sequence classifier."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from accelerate.utils import set_seed

from . import evaluation
from .data import DataOptions, LabelSpace, encode, train_loader
from .errors import InputError
from .models import load_classifier, load_tokenizer, save_model_dir
from .training import STATE_FILE, TrainingConfig, is_complete, make_accelerator, run_training

logger = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(learning_rate=2e-5, epochs=3))
    max_length: int = 128
    metric: str | None = None  # default: accuracy, or pearson for regression
    eval_batch_size: int = 64


def finetune(model_dir: str | os.PathLike, train_path: str | os.PathLike, output_dir: str | os.PathLike,
             eval_path: str | os.PathLike | None = None, config: FinetuneConfig | None = None,
             data_options: DataOptions | None = None, show_progress: bool = True) -> dict:
    """Fine-tune ``model_dir`` on ``train_path``; the best dev checkpoint (or the last, without
    ``eval_path``) is written to ``output_dir`` as a plain save_pretrained directory.

    Returns the training summary; a finished ``output_dir`` is left as it is.
    """
    config = config or FinetuneConfig()
    data_options = data_options or DataOptions()
    output_dir = Path(output_dir)
    if is_complete(output_dir):
        logger.info("%s is already complete; delete it to train again", output_dir)
        return json.loads((output_dir / STATE_FILE).read_text())
    tokenizer = load_tokenizer(model_dir)
    train_data = data_options.read(train_path)
    label_space = LabelSpace.infer(train_data)
    metric = config.metric or evaluation.default_metric(label_space)
    if metric not in _metric_names(label_space):
        raise InputError(f"unknown metric {metric!r} for this task",
                         fix=f"use one of {', '.join(_metric_names(label_space))}")
    accelerator = make_accelerator(config.training)
    set_seed(config.training.seed)  # the new classifier head's initialisation depends on it
    with accelerator.main_process_first():
        model = load_classifier(model_dir, label_space)
    train_encoded = encode(train_data, tokenizer, config.max_length, label_space,
                           show_progress=show_progress)
    loader = train_loader(train_encoded, tokenizer, config.training.batch_size, config.training.seed)

    evaluate = None
    if eval_path is not None:
        eval_data = data_options.read(eval_path, limit=False)
        eval_encoded = encode(eval_data, tokenizer, config.max_length, label_space,
                              show_progress=show_progress)
        eval_labels = evaluation.labels_of(eval_encoded)

        def evaluate(unwrapped):
            logits = evaluation.predict_logits(unwrapped, eval_encoded, tokenizer, config.eval_batch_size,
                                               device=accelerator.device, show_progress=show_progress)
            return evaluation.compute_metrics(logits, eval_labels, label_space)

    def save(unwrapped, _metrics):
        save_model_dir(unwrapped, tokenizer, output_dir)

    logger.info("fine-tuning %s on %d examples (%s, labels %s)", model_dir, len(train_encoded),
                label_space.kind, label_space.names or "score")
    return run_training(output_dir=output_dir, config=config.training, module=model, train_loader=loader,
                        compute_losses=lambda module, batch: {"loss": module(**batch).loss},
                        evaluate=evaluate, metric=metric, on_improved=save, accelerator=accelerator,
                        description="fine-tuning")


def _metric_names(label_space: LabelSpace) -> tuple[str, ...]:
    if label_space.is_regression:
        return ("pearson", "spearman")
    return ("accuracy", "mcc", "f1") if label_space.num_labels == 2 else ("accuracy", "mcc")
