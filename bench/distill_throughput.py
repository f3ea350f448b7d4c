"""Stage-1 distillation throughput: tinybert vs. a run with the reference code's settings.

Both variants train the same student (tinybert-4l-312 from random init) from the same teacher on
the same SST-2 examples for the same number of steps, each in a fresh child process of this run
(so each one's peak RSS is its own). The reference-style variant pads every example to 128,
computes eager attention scores on every layer of both models, and runs the teacher in train
mode (dropout on) under no_grad; ours pads per length-grouped batch, records scores on mapped
layers only (SDPA elsewhere) and runs the teacher in eval mode under inference_mode.

    .venv/bin/python bench/distill_throughput.py [--teacher DIR] [--steps 30]

The last line printed is one JSON object; ``ratio`` = ours ÷ reference examples per second.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path
from queue import Empty

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_style.py
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "sst2" / "train.tsv"


def run_variant(variant: str, teacher_dir: str, data_path: str, steps: int, batch_size: int, queue) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers.utils import logging as transformers_logging

    from reference_style import prepare_models, reference_loader, reference_step
    from tinybert.data import DataOptions, LabelSpace, task_cache, train_loader
    from tinybert.distillation.distillers import IntermediateDistiller, IntermediateLosses
    from tinybert.models.loading import load_classifier, load_tokenizer
    from tinybert.models.students import build_student, uniform_layer_map

    transformers_logging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    tokenizer = load_tokenizer(teacher_dir)
    cache = task_cache(data_path, tokenizer, 64 if variant == "ours" else 128, DataOptions(), show_progress=False)
    label_space = LabelSpace.infer(cache)
    dataset = cache.first(steps * batch_size + batch_size).labelled(label_space)
    teacher = load_classifier(teacher_dir, label_space).eval().to(device)
    student = build_student("tinybert-4l-312", teacher, label_space).to(device)
    layer_map = uniform_layer_map(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    if variant == "ours":
        distiller = IntermediateDistiller(student, teacher, layer_map, IntermediateLosses()).to(device).train()
        loader = train_loader(dataset, tokenizer, batch_size)
        parameters = list(distiller.parameters())

        def loss_of(batch):
            return distiller(batch)["loss"]
    else:
        projection = prepare_models(teacher, student).to(device)
        loader = reference_loader(dataset, tokenizer, batch_size)
        parameters = list(student.parameters()) + list(projection.parameters())

        def loss_of(batch):
            return reference_step("intermediate", teacher, student, projection, layer_map, batch)
    optimizer = torch.optim.AdamW(parameters, lr=5e-5)
    batches = [{k: v.to(device) for k, v in batch.items()} for batch in loader][:steps + 1]

    def step(batch):
        loss = loss_of(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step(batches[0])  # warm-up
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:])
    padded = sum(b["input_ids"].numel() for b in batches[1:])
    synchronize()
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    synchronize()
    seconds = time.perf_counter() - start
    examples = sum(len(b["input_ids"]) for b in batches[1:])
    queue.put({"variant": variant, "device": str(device), "examples_per_s": examples / seconds, "seconds": seconds,
               "examples": examples, "padding_fraction": 1 - tokens / padded,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def result_of(process, queue, limit: float) -> dict:
    """The child's result, or an error when it dies or overruns ``limit`` seconds (it never leaves
    the parent waiting)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=1)
        except Empty:
            if not process.is_alive():
                raise SystemExit(f"the {process.name} variant failed (exit code {process.exitcode}); its error is above")
    process.kill()
    raise SystemExit(f"the {process.name} variant ran past {limit:.0f} s and was stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="fine-tuned teacher directory (default: the demo MiniLM "
                                          "encoder with a new 2-class head; speed does not depend on it)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=600, help="seconds a variant may take")
    args = parser.parse_args()
    from tinybert.resources import demo_teacher_dir
    teacher = args.teacher or str(demo_teacher_dir())

    context = multiprocessing.get_context("spawn")
    results = {}
    for variant in ("reference", "ours"):
        queue = context.Queue()
        process = context.Process(target=run_variant, name=variant,
                                  args=(variant, teacher, args.data, args.steps, args.batch_size, queue))
        process.start()
        results[variant] = result_of(process, queue, args.timeout)
        process.join()
        print(json.dumps(results[variant]), file=sys.stderr)
    summary = {
        "benchmark": "stage-1 distillation, tinybert-4l-312 student, SST-2",
        "teacher": teacher, "steps": args.steps, "batch_size": args.batch_size,
        "ours_examples_per_s": results["ours"]["examples_per_s"],
        "reference_examples_per_s": results["reference"]["examples_per_s"],
        "ours_peak_rss_mb": results["ours"]["peak_rss_mb"],
        "reference_peak_rss_mb": results["reference"]["peak_rss_mb"],
        "ratio": results["ours"]["examples_per_s"] / results["reference"]["examples_per_s"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
