"""The `tinybert` command: a skin over the library. Each command's options are generated from
its arguments dataclass (``FinetuneArguments``, ``DistillArguments``, ...); what is left here
is printing results and the reference code's flags that tinybert reads from the data instead."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .augment import AugmentArguments
from .caches import CacheArguments, format_caches, format_size, remove, remove_unfinished
from .demo import DemoArguments
from .distillation.task import DistillArguments, DistillConfig, plan, task_of
from .data.tasks import detect_task, label_space_of_data, scan_labels
from .errors import InputError
from .evaluation.measure import EvaluateArguments, format_table
from .evaluation.sizes import SizesArguments, format_sizes
from .inference.export import ExportArguments, parity_failures
from .finetune import FinetuneArguments
from .distillation.general import GeneralArguments
from .models.legacy import ConvertArguments
from .pipeline import PipelineArguments, format_config
from .pipeline.run import DATA_SUFFIXES
from .inference.predict import PredictArguments
from .settings import add_arguments, flag_of, given_values, option, settings_of, with_values
from .streams import is_standard_stream


@dataclass
class ReferenceFlags:
    """The reference code's flags that tinybert reads from the data or the model instead."""

    data_dir: str | None = option(None, "folder with train.* and dev.*/eval.* files (instead of --train/--eval)",
                                  flags=("--data_dir",))
    num_labels: int | None = option(None, "checked against the labels found in the data", flags=("--num_labels",))
    task_mode: str | None = option(None, hidden=True, flags=("--task_mode",))
    do_lower_case: bool = option(False, hidden=True, flags=("--do_lower_case",))


@dataclass
class PlanFlags:
    plan: bool = option(False, "print the layer mapping, projections, sizes and expected speed-up, then stop")
    pred_distill: bool = option(False, hidden=True, flags=("--pred_distill",))


# What the reference code's flags without a tinybert setting of their own stand for.
REFERENCE_MEANINGS = {"--pred_distill": "--stage prediction", "--data_dir": "--train DIR/train.* --eval DIR/dev.*",
                      "--num_labels": "nothing (labels are read from the data)",
                      "--task_mode": "nothing (classification or regression is read from the labels)",
                      "--do_lower_case": "nothing (the tokenizer's own setting applies)"}

REFERENCE = ("reference-code flags (accepted for old scripts)", ReferenceFlags)
_DISTILL_DEFAULTS = [DistillArguments(config=DistillConfig.for_stage(stage)) for stage in ("intermediate", "prediction")]

# command → (arguments dataclass, its defaults as --help shows them, extra flag dataclasses, help, description)
COMMANDS = {
    "finetune": (FinetuneArguments, FinetuneArguments(), (REFERENCE,), "fine-tune an encoder as a task teacher",
                 "Fine-tune any local encoder directory as a sequence classifier (or regressor) on labelled data."),
    "evaluate": (EvaluateArguments, EvaluateArguments(), (), "metrics, size and CPU latency of a model", None),
    "distill": (DistillArguments, _DISTILL_DEFAULTS, (("looking before training", PlanFlags), REFERENCE), "task distillation, stage 1 or 2",
                "Distil a fine-tuned teacher into a student: --stage intermediate (embeddings, hidden states, "
                "attention scores), then --stage prediction (logits) from its output."),
    "general": (GeneralArguments, GeneralArguments(), (), "general distillation on plain text",
                "Distil a pretrained encoder (no task head needed) into a general student with attention + hidden "
                "(+ embedding) losses on a streamed plain-text corpus."),
    "augment": (AugmentArguments, AugmentArguments(), (),
                "TinyBERT data augmentation (masked-LM and word-vector replacements)",
                "Write every row of a task file followed by up to N variants in which eligible words are replaced "
                "with probability P by one of K candidates: the masked LM's predictions for single-WordPiece words, "
                "word-vector neighbours for the others. The fork's flag names are accepted: --M is K (candidates), "
                "--N is N (variants)."),
    "convert": (ConvertArguments, ConvertArguments(), (),
                "rewrite a reference-code checkpoint as a plain save_pretrained directory", None),
    "export": (ExportArguments, ExportArguments(), (), "ONNX export (+ int8) with parity checks",
               "Write MODEL as ONNX with dynamic batch and sequence axes (model.onnx, tokenizer and config beside "
               "it), optionally an onnxruntime dynamic int8 copy, and check both against PyTorch."),
    "predict": (PredictArguments, PredictArguments(), (), "labels and probabilities for new text",
                "Predict every row of a text file (one text, or a TSV/CSV/JSONL with a text column; labels not "
                "needed) with a model directory or an exported .onnx file."),
    "sizes": (SizesArguments, SizesArguments(), (), "student shapes for a teacher, timed on this machine",
              "List the shapes a fine-tuned teacher can be pruned to (layers × hidden × heads × FFN, and the vocabulary "
              "of --data), each built with random weights of its real shape and timed here: parameters, MB, batch-1 "
              "latency, batch-32 throughput and the ratios against the teacher; the Pareto set is starred, and "
              "--latency-ms picks the largest shape within a budget (as `distill --init-from-teacher --latency-ms` "
              "does)."),
    "pipeline": (PipelineArguments, PipelineArguments(), (), "every stage from one YAML config",
                 "General distillation (optional), teacher fine-tuning, augmentation, distillation stages 1 and 2, a "
                 "baseline without distillation, evaluation, export and report, each in its own directory of the "
                 "run: finished stages are skipped, an interrupted one resumes. See configs/ for examples."),
    "cache": (CacheArguments, CacheArguments(), (), "list the caches tinybert keeps, or remove them",
              "List the token caches, corpus caches, teacher outputs and converted checkpoints under a folder "
              "(kind, source file, model, size, last use), or remove them, as `huggingface-cli scan-cache` and "
              "`delete-cache` do: `tinybert cache list`, `tinybert cache clean [--older-than DAYS] [--yes]`."),
    "demo": (DemoArguments, DemoArguments(), (), "the whole pipeline on the bundled teacher and review snippets",
             "Fine-tune the bundled MiniLM teacher on Rotten Tomatoes snippets (split by movie), augment, distil, "
             "compare with a student trained without distillation, export to ONNX and write a report."),
}


# command → one typical use, shown by a bare `tinybert` and on the command's reference page
EXAMPLES = {
    "finetune": "tinybert finetune --model my-bert --train data/train.tsv --eval data/dev.tsv --output runs/teacher",
    "evaluate": "tinybert evaluate --model runs/student --data data/test.tsv",
    "sizes": "tinybert sizes --teacher runs/teacher --data data/train.tsv --latency-ms 5",
    "distill": "tinybert distill --stage intermediate --teacher runs/teacher --train data/train_aug.tsv "
               "--output runs/stage1",
    "general": "tinybert general --teacher my-bert --corpus corpus.txt --output runs/general",
    "augment": "tinybert augment --input data/train.tsv --output data/train_aug.tsv --word-vectors glove.6B.300d.txt",
    "convert": "tinybert convert --input TinyBERT_General_4L_312D --output runs/general-4l",
    "export": "tinybert export --model runs/student --output runs/student-onnx --int8 --data data/dev.tsv",
    "predict": "echo 'a gorgeous, witty, seductive movie.' | tinybert predict --model runs/student --input -",
    "pipeline": "tinybert pipeline my-config.yaml",
    "cache": "tinybert cache clean --cache-dir runs/my-run/token_cache --older-than 30 --yes",
    "demo": "tinybert demo --quick",
}
DESCRIPTION = "Compress a fine-tuned BERT-style model into a small TinyBERT student for your own data."
COMPLETION_FLAG = "--print-completion"


def build_parser() -> argparse.ArgumentParser:
    import shtab
    parser = argparse.ArgumentParser(prog="tinybert", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"tinybert {__version__}")
    shtab.add_argument_to(parser, [COMPLETION_FLAG], help="print a bash or zsh completion script")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (kind, defaults, extras, help_text, description) in COMMANDS.items():
        command = commands.add_parser(name, help=help_text, description=description or help_text)
        add_arguments(command, kind, defaults, cases="stage")
        for title, extra in extras:
            add_arguments(command.add_argument_group(title), extra, extra())
        for action in command._actions:  # values that are text are mostly paths: complete them as files
            if getattr(action.type, "__name__", None) in ("str", "list") and not action.choices:
                action.complete = shtab.FILE
    return parser


def overview() -> str:
    """What a bare `tinybert` prints: every command with its use in one line and an example."""
    width = max(map(len, COMMANDS))
    lines = [f"tinybert {__version__}: {DESCRIPTION[0].lower()}{DESCRIPTION[1:]}", "",
             "usage: tinybert COMMAND [OPTIONS]   (tinybert COMMAND --help lists a command's options)", ""]
    for name, (_, _, _, help_text, _) in COMMANDS.items():
        lines += [f"  {name:<{width}}  {help_text}", f"  {'':<{width}}  $ {EXAMPLES[name]}"]
    lines += ["", f"shell completion: tinybert {COMPLETION_FLAG} bash (or zsh)"]
    return "\n".join(lines)


def parse(argv: list[str]):
    """(command, its arguments dataclass, the CLI-only flags) from the command line."""
    namespace = build_parser().parse_args(argv)
    kind, defaults, extras, _, _ = COMMANDS[namespace.command]
    flags = {extra: with_values(extra(), given_values(namespace, settings_of(extra))) for _, extra in extras}
    given = given_values(namespace, settings_of(kind))
    if kind is DistillArguments:
        base = _distill_base(given.get("stage"), flags[PlanFlags].pred_distill)
    else:
        base = defaults
    return namespace.command, with_values(base, given), flags


def _distill_base(stage: str | None, pred_distill: bool) -> DistillArguments:
    """Distillation's defaults depend on the stage (the paper's settings differ)."""
    if pred_distill and stage == "intermediate":
        raise InputError("--pred_distill asks for stage 2 but --stage says intermediate", fix="give one of them")
    stage = stage or ("prediction" if pred_distill else "intermediate")
    return DistillArguments(config=DistillConfig.for_stage(stage))


def _apply_reference_flags(arguments, flags: ReferenceFlags):
    """--data_dir DIR means DIR/train.* for training and DIR/dev.* or DIR/eval.* for evaluation;
    --num_labels is checked against the data."""
    if flags.data_dir:
        folder = Path(flags.data_dir)
        suffixes = DATA_SUFFIXES

        def find(*stems):
            return next((str(folder / f"{stem}{suffix}") for stem in stems for suffix in suffixes
                         if (folder / f"{stem}{suffix}").is_file()), None)
        arguments.train = arguments.train or find("train")
        arguments.eval = arguments.eval or find("dev", "eval")
        if arguments.train is None:
            raise InputError(f"no train file ({', '.join(suffixes)}) in the data folder", path=folder,
                             fix="pass --train FILE, or put the training file in that folder")
    if not arguments.train:
        raise InputError("no training data given", fix="pass --train FILE (or --data_dir DIR)")
    if flags.num_labels:
        kind = detect_task(arguments.train, arguments.data_options)
        space = label_space_of_data(kind, scan_labels(arguments.train, arguments.data_options, kind))
        if space.num_labels != flags.num_labels:
            raise InputError(f"--num_labels {flags.num_labels}, but the data has {space.num_labels} label(s): "
                             f"{', '.join(space.names) or 'scores'}", path=arguments.train,
                             fix="drop --num_labels: tinybert reads the labels from the data")
    return arguments


class ParityError(InputError):
    """An export whose outputs differ from the PyTorch model beyond the tolerance."""

    exit_code = 1

    def __init__(self, problem: str):
        super().__init__(problem, fix="keep using the PyTorch model, and report this with the model's config.json")


def run_command(command: str, arguments, flags: dict) -> None:
    if ReferenceFlags in flags:
        _apply_reference_flags(arguments, flags[ReferenceFlags])
    if command == "distill" and flags[PlanFlags].plan:
        # read as the run reads it: the teacher's task decides what a file of bare words holds
        kind = task_of(arguments.teacher, arguments.train, arguments.data_options)
        labels = scan_labels(arguments.train, arguments.data_options, kind, require_labels=False)
        print(plan(arguments.teacher, arguments.student, labels, arguments.config).describe())
    elif command in ("finetune", "distill"):
        _print_summary(arguments.run(), arguments.output)
    elif command == "general":
        print(f"general student written to {arguments.output} after {arguments.run()['steps']} steps")
    elif command == "augment":
        result = arguments.run()
        to_stdout = is_standard_stream(arguments.output)
        summary = sys.stderr if to_stdout else sys.stdout  # standard output holds the rows
        if result["rows"] is not None:
            print(f"{result['rows']:,} rows → {result['rows'] + result['written']:,} rows "
                  f"({result['written']:,} variants) in {result['seconds']:.1f} s", file=summary)
        if not to_stdout:
            print(f"written to {arguments.output_path}")
    elif command == "evaluate":
        print(format_table(arguments.run()))
    elif command == "sizes":
        print(format_sizes(arguments.run()))
    elif command == "convert":
        print(f"converted model written to {arguments.run()}")
    elif command == "export":
        _report_export(arguments.run(), arguments)
    elif command == "predict":
        count = arguments.run()
        if arguments.output and not is_standard_stream(arguments.output):
            print(f"{count:,} predictions written to {arguments.output}")
    elif command == "cache":
        _cache(arguments)
    elif command == "pipeline" and arguments.show_config:
        print(format_config(arguments.load()))
    elif command == "demo" and arguments.write_data:
        print("\n".join(f"{split}: {path}" for split, path in arguments.run()["data"].items()))
    else:  # pipeline, demo
        _print_run(arguments.run())


def _cache(arguments: CacheArguments) -> None:
    """Lists the caches; or shows those to remove, asks (unless --yes), and removes them."""
    caches = arguments.caches()
    total = format_size(sum(cache.size for cache in caches))
    if caches:
        print(format_caches(caches))
    if arguments.action == "list":
        print(f"{len(caches)} cache(s), {total} in all, under {arguments.root}")
        return
    if caches and not arguments.yes:
        if not sys.stdin.isatty():
            raise InputError(f"{len(caches)} cache(s) to remove and no terminal to ask", fix="add --yes to remove "
                             "them without asking")
        if input(f"Remove these {len(caches)} cache(s), {total}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return
    removed, in_use = remove(caches)
    unfinished = remove_unfinished(arguments.root)
    print(f"removed {len(removed)} cache(s), {format_size(sum(cache.size for cache in removed))} freed"
          + (f", and what {unfinished} unfinished build(s) left" if unfinished else ""))
    for cache in in_use:
        print(f"kept {cache.path}: a running command uses it")


def _print_summary(summary: dict, output: str) -> None:
    best = summary.get("best")
    if best:
        print("best dev: " + ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k not in ("epoch", "step"))
              + f" (epoch {best['epoch']:.4g})")
    print(f"model written to {output}")


def _report_export(results: dict, arguments: ExportArguments) -> None:
    print(f"fp32: max |Δlogit| {results['fp32_max_abs_logit_diff']:.2e} on {results['fp32_parity_examples']} examples")
    if "int8_metric_drop_points" in results:
        print(f"int8: {results['int8_metric']} {results['int8_metric_value']:.4f} vs PyTorch "
              f"{results['pytorch_metric_value']:.4f} ({-results['int8_metric_drop_points']:+.2f} points)")
    print(f"written to {arguments.output} (model.onnx{', model.int8.onnx' if arguments.int8 else ''}, export.json)")
    failures = parity_failures(results)
    if failures:
        raise ParityError("; ".join(failures))


def _print_run(results: dict) -> None:
    from .pipeline.report import summary_table
    print(summary_table(results))
    if "report" in results:
        print(f"report: {results['report']} (and report.html beside it)")


def _note_reference_flags(command: str, argv: list[str]) -> None:
    kind, _, extras, _, _ = COMMANDS[command]
    meanings = dict(REFERENCE_MEANINGS)
    for setting in settings_of(kind):
        meanings.update({flag: flag_of(setting.key) for flag in setting.flags})
    for word in argv:
        name = word.split("=", 1)[0]
        if name in meanings:
            print(f"note: {name} is the reference code's spelling of {meanings[name]}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(overview())
        return 0
    # our progress messages at INFO; other libraries (onnxruntime's quantiser logs every tensor) at WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tinybert").setLevel(logging.INFO)
    from transformers.utils import logging as transformers_logging
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        command, arguments, flags = parse(argv)
        _note_reference_flags(command, argv)
        run_command(command, arguments, flags)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Under torchrun / accelerate: leave the process group before exiting, or gloo aborts the
    process on its way out (a crash report after a clean error message)."""
    import torch.distributed
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
