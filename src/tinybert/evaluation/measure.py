"""`tinybert evaluate`: task metrics, model size and CPU latency of a fine-tuned model."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils import benchmark
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from ..artifacts import write_json
from ..compiling import CompileSetting, StaticShapes, compile_module, compile_option, static_shapes
from ..data import DataOptions, LabelSpace, eval_loader
from ..data.tasks import task_data
from ..data.batching import MODEL_INPUTS, PadToLongest, model_inputs
from .metrics import metrics_for
from ..inference.runners import OnnxClassifier, load_predictor
from ..models.loading import count_parameters, model_size_mb
from ..models.record import reading_settings
from ..settings import group, option

LATENCY_EXAMPLES = 32
OUTPUTS = ("logits", "start_logits", "end_logits")
# Each speed figure times calls for at least this long: a small student's batch takes tens of
# milliseconds on a laptop, where a handful of calls gave throughput ratios 20 % apart run to run.
LATENCY_SECONDS = 1.0


def _outputs_of_batches(model, loader, device, show_progress: bool, shapes: StaticShapes | None = None):
    """(batch, outputs as float32 numpy arrays) for each batch of ``loader``, the model in eval
    mode under inference mode. Outputs: ``logits``, or ``start_logits`` and ``end_logits`` (QA).
    With ``shapes`` the model runs compiled, each batch filled up to ``shapes.rows`` rows."""
    was_training = model.training
    model.eval()
    run = compile_module(model, torch.device(device)) if shapes else model
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc="evaluating", unit="batch", disable=not show_progress, leave=False):
                inputs = {key: value.to(device) for key, value in model_inputs(batch).items()}
                real = len(inputs["input_ids"])
                if shapes:
                    inputs, real = shapes.fill_rows(inputs)
                output = run(**inputs)
                yield batch, {name: getattr(output, name)[:real].float().cpu().numpy() for name in OUTPUTS
                              if getattr(output, name, None) is not None}
    finally:
        model.train(was_training)


def predict_logits(model, dataset, tokenizer, batch_size: int = 64, device: torch.device | str = "cpu",
                   show_progress: bool = True, output: str = "logits") -> np.ndarray:
    """One output (``logits`` by default) for every example of a small dataset, in its order
    (batches run sorted by length; per-token outputs padded with 0 to the longest example)."""
    loader, order = eval_loader(dataset, tokenizer, batch_size)
    parts = [outputs[output] for _, outputs in _outputs_of_batches(model, loader, device, show_progress)]
    if parts[0].ndim > 2 or (output != "logits" and parts[0].ndim == 2):  # per token: pad to one width
        width = max(part.shape[1] for part in parts)
        parts = [np.pad(part, [(0, 0), (0, width - part.shape[1])] + [(0, 0)] * (part.ndim - 2)) for part in parts]
    logits = np.concatenate(parts)
    in_order = np.empty_like(logits)
    in_order[np.fromiter(order, dtype=np.int64, count=len(dataset))] = logits
    return in_order


def evaluate_dataset(model, dataset, tokenizer, label_space: LabelSpace, batch_size: int = 64,
                     device: torch.device | str = "cpu", show_progress: bool = True, accelerator=None,
                     shapes: StaticShapes | None = None) -> dict:
    """The task metrics of ``model`` on a labelled dataset, gathered batch by batch (any size).
    With an ``accelerator`` of several processes each evaluates its share of the batches, and the
    shares are added up. ``shapes``: the model runs compiled, on batches of those lengths."""
    processes = accelerator.num_processes if accelerator is not None else 1
    shard = (accelerator.process_index, processes) if processes > 1 else (0, 1)
    shapes = replace(shapes, rows=batch_size) if shapes else None
    metrics = metrics_of_shard(model, dataset, tokenizer, label_space, batch_size, device, show_progress, shard,
                               shapes)
    if processes > 1:  # every rank receives every share, its own as a copy: merge the others'
        for rank, other in enumerate(gather_object([metrics])):
            if rank != accelerator.process_index:
                metrics.merge(other)
    return metrics.result()


def metrics_of_shard(model, dataset, tokenizer, label_space: LabelSpace, batch_size: int = 64,
                     device: torch.device | str = "cpu", show_progress: bool = True, shard: tuple[int, int] = (0, 1),
                     shapes: StaticShapes | None = None):
    metrics = metrics_for(label_space, dataset)
    loader, _ = eval_loader(dataset, tokenizer, batch_size, shard, shapes)
    for batch, outputs in _outputs_of_batches(model, loader, device, show_progress, shapes):
        metrics.add_batch(outputs, batch)
    return metrics


def _seconds_per_call(call) -> float:
    """Median seconds per call, after a warm-up: at least four calls (blocks of calls for quick
    ones) over at least ``LATENCY_SECONDS``, more until their spread is within 10 % of the median
    or five times that long has passed (torch.utils.benchmark's adaptive timing, at this process's
    thread count, on the wall clock: no accelerator is synchronised for a CPU figure)."""
    timer = benchmark.Timer("call()", globals={"call": call}, timer=time.perf_counter,
                            num_threads=torch.get_num_threads())
    return timer.adaptive_autorange(min_run_time=LATENCY_SECONDS, max_run_time=5 * LATENCY_SECONDS).median


@torch.inference_mode()
def measure_latency(model, dataset, tokenizer, throughput: bool = True) -> dict:
    """CPU latency at batch 1 (ms per example) and, with ``throughput``, throughput at batch 32
    (examples/s) on the first examples of the data (``_seconds_per_call`` times each)."""
    model.eval()
    collate = PadToLongest(tokenizer)
    sample = [{k: v for k, v in dataset[i].items() if k in MODEL_INPUTS}
              for i in range(min(LATENCY_EXAMPLES, len(dataset)))]
    singles = [collate([feature]) for feature in sample]

    def run_singles() -> None:
        for inputs in singles:
            model(**inputs)

    figures = {"latency_ms_batch1": _seconds_per_call(run_singles) * 1000 / len(singles)}
    if throughput:
        batch32 = collate(sample)
        figures["examples_per_s_batch32"] = len(sample) / _seconds_per_call(lambda: model(**batch32))
    return figures


def evaluate(model_dir: str | os.PathLike, data_path: str | os.PathLike, *, max_length: int | None = None,
             batch_size: int = 64, latency: bool = True, data_options: DataOptions | None = None,
             compile: CompileSetting = "auto", show_progress: bool = True) -> dict:
    """Everything `tinybert evaluate` reports for a fine-tuned model (classifier, tagger or QA: a
    model directory, an export directory or an ``.onnx`` file) on a labelled file of its task, read
    through its token cache (``data_options.cache_dir``, else ~/.cache/tinybert/tokens).
    ``max_length`` and the doc stride default to what the model recorded (else 128 tokens)."""
    model, tokenizer, label_space, record = load_predictor(model_dir)
    onnx = isinstance(model, OnnxClassifier)
    max_length, options = reading_settings(record, max_length, data_options or DataOptions(), label_space.task)
    dataset = task_data(label_space.task, data_path, tokenizer, max_length, options,
                        show_progress=show_progress).labelled(label_space)
    results = {"model": str(model_dir), "data": str(data_path), "examples": len(dataset), "max_length": max_length}
    if label_space.task == "qa":  # examples are windows of the questions' contexts
        results.update(doc_stride=options.doc_stride, questions=dataset.meta["questions"])
    shapes = None if onnx else static_shapes(compile, torch.device("cpu"), rows=batch_size, max_length=max_length,
                                             examples=len(dataset))
    results.update(evaluate_dataset(model, dataset, tokenizer, label_space, batch_size, show_progress=show_progress,
                                    shapes=shapes))
    if not onnx:  # an ONNX graph's weights are its file
        results["params"] = count_parameters(model)
    results["size_mb"] = model.path.stat().st_size / 1e6 if onnx else model_size_mb(model_dir)
    if latency:
        results.update(measure_latency(model, dataset, tokenizer))
    return results


def format_table(results: dict) -> str:
    rows = []
    for key, value in results.items():
        if isinstance(value, float):
            value = f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        rows.append((key, str(value)))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


@dataclass
class EvaluateArguments:
    model: str | None = option(None, "fine-tuned model directory, export directory (its model.onnx), or model.onnx / "
                                     "model.int8.onnx", required=True)
    data: str | None = option(None, "labelled data file", required=True)
    json: str | None = option(None, "also write the figures to this JSON file")
    max_length: int | None = option(None, "tokens per example, longer ones truncated (default: the model's "
                                          "recorded length, else 128)")
    batch_size: int = option(64, "examples per forward pass")
    no_latency: bool = option(False, "skip the latency measurement")
    compile: CompileSetting = compile_option("the model's forward pass")
    data_options: DataOptions = group("reading data", DataOptions)

    def run(self, show_progress: bool = True) -> dict:
        results = evaluate(self.model, self.data, max_length=self.max_length, batch_size=self.batch_size,
                           latency=not self.no_latency, data_options=self.data_options, compile=self.compile,
                           show_progress=show_progress)
        if self.json:
            write_json(self.json, results)
        return results
