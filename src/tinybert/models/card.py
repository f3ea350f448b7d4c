"""The model card every model directory tinybert makes carries: ``README.md`` with the Hub's
metadata block (``huggingface_hub``'s ``ModelCardData``, with ``model-index`` results) and a
page saying what the model is and how it was made.

It is written from the model's record (``record.py``): the base model, the teacher, the recipe,
the best dev metrics and the command that made it, which every command knows. A pipeline writes
it again once it has evaluated the model, with what only it knows: test metrics, retention
against the teacher, size and CPU latency, the augmentation, and the pipeline command.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..artifacts import atomic_write
from .files import CARD_FILE
from .static import HEAD_FILE

PIPELINE_TAGS = {"sequence": "text-classification", "token": "token-classification", "qa": "question-answering"}
STAGES = {"finetune": "fine-tuned on the task's labels", "general": "general distillation (a general student)",
          "intermediate": "task distillation, stage 1 (embeddings, hidden states, attention): not yet trained to "
                          "predict; distil it with `tinybert distill --stage prediction`",
          "prediction": "task distillation, stage 2 (the teacher's predictions)"}
# not metrics: what an evaluation says besides them
NOT_METRICS = {"epoch", "step", "examples", "questions", "max_length", "doc_stride", "params", "size_mb",
               "latency_ms_batch1", "examples_per_s_batch32"}
LOWER_IS_BETTER = {"mse"}
# the model index's dataset type names a Hub dataset: the user's own files are none, and their
# folder's name is no dataset either; one fixed type says so (the file's name is the dataset's name)
LOCAL_DATASET = "local"


def write_card(model_dir: str | os.PathLike, record: dict, figures: dict | None = None) -> None:
    """Writes ``model_dir/README.md`` from the model's ``record`` and ``figures``: ``params``, and
    from a pipeline's evaluation ``test`` (metrics on ``test_data``), ``teacher_test``, ``size_mb``,
    ``latency_ms``, ``augmentation`` and ``command`` (and ``teacher_dev``, ``teacher_test`` for retention)."""
    figures = figures or {}
    model_dir = Path(model_dir)
    task = PIPELINE_TAGS.get(record.get("task"), "feature-extraction")
    dev, test = record.get("dev") or {}, figures.get("test") or {}
    results = [EvalResult(task_type=task, dataset_type=LOCAL_DATASET, dataset_name=Path(data).name,
                          dataset_split=split, metric_type=name, metric_value=value)
               for split, data, metrics in (("dev", dev.get("data"), dev), ("test", figures.get("test_data"), test))
               if data for name, value in metrics.items() if _is_metric(name, value)]
    static = (model_dir / HEAD_FILE).is_file()
    metadata = ModelCardData(library_name="model2vec" if static else "transformers", pipeline_tag=task,
                             base_model=hub_id(record.get("base_model")),
                             tags=["tinybert", "distillation" if record.get("teacher") else "fine-tuned"],
                             model_name=model_dir.name, eval_results=results or None)
    page = "\n".join(_page(model_dir.name, record, figures, static)) + "\n"
    atomic_write(model_dir / CARD_FILE, str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{page}")))


def hub_id(model: str | None) -> str | None:
    """The Hub id of a model directory that huggingface_hub downloaded
    (``…/models--ORG--NAME/snapshots/REVISION``), else None: the Hub's ``base_model`` links to a
    model on the Hub, and a local folder's path cannot say it is one (``runs/teacher`` reads like
    ``org/name``)."""
    parts = Path(model).parts if model else ()
    for folder, below in zip(parts, parts[1:]):
        if folder.startswith("models--") and below == "snapshots":
            return folder.removeprefix("models--").replace("--", "/")
    return None


def _is_metric(name: str, value) -> bool:
    return name not in NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool)


def _page(name: str, record: dict, figures: dict, static: bool) -> list[str]:
    lines = [f"# {name}", "", f"Made by tinybert: {STAGES.get(record.get('stage'), record.get('stage'))}."]
    if static:
        lines += ["", "A static-embedding student in model2vec's format: a vector per token, their mean over a text, "
                      "and a small head. `model2vec.inference.StaticModelPipeline.from_pretrained(DIR)` predicts "
                      "with it; `model2vec.StaticModel.from_pretrained(DIR).encode(texts)` gives its text vectors; "
                      "`tinybert evaluate`, `predict` and `export` take the directory.", ""]
    if record.get("task"):
        labels = ", ".join(record.get("labels") or []) or {"qa": "answer spans", "sequence": "a score"}.get(
            record["task"], "")
        lines.append(f"Task: {PIPELINE_TAGS[record['task']]} ({labels}); {record.get('max_length')} tokens per "
                     "example" + (f", doc stride {record['doc_stride']}" if record.get("doc_stride") else "") + ".")
    for label, key in (("Base model", "base_model"), ("Teacher", "teacher"), ("Started from", "started_from")):
        if record.get(key):
            lines.append(f"{label}: `{record[key]}`.")
    if record.get("recipe"):
        lines += ["", "## How it was made", "",
                  "| stage | data | original / augmented / unlabelled examples | epochs | learning rate | batch |",
                  "|---|---|---|---|---|---|"]
        for step in record["recipe"]:
            examples = step.get("examples")
            counts = " / ".join(f"{examples.get(k, 0):,}" for k in ("original", "augmented", "unlabeled")) \
                if isinstance(examples, dict) else f"{examples:,}"
            extras = {k: v for k, v in step.items() if k not in ("stage", "data", "examples", "epochs", "learning_rate",
                                                                 "batch_size") and v not in (None, 0, [])}
            lines.append(f"| {step['stage']}" + "".join(f"; {k} {v}" for k, v in extras.items())
                         + f" | {', '.join(step['data'])} | {counts} | {step['epochs']:g} | {step['learning_rate']:g}"
                         f" | {step['batch_size']} |")
    if figures.get("augmentation"):
        lines += ["", "Augmentation: " + ", ".join(f"{k} {v}" for k, v in figures["augmentation"].items()) + "."]
    lines += _results(record.get("dev") or {}, figures)
    if figures.get("command") or record.get("command"):
        lines += ["", "## Reproduce", "", "```bash", figures.get("command") or record["command"], "```"]
    return lines


def _results(dev: dict, figures: dict) -> list[str]:
    test, teacher, teacher_dev = (figures.get(key) or {} for key in ("test", "teacher_test", "teacher_dev"))
    rows = [("dev", dev.get("data"), name, value, teacher_dev.get(name))
            for name, value in dev.items() if _is_metric(name, value)]
    rows += [("test", figures.get("test_data"), name, value, teacher.get(name))
             for name, value in test.items() if _is_metric(name, value)]
    lines = []
    if rows:
        lines += ["", "## Results", "", "| split | data | metric | value | teacher | retention |",
                  "|---|---|---|---|---|---|"]
        for split, data, name, value, reference in rows:
            # a share of an error, or of a negative correlation, means nothing
            share = f"{100 * value / reference:.1f} %" if (reference or 0) > 0 and name not in LOWER_IS_BETTER else "–"
            lines.append(f"| {split} | {Path(data).name if data else '–'} | {name} | {value:.4f} | "
                         f"{'–' if reference is None else f'{reference:.4f}'} | {share} |")
    sizes = [(label, figures.get(key)) for label, key in (("parameters", "params"), ("size (MB)", "size_mb"),
                                                           ("CPU latency, ms per example at batch 1", "latency_ms"))]
    sizes = [(label, value) for label, value in sizes if value is not None]
    if sizes:
        lines += ["", "## Size and speed", ""] + [f"- {label}: {value:,.1f}" if isinstance(value, float) else
                                                 f"- {label}: {value:,}" for label, value in sizes]
    return lines
