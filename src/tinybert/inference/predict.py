"""Labels and probabilities for new text from a model directory or an exported ONNX file,
read, predicted and written a chunk at a time (constant memory on any file size)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..evaluation import measure
from ..artifacts import atomic_file
from ..data import DataOptions, Example, TaskData, encode, report_bad_lines
from .runners import load_predictor
from ..models.record import reading_settings
from ..settings import group, option
from ..evaluation.spans import predict_answers, predict_entities
from ..streams import is_standard_stream, standard_input_file

logger = logging.getLogger(__name__)

CHUNK_ROWS = 1024


@dataclass
class PredictArguments:
    model: str | None = option(None, "model directory, export directory (its model.onnx), or model.onnx / "
                                     "model.int8.onnx", required=True)
    input: str | None = option(None, "file of texts, or - for standard input", required=True)
    output: str | None = option(None, "TSV, or JSONL when it ends in .jsonl; - or none: TSV to standard output")
    batch_size: int = option(64, "examples per forward pass")
    max_length: int | None = option(None, "tokens per example, longer ones truncated (default: the model's "
                                          "recorded length, else 128)")
    data_options: DataOptions = group("reading data", DataOptions)

    def run(self, show_progress: bool = True) -> int:
        return predict_file(self.model, self.input, self.output, batch_size=self.batch_size,
                            max_length=self.max_length, data_options=self.data_options, show_progress=show_progress)


def predict_file(model: str | os.PathLike, input_path: str | os.PathLike, output_path: str | os.PathLike | None = None,
                 *, batch_size: int = 64, max_length: int | None = None, data_options: DataOptions | None = None,
                 show_progress: bool = True) -> int:
    """Writes one prediction per input row (TSV, or JSONL when ``output_path`` ends in .jsonl;
    standard output when it is None or ``-``) and returns the number of rows predicted: a label (and
    probabilities) per text, the entities of each text (a token classifier), or the answer to
    each question of a SQuAD file (a QA model). ``input_path`` ``-`` reads standard input: lines
    of text, TSV, CoNLL columns, JSON lines or SQuAD JSON (told apart by content). ``max_length``
    and the doc stride default to what the model recorded (else 128 tokens)."""
    if is_standard_stream(input_path):
        with standard_input_file() as copied:
            return predict_file(model, copied, output_path, batch_size=batch_size, max_length=max_length,
                                data_options=data_options, show_progress=show_progress)
    predictor, tokenizer, label_space, record = load_predictor(model)
    max_length, options = reading_settings(record, max_length, data_options or DataOptions(), label_space.task)
    to_stdout = output_path is None or is_standard_stream(output_path)
    as_jsonl = not to_stdout and str(output_path).endswith(".jsonl")
    bar = tqdm(desc="predicting", unit="ex", disable=not show_progress, dynamic_ncols=True)

    def write(handle) -> int:
        if label_space.task == "token":
            return predict_entities(predictor, tokenizer, label_space, input_path, handle, as_jsonl, max_length,
                                    batch_size, options, bar)
        if label_space.task == "qa":
            return predict_answers(predictor, tokenizer, input_path, handle, as_jsonl, max_length, batch_size,
                                   options, bar)
        return _predict_rows(predictor, tokenizer, label_space, handle, as_jsonl, input_path, batch_size, max_length,
                             options, bar)
    try:
        if to_stdout:
            return write(sys.stdout)
        # written under a temporary name, a chunk at a time: a bad line stops it with nothing left behind
        with atomic_file(output_path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
            return write(handle)
    finally:
        bar.close()


def _predict_rows(predictor, tokenizer, label_space, handle, as_jsonl: bool, input_path, batch_size: int,
                  max_length: int, options: DataOptions, bar) -> int:
    layout, rows = options.open(input_path, require_labels=False)
    if options.max_examples:
        rows = itertools.islice(rows, options.max_examples)
    names = label_space.names
    if not as_jsonl:
        columns = ["text", "text_b"] if layout.has_pairs else ["text"]
        columns += ["score"] if label_space.is_regression else ["label"] + [f"p_{name}" for name in names]
        handle.write("\t".join(columns) + "\n")
    count = 0
    while chunk := list(itertools.islice(rows, CHUNK_ROWS)):
        bad = [(row.line, row.problem) for row in chunk if row.example is None]
        if bad:
            report_bad_lines(str(input_path), bad, options.skip_bad_lines)
        examples = [Example(row.example.text_a, row.example.text_b, None, row.line) for row in chunk if row.example]
        data = TaskData(str(input_path), examples, layout.format)
        logits = measure.predict_logits(predictor, encode(data, tokenizer, max_length, show_progress=False),
                                           tokenizer, batch_size, show_progress=False)
        handle.write("".join(_format(example, row_logits, names, label_space.is_regression, as_jsonl)
                             for example, row_logits in zip(examples, logits)))
        count += len(examples)
        bar.update(len(examples))
    return count


def _format(example: Example, logits: np.ndarray, names: list[str], regression: bool, as_jsonl: bool) -> str:
    texts = [example.text_a] + ([example.text_b] if example.text_b is not None else [])
    if regression:
        if as_jsonl:
            return json.dumps({"text": texts[0], **({"text_b": texts[1]} if len(texts) > 1 else {}),
                               "score": float(logits[0])}, ensure_ascii=False) + "\n"
        return "\t".join(texts + [f"{float(logits[0]):.6g}"]) + "\n"
    shifted = np.exp(logits - logits.max())
    probabilities = shifted / shifted.sum()
    label = names[int(probabilities.argmax())]
    if as_jsonl:
        return json.dumps({"text": texts[0], **({"text_b": texts[1]} if len(texts) > 1 else {}), "label": label,
                           "probabilities": {n: round(float(p), 6) for n, p in zip(names, probabilities)}},
                          ensure_ascii=False) + "\n"
    return "\t".join(texts + [label] + [f"{p:.6f}" for p in probabilities]) + "\n"
