"""Peak memory of task distillation on paper-scale data: SST-2 train the size of its augmented set
(20 copies, ~1.35 M rows, what N = 20 makes) vs. ten times that (~13.5 M rows).

Each size runs in a fresh child process: the token cache is built (timed), then a few steps of
stage-1 distillation (MiniLM-L6 teacher with a 2-class head, a small student) read from it. The
files are made by repetition (the cache and the sampler do not care what the rows say) in a
temporary folder that is removed afterwards.

    .venv/bin/python bench/task_memory.py [--copies 20] [--scale 10] [--steps 5]

The last line printed is one JSON object; ``ratio`` = peak RSS at 10× ÷ peak RSS at 1×.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "datasets" / "sst2" / "train.tsv"
STUDENT = {"num_hidden_layers": 2, "hidden_size": 96, "intermediate_size": 192, "num_attention_heads": 12}


def run_size(data: str, teacher: str, student: str, work: str, steps: int, queue) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers.utils import logging as transformers_logging

    from tinybert.data import DataOptions, task_cache
    from tinybert.distillation.task import DistillConfig, distill
    from tinybert.models.loading import load_tokenizer
    from tinybert.training import TrainingConfig
    transformers_logging.set_verbosity_error()

    options = DataOptions(cache_dir=os.path.join(work, "cache"))
    started = time.perf_counter()
    cache = task_cache(data, load_tokenizer(teacher), 64, options, show_progress=False)
    build_seconds = time.perf_counter() - started
    rows = len(cache)
    cache_bytes = sum(path.stat().st_size for path in cache.directory.iterdir())
    del cache  # distillation opens the cache itself
    after_cache = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batch = 32
    training = TrainingConfig(epochs=steps * batch / rows, batch_size=batch, learning_rate=5e-5, schedule="constant",
                              warmup_ratio=0.0, checkpoint_every=10**9)
    started = time.perf_counter()
    distill(teacher, student, data, os.path.join(work, "stage1"), config=DistillConfig(training=training, max_length=64),
            data_options=options, show_progress=False)
    queue.put({"rows": rows, "cache_mb": cache_bytes / 1e6, "cache_build_s": build_seconds,
               "cache_build_rows_per_s": rows / build_seconds, "train_s": time.perf_counter() - started,
               "peak_rss_mb_after_cache": after_cache,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def write_repeated(source: Path, target: Path, copies: int) -> None:
    header, *rows = source.read_text(encoding="utf-8").splitlines(keepends=True)
    body = "".join(rows)
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(header)
        for _ in range(copies):
            handle.write(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SST2))
    parser.add_argument("--copies", type=int, default=20, help="copies of the data in the smaller file")
    parser.add_argument("--scale", type=int, default=10, help="how many times larger the second file is")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tinybert.resources import demo_teacher_dir

    work = Path(tempfile.mkdtemp(prefix="task_memory_"))
    try:
        teacher = work / "teacher"
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_pretrained(
            demo_teacher_dir(), num_labels=2, id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1}).save_pretrained(teacher)
        AutoTokenizer.from_pretrained(demo_teacher_dir()).save_pretrained(teacher)
        student = work / "student.json"
        student.write_text(json.dumps(STUDENT))
        context = multiprocessing.get_context("spawn")
        results = {}
        for name, copies in (("small", args.copies), ("large", args.copies * args.scale)):
            data = work / f"train_{copies}x.tsv"
            write_repeated(Path(args.data), data, copies)
            queue = context.Queue()
            child = context.Process(target=run_size, args=(str(data), str(teacher), str(student), str(work / name),
                                                           args.steps, queue))
            child.start()
            results[name] = queue.get()
            child.join()
            print(json.dumps({name: results[name]}), file=sys.stderr)
            data.unlink()
            shutil.rmtree(work / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = results["small"], results["large"]
    print(json.dumps({
        "benchmark": "peak RSS of stage-1 distillation (token cache + a few steps) vs. the number of rows",
        "rows_small": small["rows"], "rows_large": large["rows"],
        "peak_rss_mb_small": small["peak_rss_mb"], "peak_rss_mb_large": large["peak_rss_mb"],
        "cache_mb_small": small["cache_mb"], "cache_mb_large": large["cache_mb"],
        "cache_build_rows_per_s_small": small["cache_build_rows_per_s"],
        "cache_build_rows_per_s_large": large["cache_build_rows_per_s"],
        "ratio": large["peak_rss_mb"] / small["peak_rss_mb"]}))


if __name__ == "__main__":
    main()
