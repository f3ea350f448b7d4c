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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "sst2" / "train.tsv"


def run_variant(variant: str, teacher_dir: str, data_path: str, steps: int, batch_size: int, queue) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import DataCollatorWithPadding
    from transformers.utils import logging as transformers_logging

    from tinybert.data import LabelSpace, encode, read_task_file, train_loader
    from tinybert.distillers import IntermediateDistiller, LossWeights
    from tinybert.models import load_classifier, load_tokenizer
    from tinybert.students import build_student, uniform_layer_map

    transformers_logging.set_verbosity_error()
    torch.manual_seed(0)
    data = read_task_file(data_path)
    data.examples = data.examples[: steps * batch_size]
    label_space = LabelSpace.infer(data)
    tokenizer = load_tokenizer(teacher_dir)
    teacher = load_classifier(teacher_dir, label_space).eval()
    student = build_student("tinybert-4l-312", teacher, label_space)
    layer_map = uniform_layer_map(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    distiller = IntermediateDistiller(student, teacher, layer_map, LossWeights()).train()

    if variant == "ours":
        encoded = encode(data, tokenizer, 64, label_space, show_progress=False)
        loader = train_loader(encoded, tokenizer, batch_size)
        forward = distiller
    else:
        encoded = encode(data, tokenizer, 128, label_space, show_progress=False)
        loader = torch.utils.data.DataLoader(
            encoded.features, batch_size=batch_size, shuffle=True,
            collate_fn=DataCollatorWithPadding(tokenizer, padding="max_length", max_length=128))
        all_teacher_layers = list(range(1, teacher.config.num_hidden_layers + 1))
        teacher.train()  # the reference code leaves the teacher's dropout on

        def forward(batch):
            # scores on every layer of both models (eager everywhere), teacher under no_grad
            from tinybert.attention import recording_scores
            from tinybert.losses import attention_loss, hidden_loss
            batch = {k: v for k, v in batch.items() if k != "labels"}
            mask = batch["attention_mask"]
            with torch.no_grad(), recording_scores(teacher, [i - 1 for i in all_teacher_layers]) as t_scores:
                t_hidden = teacher.base_model(**batch, output_hidden_states=True).hidden_states
            with recording_scores(student, range(student.config.num_hidden_layers)) as s_scores:
                s_hidden = student.base_model(**batch, output_hidden_states=True).hidden_states
            loss = sum(attention_loss(s_scores[m], t_scores[t - 1], mask) for m, t in enumerate(layer_map))
            loss = loss + sum(hidden_loss(s_hidden[m + 1], t_hidden[t], mask, distiller.hidden_projection)
                              for m, t in enumerate(layer_map))
            loss = loss + hidden_loss(s_hidden[0], t_hidden[0], mask, distiller.hidden_projection)
            return {"loss": loss}

    optimizer = torch.optim.AdamW(distiller.parameters(), lr=5e-5)
    batches = list(loader)

    def step(batch):
        loss = forward(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step(batches[0])  # warm-up
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    seconds = time.perf_counter() - start
    examples = sum(len(b["input_ids"]) for b in batches)
    queue.put({"variant": variant, "examples_per_s": examples / seconds, "seconds": seconds,
               "examples": examples, "padding_fraction": 1 - tokens / padded,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="fine-tuned teacher directory (default: the demo MiniLM "
                                          "encoder with a new 2-class head; speed does not depend on it)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    from tinybert.resources import demo_teacher_dir
    teacher = args.teacher or str(demo_teacher_dir())

    context = multiprocessing.get_context("spawn")
    results = {}
    for variant in ("reference", "ours"):
        queue = context.Queue()
        process = context.Process(target=run_variant,
                                  args=(variant, teacher, args.data, args.steps, args.batch_size, queue))
        process.start()
        results[variant] = queue.get()
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
