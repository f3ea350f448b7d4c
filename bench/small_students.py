"""Small students on SST-2 (or another task): pruned from the fine-tuned teacher, the same shape from random weights,
and today's copy of the teacher's width, through both stages on one budget.

The MiniLM demo teacher is fine-tuned on the first 8,000 SST-2 training rows (`tinybert
finetune`'s defaults, max length 64, 3 epochs); then each student gets stage 1 and stage 2 (3
epochs each on those rows) and is measured with `tinybert evaluate` on SST-2 dev beside the
teacher, in one process:

- ``pruned``: ``--init-from-teacher --layers 3 --hidden-size 192 --heads 6 --intermediate-size 768
  --prune-vocab`` (the default score loss, units ranked by gradients, the default);
- ``pruned-activations``: the same, units ranked by activations (``--prune-by activations``);
- ``random``: the 3 × 192 shape from random weights (``--student sizes.json --attention-loss
  relations``: its heads have no teacher counterpart);
- ``copy``: ``--init-from-teacher --layers 3`` (the teacher's 384 width).

    .venv/bin/python bench/small_students.py [--work runs/bench-small-students] [--students pruned,random,copy]

``--data ../shared/datasets/trec --work runs/bench-trec`` runs the same on TREC (5,452 questions
in 6 classes, measured on its test set: it has no dev set), or on any folder of single texts.
``--set stage1.KEY=VALUE`` (or ``stage2.``) changes a setting of that stage for every listed
student, KEY as in a pipeline config's stage section (``lr``, ``seed``, ``temperature``,
``prune_vocab``, ``pruned_lr_scale``...); the student then trains in a folder of its own
(``pruned+stage1.lr=1e-4``). The pruned students train at ``pruned_lr_scale`` (default 2) times
each stage's ``lr``; a --work folder from before that default holds them at the paper's rates under
the same names: give another folder.
Finished stages are reused from --work (delete it to train again; the measurements are taken anew
on every run). Per student it prints the parameter ratio, batch-32 CPU throughput ratio and
batch-1 speed-up against the teacher (`tinybert evaluate`'s figures, the teacher and every student
evaluated in turns, --rounds times: the median of the rounds' ratios), and the retention of its dev
accuracy (for a student with a pruned vocabulary also what its tokenization costs, under
"tokenization": see `tokenization_cost`); the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from tinybert.data import DataOptions  # noqa: E402
from tinybert.distillation.distillers import IntermediateLosses  # noqa: E402
from tinybert.distillation.task import DistillConfig, distill  # noqa: E402
from tinybert.evaluation.measure import evaluate  # noqa: E402
from tinybert.finetune import FinetuneConfig, finetune  # noqa: E402
from tinybert.models.pruning import PruningOptions  # noqa: E402
from tinybert.resources import demo_teacher_dir  # noqa: E402
from tinybert.settings import convert, settings_of, with_values  # noqa: E402

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "sst2"
SHAPE = {"num_hidden_layers": 3, "hidden_size": 192, "intermediate_size": 768, "num_attention_heads": 6}
PRUNED = PruningOptions(hidden_size=192, heads=6, intermediate_size=768, prune_vocab=True)
STUDENTS = {
    "pruned": dict(init_from_teacher=True, layers=3, pruning=PRUNED),
    "pruned-activations": dict(init_from_teacher=True, layers=3,
                               pruning=PruningOptions(**{**PRUNED.__dict__, "prune_by": "activations"})),
    "random": dict(layers=3, losses=IntermediateLosses(attention_loss="relations")),
    "copy": dict(init_from_teacher=True, layers=3),
}


def held_out_file(data: Path) -> Path:
    """The file a data folder's models are measured on: its dev.tsv, else its test.tsv (TREC has no dev)."""
    return data / "dev.tsv" if (data / "dev.tsv").exists() else data / "test.tsv"


def fine_tuned_teacher(work: Path, data: Path, options: DataOptions, epochs: float, max_length: int) -> Path:
    """The MiniLM teacher fine-tuned on the first training rows (`tinybert finetune`'s defaults otherwise)."""
    teacher = work / "teacher"
    recipe = FinetuneConfig(max_length=max_length)
    recipe.training.epochs = epochs
    finetune(demo_teacher_dir(), data / "train.tsv", teacher, eval_path=held_out_file(data), data_options=options,
             config=recipe)
    return teacher


def _changed(config: DistillConfig, assignment: str) -> DistillConfig:
    """A copy of ``config`` with ``KEY=VALUE`` applied: KEY as in a pipeline config's stage section
    (``lr``, ``seed``, ``temperature``, ``attention_loss``, ``prune_vocab``...), VALUE read as YAML."""
    key, _, text = assignment.partition("=")
    setting = {setting.key: setting for setting in settings_of(DistillConfig)}.get(key)
    if setting is None or not text:
        raise SystemExit(f"--set: {assignment!r} is not KEY=VALUE with KEY a distillation setting")
    try:
        return with_values(config, {key: convert(setting, yaml.safe_load(text))})
    except ValueError as error:
        raise SystemExit(f"--set {assignment}: {key} {error}") from None


def distilled_student(work: Path, name: str, teacher: Path, data: Path, options: DataOptions, epochs: float,
                      max_length: int, changes: list[str] = ()) -> Path:
    """Student ``name`` of ``STUDENTS`` through both stages, with ``changes`` (``stage1.KEY=VALUE``,
    ``stage2.KEY=VALUE``) applied last; finished stages are reused."""
    settings = dict(STUDENTS[name])
    shape_file = work / "sizes.json"
    shape_file.write_text(json.dumps(SHAPE))
    student = str(shape_file) if name == "random" else "x"
    first, second = DistillConfig.for_stage("intermediate"), DistillConfig.for_stage("prediction")
    for config in (first, second):
        config.training.epochs = epochs
        config.max_length = max_length
    for key, value in settings.items():
        setattr(first, key, value)
    for change in changes:
        stage, _, assignment = change.partition(".")
        if stage == "stage1":
            first = _changed(first, assignment)
        elif stage == "stage2":
            second = _changed(second, assignment)
        else:
            raise SystemExit(f"--set {change}: give stage1.KEY=VALUE or stage2.KEY=VALUE")
    folder = work / "+".join([name, *changes])  # a variant never reuses another's stages
    stage1, stage2 = folder / "stage1", folder / "stage2"
    distill(teacher, student, data / "train.tsv", stage1, config=first, data_options=options)
    distill(teacher, str(stage1), data / "train.tsv", stage2, eval_path=held_out_file(data), config=second,
            data_options=options)
    return stage2


def _accuracy(model_dir: Path, token_rows: list[list[int]], labels: np.ndarray) -> np.ndarray:
    """Whether ``model_dir`` gets each row of token ids right (batches of 64, padded with 0)."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    right = []
    with torch.inference_mode():
        for start in range(0, len(token_rows), 64):
            chunk = token_rows[start:start + 64]
            ids = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
            for row, tokens in enumerate(chunk):
                ids[row, :len(tokens)] = torch.tensor(tokens)
            predicted = model(input_ids=ids, attention_mask=(ids != 0).long()).logits.argmax(-1).numpy()
            right.append(predicted == labels[start:start + 64])
    return np.concatenate(right)


def tokenization_cost(teacher: Path, student: Path, held_out: Path, max_length: int) -> dict:
    """What a pruned vocabulary costs on the held-out file (a ``sentence`` column): the share of texts the student's tokenizer cuts
    otherwise than the teacher's, the teacher's accuracy reading its own pieces and the student's,
    and the student's retention on the texts both cut alike and on the others (None for a share
    with no text, or none the teacher gets right)."""
    with open(held_out, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    label_ids = AutoConfig.from_pretrained(teacher).label2id
    texts, labels = [row["sentence"] for row in rows], np.array([label_ids[row["label"]] for row in rows])
    teacher_tokenizer, student_tokenizer = AutoTokenizer.from_pretrained(teacher), AutoTokenizer.from_pretrained(student)
    as_teacher = teacher_tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    as_student = student_tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    pieces_for_teacher = [teacher_tokenizer.convert_tokens_to_ids(student_tokenizer.convert_ids_to_tokens(ids))
                          for ids in as_student]
    alike = np.array([a == b for a, b in zip(as_teacher, pieces_for_teacher)])
    teacher_right, student_right = _accuracy(teacher, as_teacher, labels), _accuracy(student, as_student, labels)

    def retention(texts: np.ndarray) -> float | None:
        return float(student_right[texts].sum() / teacher_right[texts].sum()) if teacher_right[texts].any() else None

    return {"retokenized_share": float(1 - alike.mean()), "teacher_accuracy": float(teacher_right.mean()),
            "teacher_accuracy_on_student_pieces": float(_accuracy(teacher, pieces_for_teacher, labels).mean()),
            "retention_texts_cut_alike": retention(alike), "retention_texts_cut_otherwise": retention(~alike)}


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/bench-small-students")
    parser.add_argument("--students", default="pruned,random,copy", help=f"of {', '.join(STUDENTS)}")
    parser.add_argument("--data", default=str(SST2),
                        help="a folder with train.tsv and dev.tsv (else test.tsv), GLUE-style single texts with a "
                             "sentence column: SST-2 by default, ../shared/datasets/trec for a second task")
    parser.add_argument("--rows", type=int, default=8000, help="training rows (from the first)")
    parser.add_argument("--epochs", type=float, default=3.0, help="epochs of the teacher and of each stage")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="turns of evaluating the teacher and every student")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="a distillation setting of every listed student, e.g. stage1.lr=1e-4 or stage2.seed=1 "
                             "(KEY as in a pipeline config; repeatable; the student trains in its own folder)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    options = DataOptions(max_examples=args.rows, cache_dir=str(work / "caches"))
    seconds = {}
    start = time.perf_counter()
    data = Path(args.data)
    teacher = fine_tuned_teacher(work, data, options, args.epochs, args.max_length)
    seconds["teacher"] = time.perf_counter() - start
    students = {}
    for name in args.students.split(","):
        start = time.perf_counter()
        students[name] = distilled_student(work, name, teacher, data, options, args.epochs, args.max_length, args.set)
        seconds[name] = time.perf_counter() - start
    # every model evaluated in one process, in turns: each round measures the teacher and then every
    # student, and a ratio is the median of the rounds' ratios (a 2-core laptop's speed drifts by a
    # fifth over minutes, so figures taken minutes apart do not compare)
    dev = held_out_file(data)
    rounds = [{name: evaluate(directory, dev, max_length=args.max_length, show_progress=False)
               for name, directory in {"teacher": teacher, **students}.items()} for _ in range(args.rounds)]
    first = rounds[0]["teacher"]
    summary = {"teacher": {**{key: first[key] for key in ("accuracy", "params")},
                           **{key: statistics.median(round_["teacher"][key] for round_ in rounds)
                              for key in ("latency_ms_batch1", "examples_per_s_batch32")}},
               "data": str(data), "rows": args.rows, "epochs": args.epochs, "max_length": args.max_length, "rounds": args.rounds,
               "set": args.set, "seconds": seconds}
    for name in students:
        measured = rounds[0][name]

        def ratio(figure: str, faster_is_higher: bool) -> float:
            ratios = [round_[name][figure] / round_["teacher"][figure] for round_ in rounds]
            return statistics.median(ratios if faster_is_higher else [1 / value for value in ratios])

        summary[name] = {"accuracy": measured["accuracy"], "params": measured["params"],
                         "params_ratio": first["params"] / measured["params"],
                         "throughput_ratio": ratio("examples_per_s_batch32", True),
                         "speedup_batch1": ratio("latency_ms_batch1", False),
                         "retention": measured["accuracy"] / first["accuracy"]}
        print(f"{name:>18}: accuracy {measured['accuracy']:.4f} (retention {summary[name]['retention']:.1%}), "
              f"{summary[name]['params_ratio']:.1f}× fewer parameters, {summary[name]['throughput_ratio']:.1f}× "
              f"batch-32 throughput, {summary[name]['speedup_batch1']:.1f}× faster at batch 1", file=sys.stderr)
        vocabularies = [json.loads((path / "config.json").read_text())["vocab_size"] for path in (teacher, students[name])]
        if vocabularies[0] != vocabularies[1]:  # a pruned vocabulary
            cost = summary[name]["tokenization"] = tokenization_cost(teacher, students[name], dev, args.max_length)
            print(f"{'':>20}its tokenizer cuts {cost['retokenized_share']:.1%} of the dev texts otherwise; the "
                  f"teacher reading its pieces: {cost['teacher_accuracy_on_student_pieces']:.4f} (its own: "
                  f"{cost['teacher_accuracy']:.4f}); its retention on texts cut alike "
                  f"{_share(cost['retention_texts_cut_alike'])}, on the others "
                  f"{_share(cost['retention_texts_cut_otherwise'])}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
