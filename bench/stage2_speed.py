"""Stage-2 (prediction-layer) distillation with and without the teacher-output cache.

A BERT-base-shape teacher (12 × 768, random weights of real shapes: speed does not depend on
weights) with a 2-class head and the demo teacher's tokenizer, distilled into a 4L-312 student on
the same SST-2 rows for the same steps, through ``distill`` as users run it: once running the
teacher at every step (``no_teacher_cache``), once reading its outputs from the cache. The cache
is built by the second run before its first step; its build time is reported apart and left out
of the cached run's examples/s (it is paid once per teacher and training file, and runs given
the same ``--cache-dir`` share it). Steps are timed after warm-up ones.

    .venv/bin/python bench/stage2_speed.py [--rows 1024] [--steps 20] [--batch-size 32]

Each variant runs ``--repeats`` times, alternated with the other, and its median examples/s is
kept (this machine's speed drifts by a third from minute to minute). The last line printed is
one JSON object; ``ratio`` = cached ÷ uncached examples per second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from gpu_figures import TEACHER, StepTimer, _timed_run  # noqa: E402

import tinybert.distillation.task as distill_module  # noqa: E402
from tinybert.data import DataOptions  # noqa: E402
from tinybert.distillation.task import DistillConfig  # noqa: E402
from tinybert.resources import demo_teacher_dir  # noqa: E402
from tinybert.training import TrainingConfig  # noqa: E402

DEFAULT_DATA = BENCH.parent.parent / "shared" / "datasets" / "sst2" / "train.tsv"
STUDENT = {"num_hidden_layers": 4, "hidden_size": 312, "intermediate_size": 1200, "num_attention_heads": 12}
WARMUP = 2


def _prepare(work: Path, data: Path, rows: int, tokenizer: Path) -> tuple[Path, Path, Path]:
    torch.manual_seed(0)
    labels = {"num_labels": 2, "id2label": {0: "0", 1: "1"}, "label2id": {"0": 0, "1": 1}}
    teacher = work / "teacher"
    BertForSequenceClassification(BertConfig(**TEACHER, **labels)).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(teacher)
    student = work / "student.json"
    student.write_text(json.dumps(STUDENT))
    train = work / "train.tsv"
    with open(data) as source, open(train, "w") as target:
        target.writelines(line for _, line in zip(range(rows + 1), source))  # the header and the first rows
    return teacher, student, train


def _stage2(work: Path, teacher: Path, student: Path, train: Path, rows: int, steps: int, batch_size: int,
            cached: bool) -> dict:
    training = TrainingConfig(epochs=(WARMUP + steps + 1) * batch_size / rows, batch_size=batch_size,
                              learning_rate=5e-5, schedule="constant", warmup_ratio=0.0, checkpoint_every=10**9,
                              log_every=10**9, compile="never")
    config = DistillConfig(stage="prediction", training=training, max_length=64, no_teacher_cache=not cached)
    output = work / f"out_{'cached' if cached else 'uncached'}"
    shutil.rmtree(output, ignore_errors=True)
    real_build, built = distill_module.teacher_outputs, {}

    def timed_build(*args, **kwargs):
        start = time.perf_counter()
        outputs = real_build(*args, **kwargs)
        built["seconds"] = time.perf_counter() - start
        return outputs
    distill_module.teacher_outputs = timed_build
    try:
        record = _timed_run(distill_module, distill_module.distill, StepTimer(WARMUP, steps), teacher, str(student),
                            train, output, show_progress=False, config=config,
                            data_options=DataOptions(cache_dir=str(work / "cache")))
    finally:
        distill_module.teacher_outputs = real_build
    if cached:
        record["cache_build_s"] = built["seconds"]  # finding a built cache, after the first run
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="an SST-2-style TSV (sentence, label)")
    parser.add_argument("--rows", type=int, default=1024, help="training rows (the cache covers them all)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, alternated (median kept)")
    parser.add_argument("--tokenizer", help="a BERT uncased tokenizer's directory (default: the demo teacher's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="stage2_speed-") as directory:
        work = Path(directory)
        tokenizer = Path(args.tokenizer) if args.tokenizer else demo_teacher_dir()
        teacher, student, train = _prepare(work, Path(args.data), args.rows, tokenizer)
        runs = {"uncached": [], "cached": []}
        # alternated, so that a slow spell of the machine falls on both; the median of each kept
        for _ in range(args.repeats):
            for variant in runs:
                record = _stage2(work, teacher, student, train, args.rows, args.steps, args.batch_size,
                                 variant == "cached")
                runs[variant].append(record)
                print(json.dumps({"variant": variant, **record}), file=sys.stderr)
    speed = {variant: statistics.median(run["examples_per_s"] for run in records) for variant, records in runs.items()}
    print(json.dumps({
        "benchmark": "stage-2 distillation, BERT-base-shape teacher → 4L-312 student, SST-2 rows",
        "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
        "rows": args.rows, "steps": args.steps, "batch_size": args.batch_size, "repeats": args.repeats,
        "uncached_examples_per_s": speed["uncached"], "cached_examples_per_s": speed["cached"],
        # the first cached run builds the cache; the others find it
        "cache_build_s": runs["cached"][0]["cache_build_s"],
        "ratio": speed["cached"] / speed["uncached"],
    }))


if __name__ == "__main__":
    main()
