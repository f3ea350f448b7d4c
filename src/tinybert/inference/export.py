"""ONNX export with dynamic batch and sequence axes, onnxruntime int8 quantisation, and the
parity checks that say whether the exported files can replace the PyTorch model."""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..evaluation import measure
from ..artifacts import atomic_file, write_json
from ..data import DataOptions, EncodedData
from ..data.tasks import task_data
from ..errors import InputError
from ..evaluation.metrics import default_metric
from ..models.files import RECORD_FILE
from ..models.loading import (check_model_dir, count_parameters, label_space_of, load_classifier, load_tokenizer,
                              model_size_mb)
from ..models.record import read_record, reading_settings
from .runners import ONNX_FILE, OnnxClassifier
from ..settings import group, option

logger = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"
REPORT_FILE = "export.json"
FP32_TOLERANCE = 1e-3  # max |Δlogit| between PyTorch and ONNX fp32
INT8_TOLERANCE = 1.0  # metric points (×100) the int8 model may lose on the dev set
OUTPUT_NAMES = {"sequence": ("logits",), "token": ("logits",), "qa": ("start_logits", "end_logits")}
PARITY_EXAMPLES = 256  # examples compared in fp32 (the int8 check uses the whole data file)
SAMPLE_TEXTS = ["a short example", "a second, rather longer example sentence for the check ."]


@dataclass
class ExportArguments:
    model: str | None = option(None, "fine-tuned or distilled model directory", required=True)
    output: str | None = option(None, "output directory", required=True)
    int8: bool = option(False, "also write model.int8.onnx (dynamic int8 quantisation)")
    data: str | None = option(None, "labelled dev file for the checks (int8: metric within 1 point); without it "
                                    "fp32 parity is checked on built-in sentences")
    max_length: int | None = option(None, "tokens per example of the check data (default: the model's recorded "
                                          "length, else 128)")
    no_latency: bool = option(False, "skip the latency measurement")
    data_options: DataOptions = group("reading data", DataOptions)

    def run(self, show_progress: bool = True) -> dict:
        return export_onnx(self.model, self.output, int8=self.int8, data=self.data, max_length=self.max_length,
                           latency=not self.no_latency, data_options=self.data_options, show_progress=show_progress)


def export_onnx(model_dir: str | os.PathLike, output_dir: str | os.PathLike, *, int8: bool = False,
                data: str | os.PathLike | None = None, max_length: int | None = None, latency: bool = True,
                data_options: DataOptions | None = None, show_progress: bool = True) -> dict:
    """Write ``model.onnx`` (and ``model.int8.onnx``) with the tokenizer and config beside them,
    check them against the PyTorch model and return the figures (also in ``export.json``).

    ``data``: a labelled file (the dev set) for the parity checks; without it fp32 parity is
    checked on built-in sentences and the int8 metric check is skipped. ``max_length`` and the doc
    stride default to what the model recorded (else 128 tokens); the record is copied beside the
    ONNX files, so `predict` uses them too.
    """
    model_dir = check_model_dir(model_dir)
    label_space = label_space_of(model_dir)
    if label_space is None:
        raise InputError("this is a bare encoder with no task head", path=model_dir,
                         fix="export a model written by `tinybert finetune` or `tinybert distill`")
    output_dir = Path(output_dir)
    tokenizer = load_tokenizer(model_dir)
    model = load_classifier(model_dir).eval()
    # the check data first: a bad file stops the export before anything is written
    record = read_record(model_dir)
    max_length, options = reading_settings(record, max_length, data_options or DataOptions(), label_space.task)
    if data is not None:
        dataset = task_data(label_space.task, data, tokenizer, max_length, options, show_progress=show_progress,
                            limit=False).labelled(label_space)
    else:
        features = [dict(tokenizer(text)) for text in SAMPLE_TEXTS]
        dataset = EncodedData(features, [len(feature["input_ids"]) for feature in features])
    output_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = output_dir / ONNX_FILE
    logger.info("writing %s", onnx_path)
    write_onnx(model, tokenizer(SAMPLE_TEXTS, padding=True, return_tensors="pt"), onnx_path, label_space.task)
    tokenizer.save_pretrained(output_dir)
    model.config.save_pretrained(output_dir)
    if record:
        write_json(output_dir / RECORD_FILE, record)
    else:  # an earlier export's record here would describe another model
        (output_dir / RECORD_FILE).unlink(missing_ok=True)
    results = {"model": str(model_dir), "onnx": str(onnx_path), "params": count_parameters(model),
               "pytorch_size_mb": model_size_mb(model_dir),
               "onnx_size_mb": onnx_path.stat().st_size / 1e6}
    sample = dataset.first(PARITY_EXAMPLES)
    exported = OnnxClassifier(onnx_path)
    difference = max(float(np.abs(measure.predict_logits(exported, sample, tokenizer, show_progress=False, output=name)
                                  - measure.predict_logits(model, sample, tokenizer, show_progress=False,
                                                              output=name)).max())
                     for name in OUTPUT_NAMES[label_space.task])
    results["fp32_max_abs_logit_diff"] = difference
    results["fp32_parity_examples"] = len(sample)
    results["fp32_parity_passed"] = difference <= FP32_TOLERANCE
    runners = {"pytorch": model, "onnx": exported}

    if int8:
        int8_path = output_dir / INT8_FILE
        logger.info("quantising to int8: %s", int8_path)
        quantize(onnx_path, int8_path)
        quantized = runners["onnx_int8"] = OnnxClassifier(int8_path)
        results["int8_onnx"] = str(int8_path)
        results["int8_size_mb"] = int8_path.stat().st_size / 1e6
        if data is not None:
            metric = default_metric(label_space)
            before, after = (measure.evaluate_dataset(runner, dataset, tokenizer, label_space,
                                                         show_progress=show_progress)[metric]
                             for runner in (model, quantized))
            results.update({"int8_metric": metric, "int8_data": str(data), "pytorch_metric_value": before,
                            "int8_metric_value": after, "int8_metric_drop_points": 100 * (before - after),
                            "int8_parity_passed": 100 * (before - after) <= INT8_TOLERANCE})
    if latency:
        results["latency_ms_batch1"] = {name: measure.measure_latency(runner, dataset, tokenizer,
                                                                      throughput=False)["latency_ms_batch1"]
                                        for name, runner in runners.items()}
    write_json(output_dir / REPORT_FILE, results)
    return results


def parity_failures(results: dict) -> list[str]:
    """Human-readable reasons an export failed its checks (empty when it passed)."""
    failures = []
    if not results.get("fp32_parity_passed", True):
        failures.append(f"ONNX fp32 logits differ from PyTorch by up to {results['fp32_max_abs_logit_diff']:.2e} "
                        f"(allowed {FP32_TOLERANCE:g})")
    if not results.get("int8_parity_passed", True):
        failures.append(f"int8 {results['int8_metric']} is {results['int8_metric_drop_points']:.2f} points below "
                        f"PyTorch on {results['int8_data']} (allowed {INT8_TOLERANCE:g})")
    return failures


def export_graph(module: torch.nn.Module, inputs: dict[str, torch.Tensor], target, dynamic_axes: dict,
                 output_names: tuple[str, ...] = ("logits",)) -> None:
    """Traces ``module`` called with ``inputs`` (keyword arguments) into an ONNX graph written to
    ``target`` (a path or a binary buffer). The TorchScript exporter handles transformers' mask
    code with dynamic axes and needs no extra packages; its deprecation and tracer warnings are
    about internals, not the result."""
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (), target, kwargs=inputs, input_names=list(inputs),
                          output_names=list(output_names), dynamic_axes=dynamic_axes, opset_version=17,
                          dynamo=False)


def write_onnx(model, sample: dict, path: Path, task: str) -> None:
    """``model`` as an ONNX graph at ``path``, traced on the batch ``sample``, with dynamic axes (the
    inputs its forward names: a static student takes no token types)."""
    takes = inspect.signature(model.forward).parameters
    inputs = {name: sample[name] for name in ("input_ids", "attention_mask", "token_type_ids")
              if name in sample and name in takes}
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    # a class per text has a batch axis; a tag per token, and answer positions, a sequence axis too
    outputs = {name: {0: "batch"} if task == "sequence" else {0: "batch", 1: "sequence"} for name in OUTPUT_NAMES[task]}
    with atomic_file(path) as temporary:
        export_graph(model, inputs, str(temporary), {**axes, **outputs}, output_names=OUTPUT_NAMES[task])


def quantize(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process
    prepared = target.with_name(target.stem + ".prepared.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    with atomic_file(target) as temporary:
        quantize_dynamic(str(prepared), str(temporary), weight_type=QuantType.QInt8)
    prepared.unlink()
