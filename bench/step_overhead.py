"""Host time per training step where the arithmetic is negligible: what dispatching a step costs.

The depths of the GPU figures (a 12-layer teacher, a 4-layer student) at tiny widths (32 and 16,
2 heads) and batch 2 × 16 tokens, so each step's time is the host issuing its operations one by
one (each a kernel launch on a GPU). For stage 1, stage 2 and general distillation, three steps
side by side in one process: plain transformers (the teacher's forward without gradients, the
student's forward with its own loss, backward, AdamW), tinybert eager (the distiller's forward,
backward, AdamW; fused, as the training loop runs it, in all three) and tinybert compiled (the same distiller through torch.compile as training
runs it: ``tinybert.compiling.compile_module``; CUDA graphs on a GPU). Eager is timed before and
after the compiled run, and the faster of the two kept. Compile time is reported apart.

    .venv/bin/python bench/step_overhead.py [--steps 50] [--threads 1]

The last line printed is one JSON object; ``stage1_compiled_over_eager`` and
``stage2_compiled_over_eager`` (and ``general_…``) are tinybert compiled ÷ tinybert eager, in
host ms per step (below 1: compiled is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, BertModel  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from tinybert.compiling import compile_module  # noqa: E402
from tinybert.distillation.distillers import IntermediateDistiller, IntermediateLosses, PredictionDistiller  # noqa: E402
from tinybert.models.students import uniform_layer_map  # noqa: E402

BATCH, LENGTH = 2, 16


def _config(layers: int, width: int) -> BertConfig:
    return BertConfig(vocab_size=1000, hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=2 * width, max_position_embeddings=64, num_labels=2)


def _models(task: bool, device):
    """Teacher and student: classifiers for task distillation, bare encoders for general."""
    torch.manual_seed(0)
    make = BertForSequenceClassification if task else BertModel
    return make(_config(12, 32)).to(device).eval(), make(_config(4, 16)).to(device).train()


def _batch(device) -> dict:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (BATCH, LENGTH), generator=generator)
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    mask[1, LENGTH // 2:] = 0
    batch = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask,
             "labels": torch.tensor([0, 1])}
    return {key: value.to(device) for key, value in batch.items()}


def _synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _ms_per_step(step, steps: int, device) -> float:
    for _ in range(3):  # warm-up (and, compiled, the compiling)
        step()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) * 1000 / steps


def _training_step(forward, parameters):
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, fused=True)  # as tinybert's training loop

    def step():
        forward()["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def measure(stage: str, steps: int, device) -> dict:
    teacher, student = _models(stage != "general", device)
    batch = _batch(device)
    inputs = {key: value for key, value in batch.items() if key != "labels"}

    def plain():
        with torch.no_grad():
            teacher(**inputs)
        if stage == "general":
            return {"loss": student(**inputs).last_hidden_state.square().mean()}
        return {"loss": student(**batch).loss}

    # before the distiller marks the mapped layers (they leave SDPA for tinybert's attention)
    result = {"plain_ms": _ms_per_step(_training_step(plain, list(student.parameters())), steps, device)}
    if stage == "prediction":
        distiller = PredictionDistiller(student, teacher)
    else:
        distiller = IntermediateDistiller(student, teacher, uniform_layer_map(4, 12), IntermediateLosses())
    distiller = distiller.to(device).train()
    compiled = compile_module(distiller, device)
    eager = _training_step(lambda: distiller(batch), list(distiller.parameters()))
    result["eager_ms"] = _ms_per_step(eager, steps, device)
    start = time.perf_counter()
    compiled_step = _training_step(lambda: compiled(batch), list(distiller.parameters()))
    compiled_step()
    _synchronize(device)
    result["compile_s"] = time.perf_counter() - start
    result["compiled_ms"] = _ms_per_step(compiled_step, steps, device)
    result["eager_ms"] = min(result["eager_ms"], _ms_per_step(eager, steps, device))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: host time, not thread hand-offs)")
    parser.add_argument("--stages", nargs="+", default=["intermediate", "prediction", "general"])
    args = parser.parse_args()
    transformers_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    summary = {"benchmark": "host ms per training step, 12-layer teacher → 4-layer student, tiny widths, batch "
                            f"{BATCH} × {LENGTH}", "device": torch.cuda.get_device_name() if device.type == "cuda"
               else "cpu", "threads": args.threads, "steps": args.steps, "torch": torch.__version__}
    names = {"intermediate": "stage1", "prediction": "stage2", "general": "general"}
    for stage in args.stages:
        result = measure(stage, args.steps, device)
        print(json.dumps({"stage": stage, **result}), file=sys.stderr, flush=True)
        name = names[stage]
        summary[name] = result
        summary[f"{name}_compiled_over_eager"] = result["compiled_ms"] / result["eager_ms"]
        summary[f"{name}_eager_over_plain"] = result["eager_ms"] / result["plain_ms"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
