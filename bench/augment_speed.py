"""Augmentation speed: tinybert's batched candidates vs. the reference code's per-word way.

Both find the candidates of the same SST-2 sentences with the same masked LM and word vectors,
then draw the variants. The per-word reference does what the TinyBERT reference code does: for
every eligible word, one masked-LM forward at batch 1 (full logits, the candidate ranking taken
by sorting the whole vocabulary), and for every multi-piece word a cosine against every vector,
sorted, recomputed each time the word appears. Its candidates are checked equal to ours.

    .venv/bin/python bench/augment_speed.py [--sentences 200] [--mlm DIR]

The last line printed is one JSON object; ``ratio`` = ours ÷ reference sentences per second.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def reference_candidates(augmenter, sentences: list[str]) -> list[dict[int, list[str]]]:
    from tinybert.augment import is_cjk, is_eligible
    mlm, vectors, k = augmenter.mlm, augmenter.vectors, augmenter.config.candidates
    tokenizer, model = mlm.tokenizer, mlm.model
    results = []
    for sentence in sentences:
        words = augmenter.splitter.split(sentence)
        found = {}
        for index, word in enumerate(words):
            if not is_eligible(word, mlm.special_tokens):
                continue
            encoding = tokenizer(words, is_split_into_words=True, truncation=True, max_length=mlm.max_length)
            positions = [p for p, w in enumerate(encoding.word_ids()) if w == index]
            if len(positions) == 1:
                ids = list(encoding["input_ids"])
                ids[positions[0]] = tokenizer.mask_token_id
                with torch.inference_mode():
                    logits = model(input_ids=torch.tensor([ids])).logits[0, positions[0]]
                allowed = mlm.allowed[int(is_cjk(word))]
                order = torch.argsort(logits.masked_fill(~allowed, float("-inf")), descending=True)[:k]
                found[index] = [mlm.vocabulary[i] for i in order.tolist()]
            elif len(positions) > 1:
                row = vectors._lookup(word)
                if row is None:
                    continue
                similarity = (vectors.unit @ vectors.unit[row]).numpy()
                order = np.argsort(-similarity, kind="stable")
                found[index] = vectors._clean(word, order[: 3 * k + 1].tolist(), k)
        results.append({i: c for i, c in found.items() if c})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--data", default=str(SHARED / "datasets" / "sst2" / "train.tsv"))
    parser.add_argument("--mlm", default=str(SHARED / "models" / "minilm-l6-mlm"))
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers.utils import logging as transformers_logging

    from tinybert.augment import AugmentConfig, build_augmenter
    from tinybert.data import read_task_file
    from tinybert.resources import demo_word_vectors
    transformers_logging.set_verbosity_error()

    sentences = [e.text_a for e in read_task_file(args.data).examples[: args.sentences]]
    augmenter = build_augmenter(AugmentConfig(batch_size=args.batch_size), args.mlm, demo_word_vectors())

    def timed(find):
        augmenter.vectors.cache.clear()
        start = time.perf_counter()
        candidates = find()
        for index, found in enumerate(candidates):
            augmenter.variants(augmenter.splitter.split(sentences[index]), found, random.Random(index))
        return candidates, time.perf_counter() - start

    augmenter.word_candidates(sentences[:8])  # warm-up for both
    ours, ours_seconds = timed(lambda: [c for _, c in augmenter.word_candidates(sentences)])
    reference, reference_seconds = timed(lambda: reference_candidates(augmenter, sentences))
    words = sum(len(found) for found in ours)
    agree = sum(a == b for a, b in zip(ours, reference))
    print(json.dumps({
        "benchmark": "augmentation candidates + variants, SST-2 train sentences",
        "sentences": len(sentences), "words_with_candidates": words, "mlm": args.mlm,
        "sentences_identical_candidates": agree,
        "ours_sentences_per_s": len(sentences) / ours_seconds,
        "reference_sentences_per_s": len(sentences) / reference_seconds,
        "ratio": reference_seconds / ours_seconds,
    }))


if __name__ == "__main__":
    main()
