"""The GPU figures (issues 15 and 22), one group per call, one JSON line per figure (``bench/gpu.sh`` runs
them all). Models are random-init of real shapes (speed does not depend on weights): a
BERT-base-shape teacher (12 × 768) with a 2-class head, the `tinybert-4l-312` student, a
MiniLM-shape masked LM; the tokenizer is the demo teacher's (BERT's uncased vocabulary).

"Ours" is the library's own path (``distill`` / ``general_distill`` with their training loop),
timed between two device synchronisations after warm-up steps; the reference-style variants
are in ``reference_style.py``. MFU counts the FLOPs of the shapes (teacher forward, student
forward and backward, projections, attention products) against a dense bf16 peak.

    python bench/gpu_figures.py prepare --work W --data D   # models and data into W
    python bench/gpu_figures.py intermediate|prediction|general|profile|augment --work W

It runs on a CPU too (use --tiny to make the models small, for a check of the script).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
REPO = BENCH.parent
SHARED = REPO.parent / "shared"
PEAK_BF16 = 989e12  # H100 SXM dense bf16 tensor-core peak (FLOP/s), the MFU denominator (H200: the same)
# compiled runs warm up over the first megabatch of length-sorted batches, which holds every length bucket
COMPILED_WARMUP = 60
TEACHER = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
MLM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
TINY = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 12, "intermediate_size": 96}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def prepare(work: Path, data: Path, tiny: bool) -> None:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(data / "tokenizer")
    torch.manual_seed(0)
    labels = {"num_labels": 2, "id2label": {0: "0", 1: "1"}, "label2id": {"0": 0, "1": 1}}
    BertForSequenceClassification(BertConfig(**(TINY if tiny else TEACHER), **labels)).save_pretrained(work / "teacher")
    tokenizer.save_pretrained(work / "teacher")
    BertForMaskedLM(BertConfig(**(TINY if tiny else MLM))).save_pretrained(work / "mlm")
    tokenizer.save_pretrained(work / "mlm")
    student = {"num_hidden_layers": 2, "hidden_size": 24, "intermediate_size": 48, "num_attention_heads": 12} \
        if tiny else {"num_hidden_layers": 4, "hidden_size": 312, "intermediate_size": 1200, "num_attention_heads": 12}
    (work / "student.json").write_text(json.dumps(student))
    for name in ("sst2_train.tsv", "corpus.txt", "vectors.bin"):
        shutil.copy(data / name, work / name)
    emit({"prepared": str(work), "tiny": tiny})


def layer_flops(config, tokens_per_example: float) -> float:
    """Forward FLOPs of one token through one layer: the four projections, the FFN, and the two
    attention products over ``tokens_per_example`` keys."""
    d, ff = config.hidden_size, config.intermediate_size
    return 2 * (4 * d * d + 2 * d * ff) + 4 * tokens_per_example * d


def step_flops(teacher, student, batch_size: int, length: int, projections: bool) -> float:
    tokens = batch_size * length
    flops = tokens * teacher.num_hidden_layers * layer_flops(teacher, length)
    flops += 3 * tokens * student.num_hidden_layers * layer_flops(student, length)  # forward + backward
    if projections:
        flops += 3 * tokens * (student.num_hidden_layers + 1) * 2 * student.hidden_size * teacher.hidden_size
    return flops


class StepTimer:
    """Wraps a training loop's compute_losses: times steps warmup+1 … warmup+steps between two
    device synchronisations, and adds up their examples, real tokens and FLOPs from the shapes."""

    def __init__(self, warmup: int, steps: int, flops_of=None):
        self.warmup, self.steps, self.flops_of = warmup, steps, flops_of
        self.seen = self.examples = self.flops = 0
        self.tokens = 0
        self.start = self.seconds = None

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def wrap(self, compute):
        def timed(module, batch):
            self.seen += 1
            if self.seen == self.warmup + 1:
                self._sync()
                self.start = time.perf_counter()
            if self.seen == self.warmup + self.steps + 1:
                self._sync()
                self.seconds = time.perf_counter() - self.start
            if self.warmup < self.seen <= self.warmup + self.steps:
                ids = batch["input_ids"]
                self.examples += ids.shape[0]
                self.tokens = self.tokens + batch["attention_mask"].sum()  # stays on the device: no wait
                if self.flops_of:
                    self.flops += self.flops_of(ids.shape[0], ids.shape[1])
            return compute(module, batch)
        return timed

    def record(self) -> dict:
        result = {"examples_per_s": self.examples / self.seconds, "steps_per_s": self.steps / self.seconds,
                  "tokens_per_s": float(self.tokens) / self.seconds}
        if self.flops:
            result["tflop_per_s"] = self.flops / self.seconds / 1e12
            result["mfu_vs_bf16_peak"] = self.flops / self.seconds / PEAK_BF16
        return result


def _timed_run(module, function, timer: StepTimer, *args, **kwargs):
    """Calls a library function whose training loop is ``module.run_training``, timed."""
    real = module.run_training

    def run_training(**options):
        return real(**{**options, "compute_losses": timer.wrap(options["compute_losses"])})
    module.run_training = run_training
    try:
        function(*args, **kwargs)
    finally:
        module.run_training = real
    return timer.record()


def ours_stage(work: Path, stage: str, batch_size: int, precision: str, steps: int, warmup: int,
               compile_models: bool = False) -> dict:
    """Task distillation through ``distill``; compiled, the warm-up also takes the first batches of
    both length buckets (64 and 32 tokens), so that no compiling falls in the timed steps."""
    if compile_models:
        warmup = max(warmup, COMPILED_WARMUP)
    import tinybert.distillation.task as distill_module
    from transformers import AutoConfig
    from tinybert.data import DataOptions
    from tinybert.distillation.task import DistillConfig
    from tinybert.training import TrainingConfig
    rows = sum(1 for _ in open(work / "sst2_train.tsv")) - 1
    training = TrainingConfig(epochs=(warmup + steps + 2) * batch_size / rows, batch_size=batch_size,
                              learning_rate=5e-5, schedule="constant", warmup_ratio=0.0, mixed_precision=precision,
                              checkpoint_every=10**9, log_every=10**9,
                              compile="always" if compile_models else "never")
    # stage 2 starts from a stage-1 output when the intermediate group made one
    stage1 = work / "stage1_student"
    student = str(stage1) if stage == "prediction" and stage1.is_dir() else str(work / "student.json")
    teacher_config = AutoConfig.from_pretrained(work / "teacher")
    student_config = AutoConfig.for_model("bert", **json.loads((work / "student.json").read_text()))
    timer = StepTimer(warmup, steps, lambda b, l: step_flops(teacher_config, student_config, b, l,
                                                             stage == "intermediate"))
    output = work / f"out_{stage}_{batch_size}_{precision}_{compile_models}"
    shutil.rmtree(output, ignore_errors=True)
    record = _timed_run(distill_module, distill_module.distill, timer, work / "teacher", student,
                        work / "sst2_train.tsv", output, show_progress=False,
                        config=DistillConfig(stage=stage, training=training, max_length=64),
                        data_options=DataOptions(cache_dir=str(work / "cache")))
    if stage == "intermediate" and not (work / "stage1_student").exists():
        shutil.copytree(output, work / "stage1_student", ignore=shutil.ignore_patterns("token_cache"))
    return record


def reference_stage(work: Path, stage: str, batch_size: int, steps: int, warmup: int) -> dict:
    from reference_style import prepare_models, reference_loader, reference_step
    from tinybert.data import DataOptions, LabelSpace, task_cache
    from tinybert.models.loading import load_classifier, load_tokenizer
    from tinybert.models.students import build_student, uniform_layer_map
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(work / "teacher")
    space = LabelSpace("classification", ["0", "1"])
    dataset = task_cache(work / "sst2_train.tsv", tokenizer, 128, DataOptions(cache_dir=str(work / "cache")),
                         show_progress=False).labelled(space)
    teacher = load_classifier(work / "teacher").to(device)
    torch.manual_seed(0)
    student = build_student(str(work / "student.json"), teacher, space).to(device)
    projection = prepare_models(teacher, student).to(device)
    layer_map = uniform_layer_map(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    parameters = list(student.parameters()) + list(projection.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=5e-5, foreach=False)  # a per-parameter loop, as BertAdam
    loader = iter(reference_loader(dataset, tokenizer, batch_size))
    timer = StepTimer(warmup, steps, lambda b, l: step_flops(teacher.config, student.config, b, l,
                                                             stage == "intermediate"))

    def compute(_module, batch):
        loss = reference_step(stage, teacher, student, projection, layer_map, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss.item()  # the reference logs every step's loss
        return loss
    step = timer.wrap(compute)
    for _ in range(warmup + steps + 1):
        batch = {k: v.to(device) for k, v in next(loader).items()}
        step(None, batch)
    return timer.record()


def ours_general(work: Path, batch_size: int, precision: str, steps: int, warmup: int,
                 compile_models: bool = False) -> dict:
    if compile_models:
        warmup = max(warmup, COMPILED_WARMUP)
    import tinybert.distillation.general as general_module
    from transformers import AutoConfig
    from tinybert.distillation.general import GeneralConfig
    from tinybert.training import TrainingConfig
    training = TrainingConfig(epochs=100, batch_size=batch_size, learning_rate=1e-4, mixed_precision=precision,
                              checkpoint_every=10**9, log_every=10**9, compile="always" if compile_models else "never",
                              max_steps=warmup + steps + 1)
    teacher_config = AutoConfig.from_pretrained(work / "teacher")
    student_config = AutoConfig.for_model("bert", **json.loads((work / "student.json").read_text()))
    timer = StepTimer(warmup, steps, lambda b, l: step_flops(teacher_config, student_config, b, l, True))
    output = work / f"out_general_{precision}_{compile_models}"
    shutil.rmtree(output, ignore_errors=True)
    return _timed_run(general_module, general_module.general_distill, timer, work / "teacher", [work / "corpus.txt"],
                      output, student=str(work / "student.json"), show_progress=False,
                      config=GeneralConfig(training=training, max_length=128))


def profile_general(work: Path, batch_size: int, output: Path, steps: int = 2) -> dict:
    """One general-distillation step (the BERT-base-shape teacher → 4L-312, length 128, bf16, as
    the training loop runs it: the teacher cast to bf16, autocast, the fused AdamW) under
    torch.profiler; the kernels by total device time go to ``output`` (a text table)."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModel
    from tinybert.distillation.distillers import IntermediateDistiller, IntermediateLosses
    from tinybert.models.students import build_student, uniform_layer_map
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = AutoModel.from_pretrained(work / "teacher").to(device, dtype=torch.bfloat16)
    torch.manual_seed(0)
    student = build_student(str(work / "student.json"), teacher, None).to(device)
    distiller = IntermediateDistiller(student, teacher, uniform_layer_map(student.config.num_hidden_layers,
                                                                          teacher.config.num_hidden_layers),
                                      IntermediateLosses()).to(device).train()
    optimizer = torch.optim.AdamW(distiller.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(1000, 20000, (batch_size, 128), device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = distiller(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(3):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    averages = profiler.key_averages()
    output.write_text(averages.table(sort_by=sort, row_limit=40))
    attribute = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    top = sorted(averages, key=lambda event: getattr(event, attribute, 0), reverse=True)[:10]
    return {"steps": steps, "table": str(output),
            "top_ms_per_step": {event.key[:80]: getattr(event, attribute, 0) / 1000 / steps for event in top}}


def augment_figures(work: Path, sentences: int) -> dict:
    from augment_speed import reference_candidates
    from tinybert.augment import AugmentConfig, build_augmenter
    from tinybert.data import read_task_file
    texts = [e.text_a for e in read_task_file(work / "sst2_train.tsv").examples[:sentences]]
    augmenter = build_augmenter(AugmentConfig(batch_size=512, mlm_runtime="torch"), work / "mlm", work / "vectors.bin")

    def timed(find):
        augmenter.vectors.cache.clear()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        found = find()
        for index, candidates in enumerate(found):
            augmenter.variants(augmenter.splitter.split(texts[index]), candidates, random.Random(index))
        return found, time.perf_counter() - start

    augmenter.word_candidates(texts[:16])  # warm-up
    ours, ours_seconds = timed(lambda: [c for _, c in augmenter.word_candidates(texts)])
    reference, reference_seconds = timed(lambda: reference_candidates(augmenter, texts))
    return {"sentences": len(texts), "ours_sentences_per_s": len(texts) / ours_seconds,
            "reference_sentences_per_s": len(texts) / reference_seconds,
            "identical_candidates": sum(a == b for a, b in zip(ours, reference)), "ratio": reference_seconds / ours_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("group", choices=("prepare", "general", "intermediate", "prediction", "augment", "profile"))
    parser.add_argument("--work", required=True)
    parser.add_argument("--data", default=None, help="folder with sst2_train.tsv, corpus.txt, vectors.bin, tokenizer/")
    parser.add_argument("--tiny", action="store_true", help="small models, for checking the script on a CPU")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--sentences", type=int, default=100)
    parser.add_argument("--output", default=None, help="profile: where the kernel table goes")
    parser.add_argument("--batch-size", type=int, default=256, help="profile: examples per step")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers.utils import logging as transformers_logging
    transformers_logging.set_verbosity_error()
    work = Path(args.work)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if args.group == "prepare":
        prepare(work, Path(args.data), args.tiny)
        return
    common = {"steps": args.steps, "warmup": args.warmup}
    if args.group == "general":
        for precision, compiled in (("bf16", True), ("bf16", False), ("no", True), ("no", False)):
            emit({"figure": "general distillation, length 128, batch 256", "precision": precision,
                  "compiled": compiled, "device": device, **ours_general(work, 256, precision, compile_models=compiled,
                                                                          **common)})
    elif args.group in ("intermediate", "prediction"):
        name = {"intermediate": "stage 1", "prediction": "stage 2"}[args.group]
        emit({"figure": f"{name}, reference style", "batch_size": 32, "precision": "no", "device": device,
              **reference_stage(work, args.group, 32, **common)})
        for batch_size, precision, compiled in ((32, "no", True), (32, "bf16", True), (32, "no", False),
                                                (256, "bf16", True), (256, "no", True)):
            emit({"figure": f"{name}, ours", "batch_size": batch_size, "precision": precision, "compiled": compiled,
                  "device": device, **ours_stage(work, args.group, batch_size, precision, compile_models=compiled,
                                                 **common)})
    elif args.group == "profile":
        emit({"figure": "profile of one general-distillation step, length 128, batch 256, bf16", "device": device,
              **profile_general(work, args.batch_size, Path(args.output or work / "profile.txt"))})
    else:
        emit({"figure": "augmentation K 15 N 20 p 0.4, SST-2 sentences", "device": device,
              **augment_figures(work, args.sentences)})


if __name__ == "__main__":
    main()
