"""Peak memory of `tinybert augment` streaming: SST-2 train once vs. repeated 30 times (2 M rows).

Each variant runs in a fresh child process through ``augment_file`` (read, candidates,
variants, write, checkpoint a chunk at a time). Candidates come from the word vectors alone,
so that two million rows finish in minutes; the masked-LM path holds one chunk of masked
copies at a time as well. If memory grew with the input, the repeated file would need far more.

    .venv/bin/python bench/augment_memory.py [--data FILE] [--copies 30] [--variants 2]

The last line printed is one JSON object; ``ratio`` = peak RSS repeated ÷ peak RSS once.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import resource
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2_TRAIN = REPO.parent / "shared" / "datasets" / "sst2" / "train.tsv"


def augment(source: str, output: str, variants: int, queue) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    logging.disable(logging.WARNING)  # the expected "no masked LM given" warning
    from tinybert.augment import AugmentConfig, augment_file
    from tinybert.resources import demo_word_vectors
    result = augment_file(source, output, word_vectors=demo_word_vectors(), config=AugmentConfig(variants=variants),
                          show_progress=False)
    queue.put({"rows": result["rows"], "rows_written": result["rows"] + result["written"],
               "seconds": result["seconds"], "input_mb": os.path.getsize(source) / 1e6,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SST2_TRAIN), help="a task file with a header line")
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--variants", type=int, default=2)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="tinybert-augment-memory-")
    try:
        repeated = Path(work) / f"repeated{Path(args.data).suffix}"
        with open(args.data, "rb") as source:
            header = source.readline()
            body = source.read()
        with open(repeated, "wb") as out:
            out.write(header)
            for _ in range(args.copies):
                out.write(body)
        context = multiprocessing.get_context("spawn")
        results = {}
        for label, source in (("once", args.data), (f"x{args.copies}", str(repeated))):
            queue = context.Queue()
            output = os.path.join(work, f"{label}_aug{Path(args.data).suffix}")
            child = context.Process(target=augment, args=(source, output, args.variants, queue))
            child.start()
            results[label] = queue.get()
            child.join()
            os.remove(output)
            print(json.dumps({label: results[label]}), flush=True)
        many = results[f"x{args.copies}"]
        print(json.dumps({"benchmark": "augment streaming, peak RSS", "variants": args.variants,
                          "once_rows": results["once"]["rows"], "repeated_rows": many["rows"],
                          "once_peak_rss_mb": results["once"]["peak_rss_mb"],
                          "repeated_peak_rss_mb": many["peak_rss_mb"],
                          "ratio": many["peak_rss_mb"] / results["once"]["peak_rss_mb"]}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
