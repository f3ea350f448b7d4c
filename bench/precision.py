"""Training throughput of general distillation with bf16 autocast vs. fp32, on this machine.

The same student/teacher pair and the same corpus batches, stepped in one process: first fp32,
then under ``torch.autocast(bfloat16)`` (what ``--mixed-precision bf16`` turns on through
accelerate). CPUs without bf16 instructions gain nothing or lose; GPUs and recent CPUs gain.

    .venv/bin/python bench/precision.py [--steps 8] [--batch-size 32]

The last line printed is one JSON object; ``ratio`` = bf16 ÷ fp32 tokens per second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "datasets" / "corpus" / "wikitext2_valid.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--corpus", default=str(CORPUS))
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from torch.utils.data import DataLoader
    from transformers import AutoModel, DataCollatorWithPadding
    from transformers.utils import logging as transformers_logging

    from tinybert.data.corpus import build_corpus_cache
    from tinybert.distillation.distillers import IntermediateDistiller, IntermediateLosses
    from tinybert.models.loading import load_tokenizer
    from tinybert.models.students import build_student, uniform_layer_map
    from tinybert.resources import demo_teacher_dir
    transformers_logging.set_verbosity_error()

    tokenizer = load_tokenizer(demo_teacher_dir())
    cache = build_corpus_cache([args.corpus], tokenizer, 128, Path(tempfile.mkdtemp()) / "cache", show_progress=False)
    batches = list(DataLoader(cache, batch_size=args.batch_size, collate_fn=DataCollatorWithPadding(tokenizer)))
    batches = batches[: args.steps + 1]
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        teacher = AutoModel.from_pretrained(demo_teacher_dir()).eval()
        student = build_student("tinybert-4l-312", teacher, None)
        distiller = IntermediateDistiller(student, teacher, uniform_layer_map(4, 6), IntermediateLosses()).train()
        optimizer = torch.optim.AdamW(distiller.parameters(), lr=1e-4)
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                    else contextlib.nullcontext())

        def step(batch):
            with autocast:
                loss = distiller(batch)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return float(loss)

        step(batches[0])  # warm-up
        start = time.perf_counter()
        losses = [step(batch) for batch in batches[1:]]
        seconds = time.perf_counter() - start
        tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:])
        results[precision] = {"tokens_per_s": tokens / seconds, "last_loss": losses[-1]}
        print(json.dumps({precision: results[precision]}))
    print(json.dumps({"benchmark": "general distillation step, tinybert-4l-312 from MiniLM-L6, length 128",
                      "fp32_tokens_per_s": results["fp32"]["tokens_per_s"],
                      "bf16_tokens_per_s": results["bf16"]["tokens_per_s"],
                      "ratio": results["bf16"]["tokens_per_s"] / results["fp32"]["tokens_per_s"]}))


if __name__ == "__main__":
    main()
