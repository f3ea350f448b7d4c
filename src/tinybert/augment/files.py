"""`tinybert augment`: a task file in, every row followed by its variants out, in the same
format with the variants marked (``data.writing.marked``); streamed, and resumed after a kill
from the last finished chunk of rows."""

from __future__ import annotations

import itertools
import logging
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import digest_file
from ..data import DataOptions, count_lines, format_row, header_line, marked, report_bad_lines
from ..data.formats import MARK
from ..data.tasks import detect_task
from ..errors import InputError
from ..models.loading import digest_model_dir
from ..settings import group, option
from ..streams import copy_to_standard_output, is_standard_stream
from .algorithm import OUTPUT_NEUTRAL_SETTINGS, AugmentConfig, Augmenter, build_augmenter
from .stream import one_run_at_a_time, remove_shares, resumable_stream
from .structured import augment_questions, augment_tagged

logger = logging.getLogger(__name__)


def _check_rows(path: str, options: DataOptions) -> None:
    """Reads the rows once without augmenting: malformed ones are an error (unless skipped) before
    anything is written, not after hours of work."""
    _, rows = options.open(path, require_labels=False)
    bad = [(row.line, row.problem) for row in itertools.islice(rows, options.max_examples) if row.problem]
    if bad:
        report_bad_lines(path, bad, options.skip_bad_lines)


def augment_file(input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                 mlm_dir: str | os.PathLike | None = None, word_vectors: str | os.PathLike | None = None,
                 config: AugmentConfig | None = None, data_options: DataOptions | None = None,
                 augmenter: Augmenter | None = None, show_progress: bool = True) -> dict:
    """Writes every row followed by its variants (same label, the other text of a pair unchanged,
    marked as variants) to ``output_path`` in the input's format. Streams the input; after a kill, the same call
    continues from the last finished chunk of rows. Runs on one output go one at a time: a second
    waits for the first, then finds the output complete."""
    config = config or AugmentConfig()
    options = data_options or DataOptions()
    input_path, output_path = str(input_path), Path(output_path)
    if config.field not in ("first", "second"):
        raise InputError(f"unknown field {config.field!r}", fix="use --field first or --field second")
    with one_run_at_a_time(output_path):
        if output_path.exists() and not output_path.with_name(output_path.name + ".partial").exists():
            logger.info("%s already exists; delete it to augment again", output_path)
            remove_shares(output_path)  # left by a launched run killed as it finished
            return {"rows": None, "written": None, "complete": True}
        return _augment(input_path, output_path, mlm_dir, word_vectors, config, options, augmenter, show_progress)


def _augment(input_path: str, output_path: Path, mlm_dir, word_vectors, config: AugmentConfig, options: DataOptions,
             augmenter: Augmenter | None, show_progress: bool) -> dict:
    kind = detect_task(input_path, options)
    if kind != "sequence":  # tags or answers: only the words that carry none change
        augmenter = augmenter or build_augmenter(config, mlm_dir, word_vectors)
        inputs = output_inputs(input_path, mlm_dir, word_vectors, config, options)
        write = augment_tagged if kind == "token" else augment_questions
        return write(input_path, output_path, augmenter, inputs, options, show_progress)
    layout, rows = options.open(input_path, require_labels=False)
    output_layout = marked(layout)
    if config.field == "second" and not layout.has_pairs:
        raise InputError("--field second needs sentence pairs", path=input_path,
                         fix="drop --field second, or give a file of pairs")
    _check_rows(input_path, options)  # a bad line near the end stops the run before any work
    augmenter = augmenter or build_augmenter(config, mlm_dir, word_vectors)

    inputs = output_inputs(input_path, mlm_dir, word_vectors, config, options)
    second = config.field == "second"
    if options.max_examples:
        rows = itertools.islice(rows, options.max_examples)

    def render(chunk, state) -> tuple[str, int]:
        good = [row for row in chunk if row.example is not None]  # the others: skipped, reported before
        first_copied = len(good)
        if config.augment_first is not None:
            first_copied = max(0, min(len(good), config.augment_first - state["rows"]))
        to_vary, to_copy = good[:first_copied], good[first_copied:]
        texts = [row.example.text_b if second else row.example.text_a for row in to_vary]
        lines, written = [], 0
        for row, (words, candidates) in zip(to_vary, augmenter.word_candidates(texts)):
            lines.append(format_row(output_layout, row))
            for variant in augmenter.variants(words, candidates, random.Random(f"{config.seed}:{row.line}")):
                lines.append(format_row(output_layout, row, text_b=variant, variant=True) if second else
                             format_row(output_layout, row, text_a=variant, variant=True))
                written += 1
        lines.extend(format_row(output_layout, row) for row in to_copy)
        return "".join(lines), written

    return resumable_stream(rows, render, output_path, inputs, config.chunk_rows, count_lines(input_path),
                            header_line(output_layout) or "", show_progress)


def output_inputs(input_path, mlm_dir, word_vectors, config: AugmentConfig, options: DataOptions) -> dict:
    """What augmented output is made of: the input's content, the candidates' sources, the settings."""
    return {"input": digest_file(input_path), "mlm": digest_model_dir(mlm_dir) if mlm_dir else None,
            "word_vectors": digest_file(word_vectors) if word_vectors else None,
            "config": {k: v for k, v in vars(config).items() if k not in OUTPUT_NEUTRAL_SETTINGS},
            "reading": vars(options), "marks": MARK}  # output without the marks is not resumed


@dataclass
class AugmentArguments:
    input: str | None = option(None, "task data file", flags=("--data_path",), required=True)
    output: str | None = option(None, "output file (default: INPUT_aug with the same extension); - writes standard "
                                      "output (no resume after a kill)")
    mlm: str | None = option(None, "local masked-LM directory (any AutoModelForMaskedLM)",
                             flags=("--pretrained_bert_model",))
    word_vectors: str | None = option(None, "GloVe text, word2vec text/binary or fastText .vec file",
                                      flags=("--glove_embs",))
    config: AugmentConfig = group("augmentation", AugmentConfig)
    data_options: DataOptions = group("reading data", DataOptions)

    @property
    def output_path(self) -> Path:
        source = Path(self.input)
        return Path(self.output) if self.output else source.with_name(f"{source.stem}_aug{source.suffix}")

    def run(self, show_progress: bool = True) -> dict:
        if not is_standard_stream(self.output):
            return self._augment(self.output_path, show_progress)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise InputError("--output - under several processes: each would write its own share",
                             fix="give an output file on a filesystem every process sees")
        # augment_file writes a file (in chunks, renamed once complete): written to a temporary one, copied out
        with tempfile.TemporaryDirectory(prefix="tinybert-augment-") as folder:
            written = Path(folder) / f"augmented{Path(self.input).suffix}"
            result = self._augment(written, show_progress)
            copy_to_standard_output(written)
        return result

    def _augment(self, output_path: Path, show_progress: bool) -> dict:
        return augment_file(self.input, output_path, mlm_dir=self.mlm, word_vectors=self.word_vectors,
                            config=self.config, data_options=self.data_options, show_progress=show_progress)
