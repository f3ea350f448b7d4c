"""The `tinybert` command: parses options and calls the library functions."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .errors import InputError


def _add_reference_flags(parser: argparse.ArgumentParser) -> None:
    """The reference code's flags that tinybert reads from the data or the model instead."""
    group = parser.add_argument_group("reference-code flags (accepted for old scripts)")
    group.add_argument("--data_dir", help="folder with train.* and dev.*/eval.* files (instead of --train/--eval)")
    group.add_argument("--num_labels", type=int, help="checked against the labels found in the data")
    group.add_argument("--task_mode", help=argparse.SUPPRESS)
    group.add_argument("--do_lower_case", action="store_true", help=argparse.SUPPRESS)


def _resolve_data_dir(args) -> None:
    """--data_dir DIR means DIR/train.* for training and DIR/dev.* or DIR/eval.* for evaluation."""
    from pathlib import Path
    if getattr(args, "data_dir", None):
        folder = Path(args.data_dir)
        suffixes = (".tsv", ".txt", ".csv", ".jsonl")
        def find(*stems):
            return next((str(folder / f"{stem}{suffix}") for stem in stems for suffix in suffixes
                         if (folder / f"{stem}{suffix}").is_file()), None)
        args.train = args.train or find("train")
        args.eval = args.eval or find("dev", "eval")
        if args.train is None:
            raise InputError("no train.tsv/train.txt/train.csv/train.jsonl in the data folder", path=folder,
                             fix="pass --train FILE, or put the training file in that folder")
    if not args.train:
        raise InputError("no training data given", fix="pass --train FILE (or --data_dir DIR)")


def _check_num_labels(args, data_path) -> None:
    if getattr(args, "num_labels", None):
        from .data import LabelSpace
        space = LabelSpace.infer(_data_options(args).read(data_path))
        if space.num_labels != args.num_labels:
            raise InputError(f"--num_labels {args.num_labels}, but the data has {space.num_labels} label(s): "
                             f"{', '.join(space.names) or 'scores'}", path=data_path,
                             fix="drop --num_labels: tinybert reads the labels from the data")


def _add_training_options(parser: argparse.ArgumentParser, checkpoint_every: int) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--seed", type=int, default=42)
    group.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no",
                       help="bf16/fp16 autocast where the hardware gains from it")
    group.add_argument("--gradient-accumulation", type=int, default=1)
    group.add_argument("--checkpoint-every", type=int, default=checkpoint_every,
                       help=f"optimizer steps between checkpoints (default {checkpoint_every})")


def _training_options(args) -> dict:
    return {"seed": args.seed, "mixed_precision": args.mixed_precision,
            "gradient_accumulation_steps": args.gradient_accumulation, "checkpoint_every": args.checkpoint_every}


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading data")
    group.add_argument("--text-column", help="column holding the text (files with a header)")
    group.add_argument("--pair-column", help="column holding the second text of a pair")
    group.add_argument("--label-column", help="column holding the label or score")
    group.add_argument("--skip-bad-lines", action="store_true",
                       help="leave out malformed lines (reported) instead of stopping")
    group.add_argument("--max-examples", type=int,
                       help="use only the first N examples (of the training data; a dev set is read whole)")


def _data_options(args):
    from .data import DataOptions
    return DataOptions(text_column=args.text_column, pair_column=args.pair_column,
                       label_column=args.label_column, skip_bad_lines=args.skip_bad_lines,
                       max_examples=args.max_examples)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinybert", description=(
        "Compress a fine-tuned BERT-style model into a small TinyBERT student for your own data."))
    parser.add_argument("--version", action="version", version=f"tinybert {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    finetune = commands.add_parser("finetune", help="fine-tune an encoder as a task teacher",
                                   description="Fine-tune any local encoder directory as a sequence "
                                               "classifier (or regressor) on labelled data.")
    finetune.add_argument("--model", "--bert_model", dest="model", required=True,
                          help="local model directory (save_pretrained, or a reference-code checkpoint)")
    finetune.add_argument("--train", "--train_file_path", dest="train", help="training data file")
    finetune.add_argument("--eval", help="dev data file: evaluated each epoch, the best epoch is kept")
    finetune.add_argument("--output", "--output_dir", dest="output", required=True, help="output model directory")
    finetune.add_argument("--epochs", "--num_train_epochs", dest="epochs", type=float, default=3)
    finetune.add_argument("--max-length", "--max_seq_length", "--max_seq_len", dest="max_length", type=int, default=128)
    finetune.add_argument("--batch-size", "--train_batch_size", dest="batch_size", type=int, default=32)
    finetune.add_argument("--lr", "--learning_rate", dest="lr", type=float, default=2e-5)
    finetune.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    finetune.add_argument("--metric", help="dev metric that picks the best epoch "
                                           "(default accuracy; pearson for regression)")
    _add_training_options(finetune, checkpoint_every=200)
    _add_data_options(finetune)
    _add_reference_flags(finetune)
    finetune.set_defaults(run=_run_finetune)

    evaluate = commands.add_parser("evaluate", help="metrics, size and CPU latency of a classifier")
    evaluate.add_argument("--model", required=True, help="fine-tuned model directory")
    evaluate.add_argument("--data", required=True, help="labelled data file")
    evaluate.add_argument("--json", help="also write the figures to this JSON file")
    evaluate.add_argument("--max-length", type=int, default=128)
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    _add_data_options(evaluate)
    evaluate.set_defaults(run=_run_evaluate)

    distill = commands.add_parser("distill", help="task distillation, stage 1 or stage 2",
                                  description="Distil a fine-tuned teacher into a student: "
                                              "--stage intermediate (embeddings, hidden states, attention "
                                              "scores), then --stage prediction (logits) from its output.")
    distill.add_argument("--stage", choices=("intermediate", "prediction"),
                         help="intermediate (stage 1, the default) or prediction (stage 2)")
    distill.add_argument("--pred_distill", action="store_true", help=argparse.SUPPRESS)
    distill.add_argument("--teacher", "--teacher_model", dest="teacher", required=True, help="fine-tuned teacher directory")
    distill.add_argument("--student", "--student_model", dest="student", default="tinybert-4l-312",
                         help="preset (tinybert-4l-312, tinybert-6l-768) or student directory "
                              "(a general student, or the stage-1 output for stage 2)")
    distill.add_argument("--train", "--train_file_path", dest="train", help="training data (original or augmented)")
    distill.add_argument("--eval", help="dev data: evaluated each epoch of stage 2, the best epoch is kept")
    distill.add_argument("--output", "--output_dir", dest="output", required=True, help="output student directory")
    distill.add_argument("--epochs", "--num_train_epochs", dest="epochs", type=float,
                         help="default 20 (stage 1), 3 (stage 2)")
    distill.add_argument("--max-length", "--max_seq_length", "--max_seq_len", dest="max_length", type=int,
                         help="default 64 single texts, 128 pairs")
    distill.add_argument("--batch-size", "--train_batch_size", dest="batch_size", type=int, default=32)
    distill.add_argument("--lr", "--learning_rate", dest="lr", type=float,
                         help="default 5e-5 constant (stage 1), 3e-5 linear (stage 2)")
    distill.add_argument("--init-from-teacher", action="store_true",
                         help="start from the teacher's embeddings and mapped layers (same width)")
    distill.add_argument("--layers", type=int, help="student layer count (with a preset or --init-from-teacher)")
    distill.add_argument("--layer-map", help="teacher layer for each student layer, 1-based, e.g. 3,6,9,12 "
                                             "(default: uniform)")
    distill.add_argument("--temperature", type=float, default=1.0)
    distill.add_argument("--attention-weight", type=float, default=1.0)
    distill.add_argument("--hidden-weight", type=float, default=1.0)
    distill.add_argument("--embedding-weight", type=float, default=1.0)
    distill.add_argument("--shared-projection", action="store_true",
                         help="one projection for embeddings and hidden states (the reference code's way)")
    distill.add_argument("--metric", help="dev metric that picks the best epoch of stage 2")
    _add_training_options(distill, checkpoint_every=200)
    distill.add_argument("--plan", action="store_true",
                         help="print the layer mapping, projections, sizes and expected speed-up, then stop")
    _add_data_options(distill)
    _add_reference_flags(distill)
    distill.set_defaults(run=_run_distill)

    general = commands.add_parser(
        "general", help="general distillation on plain text",
        description="Distil a pretrained encoder (no task head needed) into a general student with "
                    "attention + hidden (+ embedding) losses on a streamed plain-text corpus.")
    general.add_argument("--teacher", "--teacher_model", dest="teacher", required=True, help="pretrained encoder directory")
    general.add_argument("--corpus", "--train_file_path", dest="corpus", required=True, nargs="+",
                         help="plain-text files, one sentence or paragraph per line")
    general.add_argument("--student", "--student_model", dest="student", default="tinybert-4l-312",
                         help="preset (tinybert-4l-312, tinybert-6l-768), JSON file of sizes, or directory")
    general.add_argument("--output", "--output_dir", dest="output", required=True, help="output directory of the general student")
    general.add_argument("--max-length", "--max_seq_length", "--max_seq_len", dest="max_length", type=int, default=128)
    general.add_argument("--batch-size", "--train_batch_size", dest="batch_size", type=int, default=256, help="per process")
    general.add_argument("--epochs", "--num_train_epochs", dest="epochs", type=float, default=3)
    general.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    general.add_argument("--lr", "--learning_rate", dest="lr", type=float, default=1e-4)
    general.add_argument("--layers", type=int, help="student layer count (with a preset)")
    general.add_argument("--layer-map", help="teacher layer for each student layer, 1-based")
    general.add_argument("--embedding-weight", type=float, default=1.0, help="0 leaves the embedding loss out")
    _add_training_options(general, checkpoint_every=500)
    general.add_argument("--resume", action="store_true",
                         help="continue from the last checkpoint (re-running the same command does too)")
    general.set_defaults(run=_run_general)

    augment = commands.add_parser(
        "augment", help="TinyBERT data augmentation (masked-LM and word-vector replacements)",
        description="Write every row of a task file followed by up to N variants in which eligible "
                    "words are replaced with probability P by one of K candidates: the masked LM's "
                    "predictions for single-WordPiece words, word-vector neighbours for the others. "
                    "The fork's flag names are accepted: --M is K (candidates), --N is N (variants).")
    augment.add_argument("--input", "--data_path", dest="input", required=True, help="task data file")
    augment.add_argument("--output", help="output file (default: INPUT_aug with the same extension)")
    augment.add_argument("--mlm", "--pretrained_bert_model", dest="mlm",
                         help="local masked-LM directory (any AutoModelForMaskedLM)")
    augment.add_argument("--word-vectors", "--glove_embs", dest="word_vectors",
                         help="GloVe text, word2vec text/binary or fastText .vec file")
    augment.add_argument("--candidates", "--M", dest="candidates", type=int, default=15,
                         help="K: candidates per word (default 15)")
    augment.add_argument("--variants", "--N", dest="variants", type=int, default=20,
                         help="N: variants tried per example, duplicates dropped (default 20)")
    augment.add_argument("--p", dest="probability", type=float, default=0.4,
                         help="probability that an eligible word is replaced (default 0.4)")
    augment.add_argument("--seed", type=int, default=42)
    augment.add_argument("--batch-size", type=int, default=64, help="masked copies per forward pass")
    augment.add_argument("--mlm-runtime", choices=("auto", "torch", "onnxruntime"), default="auto",
                         help="where the masked LM runs: auto = onnxruntime on CPU (faster matrix products, "
                              "the same candidates), PyTorch on GPU")
    augment.add_argument("--field", choices=("first", "second"), default="first",
                         help="which text of a pair to vary; the other stays as it is")
    augment.add_argument("--augment-first", type=int,
                         help="give variants to the first N rows only; later rows are copied as they are "
                              "(bounds the time on a large file)")
    _add_data_options(augment)
    augment.set_defaults(run=_run_augment)

    convert = commands.add_parser("convert", help="rewrite a reference-code checkpoint as a plain "
                                                  "save_pretrained directory")
    convert.add_argument("--input", required=True, help="directory in the TinyBERT reference code's layout")
    convert.add_argument("--output", required=True, help="output directory (safetensors, config, tokenizer)")
    convert.add_argument("--tokenizer-from", help="take the tokenizer from this model directory when the "
                                                  "input has no vocab.txt (e.g. the teacher)")
    convert.set_defaults(run=_run_convert)

    export = commands.add_parser("export", help="ONNX export (+ int8) with parity checks",
                                 description="Write MODEL as ONNX with dynamic batch and sequence axes "
                                             "(model.onnx, tokenizer and config beside it), optionally an "
                                             "onnxruntime dynamic int8 copy, and check both against PyTorch.")
    export.add_argument("--model", required=True, help="fine-tuned or distilled model directory")
    export.add_argument("--output", required=True, help="output directory")
    export.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic int8 quantisation)")
    export.add_argument("--data", help="labelled dev file for the checks (int8: metric within 1 point); "
                                       "without it fp32 parity is checked on built-in sentences")
    export.add_argument("--max-length", type=int, default=128)
    _add_data_options(export)
    export.set_defaults(run=_run_export)

    predict = commands.add_parser("predict", help="labels and probabilities for new text",
                                  description="Predict every row of a text file (one text, or a TSV/CSV/JSONL "
                                              "with a text column; labels not needed) with a model directory "
                                              "or an exported .onnx file.")
    predict.add_argument("--model", required=True, help="model directory, export directory (its model.onnx), or model.onnx / model.int8.onnx")
    predict.add_argument("--input", required=True, help="file of texts")
    predict.add_argument("--output", help="TSV, or JSONL when it ends in .jsonl (default: standard output)")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--max-length", type=int, default=128)
    predict.add_argument("--text-column", help="column holding the text (files with a header)")
    predict.add_argument("--pair-column", help="column holding the second text of a pair")
    predict.add_argument("--skip-bad-lines", action="store_true", help="leave out malformed lines instead of stopping")
    predict.set_defaults(run=_run_predict)

    pipeline = commands.add_parser("pipeline", help="every stage from one YAML config",
                                   description="General distillation (optional), teacher fine-tuning, "
                                               "augmentation, distillation stages 1 and 2, a baseline without "
                                               "distillation, evaluation, export and report, each in its own "
                                               "directory of the run: finished stages are skipped, an "
                                               "interrupted one resumes. See configs/ for examples.")
    pipeline.add_argument("config", help="YAML config file")
    pipeline.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                          help="override one config value (repeatable), e.g. --set finetune.epochs=1")
    pipeline.add_argument("--quick", action="store_true", help="apply the config's `quick:` overrides")
    pipeline.add_argument("--show-config", action="store_true",
                          help="print every section and key with the value it will use, then stop")
    pipeline.set_defaults(run=_run_pipeline)

    demo = commands.add_parser("demo", help="the whole pipeline on the bundled teacher and review snippets",
                               description="Fine-tune the bundled MiniLM teacher on Rotten Tomatoes snippets "
                                           "(split by movie), augment, distil, compare with a student trained "
                                           "without distillation, export to ONNX and write a report.")
    demo.add_argument("--quick", action="store_true", help="a small run that ends in about three minutes")
    demo.add_argument("--data", help="directory with train.tsv, dev.tsv (and test.tsv) to use instead "
                                     "of the bundled Rotten Tomatoes snippets")
    demo.add_argument("--output", help="run directory (default runs/demo, runs/demo-quick with --quick)")
    demo.set_defaults(run=_run_demo)
    return parser


def _print_summary(summary: dict, output: str) -> None:
    best = summary.get("best")
    if best:
        print("best dev: " + ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k != "epoch")
              + f" (epoch {best['epoch']})")
    print(f"model written to {output}")


def _run_finetune(args) -> None:
    _resolve_data_dir(args)
    _check_num_labels(args, args.train)
    from .finetune import FinetuneConfig, finetune
    from .training import TrainingConfig
    training = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                              warmup_ratio=args.warmup, **_training_options(args))
    config = FinetuneConfig(training=training, max_length=args.max_length, metric=args.metric)
    summary = finetune(args.model, args.train, args.output, eval_path=args.eval, config=config,
                       data_options=_data_options(args))
    _print_summary(summary, args.output)


def _run_distill(args) -> None:
    from dataclasses import replace
    from .distill import DistillConfig, LossWeights, distill, plan, stage_defaults
    _resolve_data_dir(args)
    _check_num_labels(args, args.train)
    if args.stage is None:
        args.stage = "prediction" if args.pred_distill else "intermediate"
    elif args.pred_distill and args.stage != "prediction":
        raise InputError("--pred_distill asks for stage 2 but --stage says intermediate",
                         fix="give one of them")
    options = _data_options(args)
    config = DistillConfig(stage=args.stage, max_length=args.max_length, temperature=args.temperature,
                           weights=LossWeights(attention=args.attention_weight, hidden=args.hidden_weight,
                                               embedding=args.embedding_weight),
                           shared_projection=args.shared_projection, layers=args.layers,
                           init_from_teacher=args.init_from_teacher, layer_map=args.layer_map,
                           metric=args.metric)
    if args.plan:
        print(plan(args.teacher, args.student, options.read(args.train), config).describe())
        return
    training, _ = stage_defaults(args.stage, pairs=False)
    overrides = {"batch_size": args.batch_size, **_training_options(args)}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.lr is not None:
        overrides["learning_rate"] = args.lr
    config.training = replace(training, **overrides)
    summary = distill(args.teacher, args.student, args.train, args.output, eval_path=args.eval,
                      config=config, data_options=options)
    _print_summary(summary, args.output)


def _run_general(args) -> None:
    from .distill import LossWeights
    from .general import GeneralConfig, general_distill
    from .training import TrainingConfig
    training = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                              schedule="linear", warmup_ratio=0.1, **_training_options(args))
    config = GeneralConfig(training=training, max_length=args.max_length, max_steps=args.max_steps,
                           weights=LossWeights(embedding=args.embedding_weight, prediction=0.0),
                           layers=args.layers, layer_map=args.layer_map)
    summary = general_distill(args.teacher, args.corpus, args.output, student=args.student, config=config)
    print(f"general student written to {args.output} after {summary['steps']} steps")


def _run_augment(args) -> None:
    from pathlib import Path
    from .augment import AugmentConfig, augment_file
    output = args.output
    if output is None:
        source = Path(args.input)
        output = source.with_name(f"{source.stem}_aug{source.suffix}")
    config = AugmentConfig(candidates=args.candidates, variants=args.variants, probability=args.probability,
                           seed=args.seed, batch_size=args.batch_size, field=args.field,
                           augment_first=args.augment_first, mlm_runtime=args.mlm_runtime)
    result = augment_file(args.input, output, mlm_dir=args.mlm, word_vectors=args.word_vectors,
                          config=config, data_options=_data_options(args))
    if result["rows"] is not None:
        print(f"{result['rows']:,} rows → {result['rows'] + result['written']:,} rows "
              f"({result['written']:,} variants) in {result['seconds']:.1f} s")
    print(f"written to {output}")


def _run_evaluate(args) -> None:
    from .evaluation import evaluate, format_table, write_json
    results = evaluate(args.model, args.data, max_length=args.max_length, batch_size=args.batch_size,
                       latency=not args.no_latency, data_options=_data_options(args))
    print(format_table(results))
    if args.json:
        write_json(results, args.json)


def _run_convert(args) -> None:
    from .legacy import convert
    print(f"converted model written to {convert(args.input, args.output, tokenizer_from=args.tokenizer_from)}")


class ParityError(InputError):
    """An export whose outputs differ from the PyTorch model beyond the tolerance."""

    exit_code = 1

    def __init__(self, problem: str):
        super().__init__(problem, fix="keep using the PyTorch model, and report this with the model's config.json")


def _run_export(args) -> None:
    from .export import export_onnx, parity_failures
    results = export_onnx(args.model, args.output, int8=args.int8, data=args.data, max_length=args.max_length,
                          data_options=_data_options(args))
    print(f"fp32: max |Δlogit| {results['fp32_max_abs_logit_diff']:.2e} on {results['fp32_parity_examples']} examples")
    if "int8_metric_drop_points" in results:
        print(f"int8: {results['int8_metric']} {results['int8_metric_value']:.4f} vs PyTorch "
              f"{results['pytorch_metric_value']:.4f} ({-results['int8_metric_drop_points']:+.2f} points)")
    print(f"written to {args.output} (model.onnx{', model.int8.onnx' if args.int8 else ''}, export.json)")
    failures = parity_failures(results)
    if failures:
        raise ParityError("; ".join(failures))


def _run_predict(args) -> None:
    from .predict import predict_file
    count = predict_file(args.model, args.input, args.output, batch_size=args.batch_size, max_length=args.max_length,
                         text_column=args.text_column, pair_column=args.pair_column,
                         skip_bad_lines=args.skip_bad_lines)
    if args.output:
        print(f"{count:,} predictions written to {args.output}")


def _run_pipeline(args) -> None:
    from .pipeline import format_config, load_config, run_pipeline
    config = load_config(args.config, args.overrides, quick=args.quick)
    if args.show_config:
        print(format_config(config))
        return
    _print_run(run_pipeline(config))


def _run_demo(args) -> None:
    from .demo import run_demo
    _print_run(run_demo(args.output, data_dir=args.data, quick=args.quick))


def _print_run(results: dict) -> None:
    from .report import summary_table
    print(summary_table(results))
    if "report" in results:
        print(f"report: {results['report']} (and report.html beside it)")


# Flag names of the original TinyBERT code and its simplified fork, and tinybert's spelling.
LEGACY_FLAGS = {"--data_path": "--input", "--pretrained_bert_model": "--mlm", "--glove_embs": "--word-vectors",
                "--M": "--candidates", "--N": "--variants", "--teacher_model": "--teacher",
                "--student_model": "--student", "--train_file_path": "--train (--corpus for general)",
                "--output_dir": "--output", "--max_seq_len": "--max-length", "--max_seq_length": "--max-length",
                "--train_batch_size": "--batch-size", "--learning_rate": "--lr", "--num_train_epochs": "--epochs",
                "--pred_distill": "--stage prediction", "--bert_model": "--model",
                "--data_dir": "--train DIR/train.* --eval DIR/dev.*",
                "--num_labels": "nothing (labels are read from the data)",
                "--task_mode": "nothing (classification or regression is read from the labels)",
                "--do_lower_case": "nothing (the tokenizer's own setting applies)"}


def _note_legacy_flags(argv: list[str]) -> None:
    for word in argv:
        name = word.split("=", 1)[0]
        if name in LEGACY_FLAGS:
            print(f"note: {name} is the reference code's spelling of {LEGACY_FLAGS[name]}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    _note_legacy_flags(argv)
    # our progress messages at INFO; other libraries (onnxruntime's quantiser logs every tensor) at WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tinybert").setLevel(logging.INFO)
    from transformers.utils import logging as transformers_logging
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        args.run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
