"""`tinybert sizes`: which student shapes a teacher can be pruned to, each timed on this machine.

Speed is measured, not guessed from parameter counts: every candidate (layers × hidden width ×
heads × feed-forward neurons, with a pruned vocabulary when the data is given) is built with random
weights of its real shape and timed as `tinybert evaluate` times a model (batch-1 latency and
batch-32 throughput, each the median of at least four calls over at least a second), the teacher
too, in one run. The Pareto set holds the shapes no other shape beats on both latency and capacity
(non-embedding parameters); a latency budget picks the largest shape within it, as `distill
--init-from-teacher --latency-ms` does.
"""

from __future__ import annotations

import os
import platform
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig

from ..artifacts import write_json
from ..data import DataOptions, EncodedData
from ..data.batching import PadToLongest
from ..data.tasks import detect_task, task_data
from ..errors import InputError
from ..inference.export import quantize, write_onnx
from ..inference.runners import OnnxClassifier
from ..models.families import config_value
from ..models.loading import TASK_MODELS, check_model_dir, count_parameters, label_space_of, load_tokenizer
from ..models.pruning import PruningOptions, head_width, pruned_shape
from ..models.record import DEFAULT_LENGTH, read_record
from ..models.students import non_embedding_parameters, student_config, uniform_layer_map
from ..models.vocabulary import kept_tokens, pruned_tokenizer
from ..settings import group, option
from .measure import LATENCY_EXAMPLES, measure_latency

Runtime = Literal["torch", "onnx", "onnx-int8"]
WIDTH_SHARES = (1, 3 / 4, 1 / 2, 1 / 3, 1 / 4)  # of the teacher's hidden width, in whole heads
DEPTH_SHARES = (1, 2 / 3, 1 / 2, 1 / 3, 1 / 4)  # of its layers


@dataclass
class SizesArguments:
    teacher: str | None = option(None, "fine-tuned teacher directory", required=True)
    data: str | None = option(None, "training file: the candidates' vocabulary is pruned to its tokens (as "
                                    "--prune-vocab does) and its first texts are timed (default: texts of "
                                    "--max-length random tokens)")
    max_length: int | None = option(None, "tokens per timed text (default: the teacher's recorded length, else 128)")
    layers: list[str] | None = option(None, "student layer counts to try (default: the teacher's, 2/3, 1/2, 1/3 and "
                                            "1/4 of them)")
    threads: int | None = option(None, "CPU threads to time with (default: PyTorch's)")
    runtime: Runtime = option("torch", "what runs the candidates: PyTorch, ONNX Runtime, or ONNX Runtime on a dynamic "
                                       "int8 copy (as `tinybert export --int8` writes)")
    latency_ms: float | None = option(None, "pick the largest shape whose batch-1 latency is within this budget")
    json: str | None = option(None, "also write the figures to this JSON file")
    data_options: DataOptions = group("reading data", DataOptions)

    def run(self, show_progress: bool = True) -> dict:
        layers = [_count(text) for text in self.layers] if self.layers else None
        results = measure_sizes(self.teacher, data=self.data, max_length=self.max_length, layers=layers,
                                threads=self.threads, runtime=self.runtime, latency_ms=self.latency_ms,
                                data_options=self.data_options, show_progress=show_progress)
        if self.json:
            write_json(self.json, results)
        return results


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"--layers {text!r} is no layer count", fix="give whole numbers of 1 or more, e.g. --layers 4 3")
    return int(text)


def candidate_shapes(teacher_config, layers: list[int] | None = None) -> list[dict]:
    """Shapes in BERT's field names: each layer count with each width that is whole heads of the
    teacher's head width, neurons in the teacher's proportion."""
    depth = teacher_config.num_hidden_layers
    counts = sorted({count for count in layers or [max(round(depth * share), 1) for share in DEPTH_SHARES]},
                    reverse=True)
    unit = head_width(teacher_config)
    widths = sorted({max(round(teacher_config.hidden_size * share / unit), 1) * unit for share in WIDTH_SHARES},
                    reverse=True)
    embeddings = getattr(teacher_config, "embedding_size", None)
    shapes = []
    for count in counts:
        if count > depth:
            raise InputError(f"--layers {count} is more than the teacher's {depth}",
                             fix=f"give layer counts from 1 to {depth}")
        for width in widths:
            if embeddings and embeddings != teacher_config.hidden_size and width == embeddings:
                continue  # such a student has no embedding projection (see pruning.pruned_shape)
            shapes.append({"num_hidden_layers": count, **pruned_shape(teacher_config, PruningOptions(hidden_size=width))})
    return shapes


@contextmanager
def _threads(count: int | None):
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_sizes(teacher_dir, *, data=None, max_length: int | None = None, layers: list[int] | None = None,
                  threads: int | None = None, runtime: Runtime = "torch", latency_ms: float | None = None,
                  data_options: DataOptions | None = None, show_progress: bool = True) -> dict:
    """The teacher and every candidate shape, each with its parameters, size, batch-1 latency and
    batch-32 throughput measured here, ratios against the teacher, the Pareto set marked and, with
    ``latency_ms``, the shape picked."""
    teacher_dir = check_model_dir(teacher_dir, "--teacher")
    label_space = label_space_of(teacher_dir)
    if label_space is None:
        raise InputError("the teacher has no task head", path=teacher_dir,
                         fix="fine-tune it first with `tinybert finetune`")
    tokenizer = load_tokenizer(teacher_dir)
    teacher_config = AutoConfig.from_pretrained(teacher_dir)
    max_length = max_length or read_record(teacher_dir).get("max_length") or DEFAULT_LENGTH
    texts, vocabulary = _timed_texts(tokenizer, label_space.task, max_length, data, data_options or DataOptions(),
                                     show_progress)
    shapes = candidate_shapes(teacher_config, layers)
    measured = []
    with _threads(threads), tempfile.TemporaryDirectory() as scratch:
        for shape in tqdm([None, *shapes], desc=f"timing shapes ({runtime})", unit="shape", disable=not show_progress):
            sizes = dict(shape or {}, **({"vocab_size": vocabulary} if shape and vocabulary else {}))
            mapping = uniform_layer_map(sizes.get("num_hidden_layers", teacher_config.num_hidden_layers),
                                        teacher_config.num_hidden_layers)
            model = TASK_MODELS[label_space.task].from_config(
                student_config(teacher_config, sizes, label_space, teacher_layers=mapping)).eval()
            measured.append(_figures(model, texts, tokenizer, label_space.task, runtime, Path(scratch)))
    teacher, candidates = measured[0], measured[1:]
    for figures in candidates:
        figures.update(params_ratio=teacher["params"] / figures["params"],
                       speedup_batch1=teacher["latency_ms"] / figures["latency_ms"],
                       throughput_ratio=figures["examples_per_s"] / teacher["examples_per_s"])
    for figures in candidates:
        figures["pareto"] = not any(other["latency_ms"] <= figures["latency_ms"]
                                    and other["compute_params"] >= figures["compute_params"]
                                    and (other["latency_ms"], other["compute_params"])
                                    != (figures["latency_ms"], figures["compute_params"]) for other in candidates)
    results = {"teacher": {"model": str(teacher_dir), **teacher}, "candidates": candidates, "runtime": runtime,
               "max_length": max_length, "texts": str(data) if data else f"{LATENCY_EXAMPLES} of random tokens",
               "threads": torch.get_num_threads() if not threads else threads,
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    if latency_ms is not None:
        results.update(latency_budget_ms=latency_ms, picked=pick(candidates, latency_ms))
    return results


def pick(candidates: list[dict], latency_ms: float) -> dict:
    """The candidate with the most non-embedding parameters among those within ``latency_ms``."""
    fitting = [figures for figures in candidates if figures["latency_ms"] <= latency_ms]
    if not fitting:
        fastest = min(candidates, key=lambda figures: figures["latency_ms"])
        raise InputError(f"no candidate shape runs within {latency_ms:g} ms per text here (the fastest measured: "
                         f"{fastest['latency_ms']:.2f} ms)", fix="raise --latency-ms, or give fewer --layers")
    return max(fitting, key=lambda figures: (figures["compute_params"], -figures["latency_ms"]))


def largest_within(teacher_dir, latency_ms: float, *, layers: int | None = None, max_length: int | None = None,
                   data_path=None, data_options: DataOptions | None = None, show_progress: bool = True) -> dict:
    """The shape (BERT's field names) `tinybert sizes --latency-ms` picks for this teacher and data."""
    picked = measure_sizes(teacher_dir, data=data_path, max_length=max_length, layers=[layers] if layers else None,
                           latency_ms=latency_ms, data_options=data_options, show_progress=show_progress)["picked"]
    return {"num_hidden_layers": picked["layers"], "hidden_size": picked["hidden_size"],
            "num_attention_heads": picked["heads"], "intermediate_size": picked["intermediate_size"]}


def _timed_texts(tokenizer, task: str, max_length: int, data, options: DataOptions, show_progress: bool):
    """(the texts timed: the data's first ones, or random tokens of ``max_length``; the pruned
    vocabulary's size for the data, or None)."""
    if data is None:
        generator = torch.Generator().manual_seed(0)
        # ids past the special tokens and unused entries at the head of most vocabularies
        ids = torch.randint(min(1000, len(tokenizer) // 2), len(tokenizer), (LATENCY_EXAMPLES, max_length),
                            generator=generator).tolist()
        features = [{"input_ids": row, **({"token_type_ids": [0] * max_length}
                                          if "token_type_ids" in tokenizer.model_input_names else {})} for row in ids]
        return EncodedData(features, [max_length] * len(features)), None
    kind = detect_task(data, options, expected=task)
    rows = task_data(kind, data, tokenizer, max_length, options, show_progress=show_progress, labels="ignored")
    vocabulary = len(pruned_tokenizer(tokenizer, kept_tokens(rows, tokenizer))[1])  # as --prune-vocab keeps it
    timed = rows.first(LATENCY_EXAMPLES)
    features = [{key: value for key, value in timed[index].items() if key in ("input_ids", "token_type_ids")}
                for index in range(len(timed))]
    return EncodedData(features, [len(feature["input_ids"]) for feature in features]), vocabulary


def _figures(model, texts: EncodedData, tokenizer, task: str, runtime: Runtime, scratch: Path) -> dict:
    """Shape, parameters, size and speed of one model (its ids kept within its vocabulary)."""
    config = model.config
    vocabulary = config.vocab_size
    texts = EncodedData([{**feature, "input_ids": [min(index, vocabulary - 1) for index in feature["input_ids"]]}
                         for feature in texts.features], texts.lengths)
    figures = {"layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
               "heads": config.num_attention_heads, "intermediate_size": config_value(config, "intermediate_size"),
               "vocab_size": vocabulary, "params": count_parameters(model),
               "compute_params": non_embedding_parameters(model), "size_mb": count_parameters(model) * 4 / 1e6}
    runner = model
    if runtime != "torch":
        path = scratch / "model.onnx"
        write_onnx(model, PadToLongest(tokenizer)(texts.features[:2]), path, task)
        if runtime == "onnx-int8":
            quantize(path, scratch / "model.int8.onnx")
            path = scratch / "model.int8.onnx"
        figures["size_mb"] = path.stat().st_size / 1e6
        runner = OnnxClassifier(path)
    timed = measure_latency(runner, texts, tokenizer)
    figures.update(latency_ms=timed["latency_ms_batch1"], examples_per_s=timed["examples_per_s_batch32"])
    return figures


def format_sizes(results: dict) -> str:
    """The candidates as a table, the Pareto set starred, the picked shape marked."""
    teacher, picked = results["teacher"], results.get("picked")
    lines = [f"timed with {results['runtime']} on {results['machine']}, {results['threads']} threads, "
             f"{results['texts']} (≤ {results['max_length']} tokens); * = Pareto set (no shape is both faster and "
             "larger)",
             f"{'':2}{'layers × hidden × heads × FFN':<30}{'vocab':>8}{'params':>12}{'MB':>8}{'ms/text':>9}"
             f"{'texts/s @32':>13}{'smaller':>9}{'faster':>8}"]

    def row(mark: str, figures: dict, smaller: str, faster: str) -> str:
        shape = f"{figures['layers']} × {figures['hidden_size']} × {figures['heads']} × {figures['intermediate_size']}"
        return (f"{mark:<2}{shape:<30}{figures['vocab_size']:>8,}{figures['params']:>12,}{figures['size_mb']:>8.1f}"
                f"{figures['latency_ms']:>9.2f}{figures['examples_per_s']:>13,.0f}{smaller:>9}{faster:>8}")
    lines.append(row("T", teacher, "1.0×", "1.0×"))
    for figures in results["candidates"]:
        mark = ("→" if figures is picked or figures == picked else "") + ("*" if figures["pareto"] else "")
        lines.append(row(mark, figures, f"{figures['params_ratio']:.1f}×", f"{figures['speedup_batch1']:.1f}×"))
    if picked:
        lines.append(f"→ the largest within {results['latency_budget_ms']:g} ms: --layers {picked['layers']} --hidden-size "
                     f"{picked['hidden_size']} --heads {picked['heads']} --intermediate-size "
                     f"{picked['intermediate_size']}")
    return "\n".join(lines)
