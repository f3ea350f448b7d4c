"""Augmentation speed: tinybert's batched candidates vs. the reference code's per-word way.

Ours is ``Augmenter.word_candidates`` as ``tinybert augment`` runs it (on CPU its masked LM
runs in onnxruntime; ``--mlm-runtime torch`` measures the PyTorch path).

Both find the candidates of the same SST-2 sentences with the same masked LM and word vectors,
then draw the variants. The per-word reference does what the TinyBERT reference code does: for
every eligible word, one masked-LM forward at batch 1 (full logits, the candidate ranking taken
by sorting the whole vocabulary), and for every multi-piece word a cosine against every vector,
sorted, recomputed each time the word appears. Its candidates are checked equal to ours.

Equal candidates need the same arithmetic: every masked copy goes through the whole encoder, so
our time cannot fall below (floating-point operations of our copies) ÷ (this CPU's fp32 matrix
multiply rate). The script counts those operations, measures the rate of PyTorch's and
onnxruntime's matrix multiply at the model's shapes, and reports the ratio that such a
perfectly efficient batched run would reach (``ratio_ceiling``).

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
                    logits = model(input_ids=torch.tensor([ids], device=mlm.device)).logits[0, positions[0]]
                allowed = mlm.allowed[int(is_cjk(word))]
                order = torch.argsort(logits.masked_fill(~allowed, float("-inf")), descending=True)[:k]
                found[index] = [mlm.vocabulary[i] for i in order.tolist()]
            elif len(positions) > 1:
                row = vectors._lookup(word)
                if row is None:
                    continue
                similarity = (vectors.unit @ vectors.unit[row]).cpu().numpy()
                order = np.argsort(-similarity, kind="stable")
                found[index] = vectors._clean(word, order[: 3 * k + 1].tolist(), k)
        results.append({i: c for i, c in found.items() if c})
    return results


def encoder_flop(config, copies) -> float:
    """Multiply-add FLOPs of one masked-LM pass per copy: every layer at every position, the
    masked-LM head at the masked position only (as tinybert computes it)."""
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    flop = 0.0
    for ids, _, _ in copies:
        length = len(ids)
        per_layer = length * (4 * hidden * hidden + 2 * hidden * inner) + 2 * length * length * hidden
        flop += 2 * (layers * per_layer + hidden * hidden + hidden * config.vocab_size)
    return flop


def matmul_rate(rows: int, inner: int, outer: int) -> dict[str, float]:
    """GFLOP/s of an fp32 [rows, inner] x [inner, outer] product in PyTorch and in onnxruntime."""
    from onnx import TensorProto, helper, numpy_helper

    from tinybert.inference.runners import cpu_session

    x = torch.randn(rows, inner)
    weight = torch.randn(inner, outer)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, inner])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, outer])],
                              [numpy_helper.from_array(weight.numpy(), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = cpu_session(model.SerializeToString())
    feeds = {"x": x.numpy()}

    def rate(multiply, repeats=30):
        for _ in range(3):
            multiply()
        start = time.perf_counter()
        for _ in range(repeats):
            multiply()
        return 2 * rows * inner * outer * repeats / (time.perf_counter() - start) / 1e9

    return {"torch": rate(lambda: x @ weight), "onnxruntime": rate(lambda: session.run(None, feeds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--data", default=str(SHARED / "datasets" / "sst2" / "train.tsv"))
    parser.add_argument("--mlm", default=str(SHARED / "models" / "minilm-l6-mlm"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mlm-runtime", default="auto", choices=("auto", "torch", "onnxruntime"))
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers.utils import logging as transformers_logging

    from tinybert.augment import AugmentConfig, build_augmenter
    from tinybert.data import read_task_file
    from tinybert.resources import demo_word_vectors
    transformers_logging.set_verbosity_error()

    sentences = [e.text_a for e in read_task_file(args.data).examples[: args.sentences]]
    config = AugmentConfig(batch_size=args.batch_size, mlm_runtime=args.mlm_runtime)
    augmenter = build_augmenter(config, args.mlm, demo_word_vectors())

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
    copies, _, _ = augmenter.masked_copies([augmenter.splitter.split(s) for s in sentences])
    model_config = augmenter.mlm.model.config
    gflop = encoder_flop(model_config, copies) / 1e9
    mean_length = sum(len(ids) for ids, _, _ in copies) / len(copies)
    rates = matmul_rate(int(args.batch_size * mean_length), model_config.hidden_size, model_config.intermediate_size)
    agree = sum(a == b for a, b in zip(ours, reference))
    print(json.dumps({
        "benchmark": "augmentation candidates + variants, SST-2 train sentences",
        "sentences": len(sentences), "words_with_candidates": words, "mlm": args.mlm,
        "mlm_runtime": "onnxruntime" if augmenter.mlm.session is not None else "torch",
        "sentences_identical_candidates": agree,
        "ours_sentences_per_s": len(sentences) / ours_seconds,
        "reference_sentences_per_s": len(sentences) / reference_seconds,
        "masked_copies": len(copies), "ours_gflop": gflop, "ours_gflop_per_s": gflop / ours_seconds,
        "matmul_gflop_per_s": rates,
        "ratio_ceiling": reference_seconds / (gflop / max(rates.values())),
        "ratio": reference_seconds / ours_seconds,
    }))


if __name__ == "__main__":
    main()
