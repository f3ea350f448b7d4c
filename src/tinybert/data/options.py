"""How to read the user's task files: the options every command that reads them shares."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Iterator, Literal

from ..settings import option
from .formats import Layout, Row, open_task_file


@dataclass
class DataOptions:
    """How to read the user's files (shared by every command that reads task data)."""

    text_column: str | None = option(None, "column holding the text (files with a header)")
    pair_column: str | None = option(None, "column holding the second text of a pair")
    label_column: str | None = option(None, "column holding the label or score")
    skip_bad_lines: bool = option(False, "leave out malformed lines (reported) instead of stopping")
    max_examples: int | None = option(None, "use only the first N examples (of the training data; a dev set "
                                            "is read whole)")
    task: Literal["auto", "sequence", "token", "qa"] = option(
        "auto", "sequence (a label or score per text), token (a tag per word: CoNLL or JSONL tokens/tags) or qa "
                "(SQuAD); auto: read from the file")
    doc_stride: int | None = option(None, "question answering: tokens shared by consecutive windows of a long "
                                          "context, below half a window (default: the model's recorded stride, "
                                          "else 128, or a quarter of --max-length when 128 is too many)")
    cache_dir: str | None = option(None, "where the token caches of task files are kept (default: in the output "
                                         "directory, or ~/.cache/tinybert/tokens)")

    def open(self, path, require_labels: bool = True, read_labels: bool = True) -> tuple[Layout, Iterator[Row]]:
        return open_task_file(path, text_column=self.text_column, pair_column=self.pair_column,
                              label_column=self.label_column, require_labels=require_labels, read_labels=read_labels)

    def labels(self, path, require_labels: bool = True) -> "TaskLabels":
        """The distinct labels of a file (of its first ``max_examples`` rows), read streaming; rows
        without one add none."""
        _, rows = self.open(path, require_labels=require_labels)
        examples = (row.example for row in rows if row.example is not None)
        labels: dict[str, int] = {}
        for example in itertools.islice(examples, self.max_examples):
            if example.label is not None:
                labels.setdefault(example.label, example.line)
        return TaskLabels(str(path), labels)


@dataclass
class TaskLabels:
    path: str
    raw_labels: dict[str, int]  # label as written → the line it first appears on


def count_lines(path: str | os.PathLike) -> int:
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
