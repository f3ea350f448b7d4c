"""Peak memory of general distillation's corpus streaming: the shared corpus once vs. 10 times.

Each variant runs in a fresh child process: it tokenises the corpus into the on-disk cache and
then reads every batch of one epoch through the training DataLoader (what a training run does
with the data). If memory grew with the corpus, the 10× variant would need far more.

    .venv/bin/python bench/general_memory.py [--corpus FILES...] [--copies 10]

The last line printed is one JSON object; ``ratio`` = peak RSS of 10× ÷ peak RSS of 1×.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = sorted((REPO.parent / "shared" / "datasets" / "corpus").glob("*.txt"))


def stream(files: list[str], work: str, queue) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    from tinybert.data.corpus import build_corpus_cache
    from tinybert.models.loading import load_tokenizer
    from tinybert.resources import demo_teacher_dir
    tokenizer = load_tokenizer(demo_teacher_dir())
    start = time.perf_counter()
    cache = build_corpus_cache(files, tokenizer, 128, Path(work) / "cache", show_progress=False)
    built = time.perf_counter() - start
    tokens = 0
    for batch in DataLoader(cache, batch_size=256, collate_fn=DataCollatorWithPadding(tokenizer)):
        tokens += int(batch["attention_mask"].sum())
    queue.put({"examples": len(cache), "tokens": tokens, "cache_seconds": built,
               "corpus_mb": sum(os.path.getsize(f) for f in files) / 1e6,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="+", default=[str(p) for p in CORPUS])
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="tinybert-memory-")
    try:
        repeated = Path(work) / "repeated.txt"
        with open(repeated, "wb") as out:
            for _ in range(args.copies):
                for name in args.corpus:
                    with open(name, "rb") as source:
                        shutil.copyfileobj(source, out)
        context = multiprocessing.get_context("spawn")
        results = {}
        for label, files in (("once", args.corpus), (f"x{args.copies}", [str(repeated)])):
            queue = context.Queue()
            child = context.Process(target=stream, args=(files, os.path.join(work, label), queue))
            child.start()
            results[label] = queue.get()
            child.join()
            print(json.dumps({label: results[label]}))
        many = results[f"x{args.copies}"]
        print(json.dumps({"benchmark": "general-distillation corpus streaming, peak RSS",
                          "once_peak_rss_mb": results["once"]["peak_rss_mb"],
                          "repeated_peak_rss_mb": many["peak_rss_mb"],
                          "once_tokens": results["once"]["tokens"], "repeated_tokens": many["tokens"],
                          "ratio": many["peak_rss_mb"] / results["once"]["peak_rss_mb"]}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
