"""The static-embedding student on SST-2, beside the teacher and a 3-layer student.

The MiniLM teacher fine-tuned on SST-2's first 8,000 training rows (as ``small_students.py``
makes it, in the same --work folder) is distilled into a static student (``--student static``) on
those rows, with rows 8,001–40,000 given as ``--unlabeled`` text, once per start of its token
vectors (``--static-init``: the teacher's encoder as model2vec makes them, its input embeddings,
random). The teacher, each static student and the 3-layer student of ``small_students.py``
(``--init-from-teacher --layers 3``, both stages) are then measured with `tinybert evaluate` on
SST-2 dev, in one process: dev accuracy and batch-32 CPU throughput.

    .venv/bin/python bench/static_student.py [--work runs/bench-small-students] [--inits encoder,embeddings,random]

Finished trainings are reused from --work. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from small_students import SST2, distilled_student, fine_tuned_teacher  # noqa: E402

from tinybert.data import DataOptions  # noqa: E402
from tinybert.distillation.task import DistillConfig, distill  # noqa: E402
from tinybert.evaluation.measure import evaluate  # noqa: E402
from tinybert.models.pruning import PruningOptions  # noqa: E402
from tinybert.models.static import StaticOptions  # noqa: E402

UNLABELLED_ROWS = (8000, 40000)  # rows 8,001–40,000 of SST-2's training file


def unlabelled_file(work: Path) -> Path:
    """SST-2's training rows 8,001–40,000 (with the header; their labels are not read)."""
    path = work / "sst2_unlabelled.tsv"
    if not path.is_file():
        lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        path.write_text(lines[0] + "".join(lines[1 + UNLABELLED_ROWS[0]:1 + UNLABELLED_ROWS[1]]), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/bench-small-students")
    parser.add_argument("--inits", default="encoder,embeddings,random")
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=3, help="epochs of the static student (stage 2's default)")
    parser.add_argument("--lr", type=float, default=StaticOptions().static_lr,
                        help="learning rate of the static student (--static-lr's default)")
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    options = DataOptions(max_examples=args.rows, cache_dir=str(work / "caches"))
    teacher = fine_tuned_teacher(work, options, 3, args.max_length)
    models = {"teacher": teacher, "3-layer student": distilled_student(work, "copy", teacher, options, 3,
                                                                       args.max_length)}
    seconds = {}
    for init in args.inits.split(","):
        config = DistillConfig.for_stage("prediction")
        config.training.epochs = args.epochs
        config.max_length = args.max_length
        config.static = StaticOptions(static_dims=args.dims, static_init=init, static_lr=args.lr)
        config.pruning = PruningOptions(prune_vocab=True)
        output = work / f"static-{init}-{args.dims}d-{args.epochs:g}ep-lr{args.lr:g}"  # one folder per setting
        start = time.perf_counter()
        distill(teacher, "static", SST2 / "train.tsv", output, eval_path=SST2 / "dev.tsv", config=config,
                data_options=options, unlabeled=[unlabelled_file(work)])
        seconds[f"static ({init})"] = time.perf_counter() - start
        models[f"static ({init})"] = output
    figures = {name: evaluate(directory, SST2 / "dev.tsv", max_length=args.max_length, show_progress=False)
               for name, directory in models.items()}
    teacher_speed = figures["teacher"]["examples_per_s_batch32"]
    summary = {"dims": args.dims, "epochs": args.epochs, "lr": args.lr, "seconds": seconds}
    for name, measured in figures.items():
        summary[name] = {"accuracy": measured["accuracy"], "params": measured["params"],
                         "size_mb": measured["size_mb"], "examples_per_s_batch32": measured["examples_per_s_batch32"],
                         "latency_ms_batch1": measured["latency_ms_batch1"],
                         "throughput_ratio": measured["examples_per_s_batch32"] / teacher_speed}
        print(f"{name:>20}: dev accuracy {measured['accuracy']:.4f}, {measured['examples_per_s_batch32']:,.0f} "
              f"texts/s at batch 32 ({summary[name]['throughput_ratio']:.1f}× the teacher's), "
              f"{measured['latency_ms_batch1']:.3f} ms at batch 1", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
