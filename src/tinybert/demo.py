"""`tinybert demo`: the bundled teacher on the bundled review snippets, end to end."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from . import evaluation, resources
from .data import DataOptions
from .finetune import FinetuneConfig, finetune
from .training import TrainingConfig

logger = logging.getLogger(__name__)

DEMO_MAX_LENGTH = 64
QUICK_TRAIN_EXAMPLES = 1000


def run_demo(output_dir: str | os.PathLike = "runs/demo", data_dir: str | os.PathLike | None = None,
             quick: bool = False, show_progress: bool = True) -> dict:
    """Fine-tunes the MiniLM teacher on the demo data and evaluates it on the held-out split.

    ``data_dir`` holds ``train.tsv``, ``dev.tsv`` and optionally ``test.tsv`` (e.g. SST-2);
    by default the Rotten Tomatoes snippets are split by movie into ``OUTPUT/data``.
    """
    output_dir = Path(output_dir)
    if data_dir is None:
        splits = resources.write_rotten_tomatoes_splits(output_dir / "data")
    else:
        data_dir = Path(data_dir)
        splits = {name: data_dir / f"{name}.tsv" for name in ("train", "dev", "test")}
        if not splits["test"].is_file():
            splits["test"] = splits["dev"]
    # a small run needs a larger step size to move the new head within its few hundred steps
    training = (TrainingConfig(learning_rate=1e-4, epochs=2, batch_size=16) if quick
                else TrainingConfig(learning_rate=5e-5, epochs=3, batch_size=32))
    config = FinetuneConfig(training=training, max_length=DEMO_MAX_LENGTH)
    options = DataOptions(max_examples=QUICK_TRAIN_EXAMPLES if quick else None)
    teacher_dir = output_dir / "teacher"
    summary = finetune(resources.demo_teacher_dir(), splits["train"], teacher_dir, eval_path=splits["dev"],
                       config=config, data_options=options, show_progress=show_progress)
    results = evaluation.evaluate(teacher_dir, splits["test"], max_length=DEMO_MAX_LENGTH,
                                  latency=not quick, show_progress=show_progress)
    results["dev"] = summary["best"]
    evaluation.write_json(results, output_dir / "results.json")
    return results
