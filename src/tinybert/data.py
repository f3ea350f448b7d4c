"""Task data: reading the formats users have, label maps, tokenising once, length-grouped batches.

Formats (chosen by file extension, then by content):

* ``.jsonl`` / ``.json``: one JSON object per line.
* ``.csv``: comma-separated with a header row.
* anything else is tab-separated: GLUE TSV with a header row (columns picked by name), or the
  simplified fork's header-less ``text<TAB>label`` / ``text_a<TAB>text_b<TAB>label`` lines.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import get_length_grouped_indices

from .errors import InputError

logger = logging.getLogger(__name__)

# Column names recognised in files with a header, in order of preference.
TEXT_COLUMNS = ("sentence1", "question", "question1", "premise", "text_a", "sentence", "text", "review")
PAIR_COLUMNS = ("sentence2", "text_b", "question2", "hypothesis", "sentence")
LABEL_COLUMNS = ("label", "labels", "score", "gold_label", "target", "class", "category")
KNOWN_COLUMNS = frozenset(TEXT_COLUMNS + PAIR_COLUMNS + LABEL_COLUMNS + ("idx", "index", "id"))

_INT_LABEL = re.compile(r"^[+-]?\d+$")
_BAD_LINES_SHOWN = 5


@dataclass
class Example:
    text_a: str
    text_b: str | None
    label: str | None  # raw text of the label; interpreted by a LabelSpace
    line: int  # 1-based line number in the source file, for error messages


@dataclass
class TaskData:
    """Examples read from one file, with what is needed to write rows back in the same format."""

    path: str
    examples: list[Example]
    format: str  # "jsonl", "csv", "tsv" (with header) or "fork" (no header)
    text_column: str | None = None
    pair_column: str | None = None
    label_column: str | None = None
    header: list[str] | None = None
    skipped_lines: list[int] = field(default_factory=list)

    @property
    def has_pairs(self) -> bool:
        return any(example.text_b is not None for example in self.examples)

    def __len__(self) -> int:
        return len(self.examples)


# --------------------------------------------------------------------------------------------
# Labels


@dataclass
class LabelSpace:
    """The task's labels: an ordered list of class names, or a single regression target."""

    kind: str  # "classification" or "regression"
    names: list[str] = field(default_factory=list)

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.names)

    @classmethod
    def infer(cls, data: TaskData) -> "LabelSpace":
        """Integers → classes in numeric order; other numbers → regression; anything else →
        classes in sorted order."""
        raw = [example.label for example in data.examples]
        if not raw:
            raise InputError("no labelled examples", path=data.path, fix="check the file is not empty")
        if all(_INT_LABEL.match(value) for value in raw):
            return cls("classification", [str(v) for v in sorted({int(value) for value in raw})])
        if all(_is_float(value) for value in raw):
            return cls("regression")
        return cls("classification", sorted(set(raw)))

    @classmethod
    def from_config(cls, config) -> "LabelSpace":
        if getattr(config, "problem_type", None) == "regression" or config.num_labels == 1:
            return cls("regression")
        return cls("classification", [config.id2label[i] for i in range(config.num_labels)])

    def config_fields(self) -> dict:
        """Keyword arguments for a transformers config that store this label space."""
        if self.is_regression:
            return {"num_labels": 1, "problem_type": "regression", "id2label": {0: "score"},
                    "label2id": {"score": 0}}
        return {"num_labels": len(self.names), "problem_type": "single_label_classification",
                "id2label": dict(enumerate(self.names)),
                "label2id": {name: i for i, name in enumerate(self.names)}}

    def encode(self, example: Example, path: str) -> int | float:
        if self.is_regression:
            if not _is_float(example.label):
                raise InputError(f"label {example.label!r} is not a number, but this is a regression task",
                                 path=path, line=example.line, fix="give a numeric score on every line")
            return float(example.label)
        key = str(int(example.label)) if _INT_LABEL.match(example.label) else example.label
        try:
            return self.names.index(key)
        except ValueError:
            raise InputError(
                f"unknown label {example.label!r}; the model knows {', '.join(self.names)}",
                path=path, line=example.line,
                fix="use one of the model's labels, or fine-tune a model on data with this label",
            ) from None


def _is_float(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Reading


def read_task_file(path: str | os.PathLike, *, text_column: str | None = None,
                   pair_column: str | None = None, label_column: str | None = None,
                   skip_bad_lines: bool = False, require_labels: bool = True) -> TaskData:
    """Read a task file in any supported format.

    Lines with the wrong number of fields, an empty text or a missing label are "bad": they are
    reported (count and first line numbers) and the read fails, unless ``skip_bad_lines``.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise InputError("file not found", path=path, fix="check the path")
    lines = _read_utf8_lines(path)
    if not any(line.strip() for line in lines):
        raise InputError("the file is empty", path=path, fix="give a file with one example per line")
    suffix = Path(path).suffix.lower()
    columns = (text_column, pair_column, label_column)
    if suffix in (".jsonl", ".json"):
        data, bad = _read_jsonl(path, lines, *columns, require_labels)
    elif suffix == ".csv":
        data, bad = _read_delimited(path, lines, ",", *columns, require_labels)
    elif _has_header(lines[0].split("\t"), columns):
        data, bad = _read_delimited(path, lines, "\t", *columns, require_labels)
    else:
        data, bad = _read_fork(path, lines, require_labels)
    if bad:
        shown = ", ".join(str(number) for number, _ in bad[:_BAD_LINES_SHOWN])
        first_problem = bad[0][1]
        summary = f"{len(bad)} malformed line(s) (lines {shown}{', …' if len(bad) > _BAD_LINES_SHOWN else ''}); " \
                  f"line {bad[0][0]}: {first_problem}"
        if not skip_bad_lines:
            raise InputError(summary, path=path,
                             fix="correct those lines, or pass --skip-bad-lines to leave them out")
        logger.warning("%s: skipping %s", path, summary)
        data.skipped_lines = [number for number, _ in bad]
    if not data.examples:
        raise InputError("no usable examples", path=path, fix="check the file's format and columns")
    return data


def _read_utf8_lines(path: str) -> list[str]:
    lines = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InputError(
                    f"not valid UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1})",
                    path=path, line=number,
                    fix="convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`",
                ) from None
            lines.append(text.rstrip("\r\n"))
    lines = _strip_trailing_blank(lines)
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    return lines


def _strip_trailing_blank(lines: list[str]) -> list[str]:
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    return lines[:end]


def _has_header(first_fields: list[str], columns: Sequence[str | None]) -> bool:
    names = {name.strip().lower() for name in first_fields}
    wanted = {c.lower() for c in columns if c}
    return bool(names & (KNOWN_COLUMNS | wanted))


def _pick_columns(path: str, header: list[str], text_column, pair_column, label_column,
                  require_labels: bool) -> tuple[str, str | None, str | None]:
    lowered = {name.strip().lower(): name for name in header}

    def named(option: str, value: str | None) -> str | None:
        if value is None:
            return None
        if value.lower() not in lowered:
            raise InputError(f"no column named {value!r}; the columns are {', '.join(header)}",
                             path=path, line=1, fix=f"pass {option} with one of those names")
        return lowered[value.lower()]

    def first_of(candidates: Sequence[str], exclude: set[str]) -> str | None:
        return next((lowered[c] for c in candidates if c in lowered and lowered[c] not in exclude), None)

    text = named("--text-column", text_column) or first_of(TEXT_COLUMNS, set())
    if text is None:
        raise InputError(f"no text column among {', '.join(header)}", path=path, line=1,
                         fix="name it with --text-column")
    label = named("--label-column", label_column) or first_of(LABEL_COLUMNS, {text})
    if label is None and require_labels:
        raise InputError(f"no label column among {', '.join(header)}", path=path, line=1,
                         fix="name it with --label-column (e.g. --label-column label)")
    pair = named("--pair-column", pair_column)
    if pair is None and pair_column is None:
        pair = first_of(PAIR_COLUMNS, {text, label})
    return text, pair, label


def _make_example(path, number, text_a, text_b, label, require_labels, bad) -> Example | None:
    text_a = (text_a or "").strip()
    text_b = None if text_b is None else text_b.strip()
    label = None if label is None else str(label).strip()
    if not text_a:
        bad.append((number, "the text is empty"))
    elif text_b is not None and not text_b:
        bad.append((number, "the second text of the pair is empty"))
    elif require_labels and not label:
        bad.append((number, "the label is empty"))
    else:
        return Example(text_a, text_b, label or None, number)
    return None


def _read_delimited(path, lines, delimiter, text_column, pair_column, label_column, require_labels):
    if delimiter == "\t":
        # GLUE files contain unbalanced quotes: fields are split on tabs only.
        rows = ((number, line.split("\t")) for number, line in enumerate(lines, start=1))
    else:
        reader = csv.reader(io.StringIO("\n".join(lines)))
        rows = ((reader.line_num, row) for row in reader)
    rows = iter(rows)
    _, header = next(rows)
    header = [name.strip() for name in header]
    text, pair, label = _pick_columns(path, header, text_column, pair_column, label_column, require_labels)
    index = {name: i for i, name in enumerate(header)}
    examples, bad = [], []
    for number, fields in rows:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            bad.append((number, f"{len(fields)} fields where the header has {len(header)}"))
            continue
        example = _make_example(path, number, fields[index[text]],
                                fields[index[pair]] if pair else None,
                                fields[index[label]] if label else None, require_labels, bad)
        if example:
            examples.append(example)
    fmt = "tsv" if delimiter == "\t" else "csv"
    return TaskData(path, examples, fmt, text, pair, label, header), bad


def _read_jsonl(path, lines, text_column, pair_column, label_column, require_labels):
    examples, bad, header = [], [], None
    text = pair = label = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            bad.append((number, f"not valid JSON ({error.msg})"))
            continue
        if not isinstance(record, dict):
            bad.append((number, "not a JSON object"))
            continue
        if header is None:
            header = list(record)
            text, pair, label = _pick_columns(path, header, text_column, pair_column, label_column,
                                              require_labels)
        missing = [name for name in (text, pair, label) if name and name not in record]
        if missing:
            bad.append((number, f"missing key {missing[0]!r}"))
            continue
        example = _make_example(path, number, record[text], record[pair] if pair else None,
                                record[label] if label else None, require_labels, bad)
        if example:
            examples.append(example)
    return TaskData(path, examples, "jsonl", text, pair, label, header), bad


def _read_fork(path, lines, require_labels):
    """Header-less ``text[\\ttext_b]\\tlabel`` lines: the field count is the most common one."""
    counts = Counter(len(line.split("\t")) for line in lines[:1000] if line.strip())
    width = counts.most_common(1)[0][0]
    if require_labels and width not in (2, 3):
        raise InputError(f"found {width} tab-separated fields per line and no header",
                         path=path, line=1,
                         fix="use `text<TAB>label` or `text_a<TAB>text_b<TAB>label` lines, "
                             "or add a header row naming the columns (sentence, label, ...)")
    examples, bad = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != width:
            bad.append((number, f"{len(fields)} tab-separated fields where the file has {width}"))
            continue
        label = fields[-1] if require_labels else None
        text_fields = fields[:-1] if require_labels else fields
        example = _make_example(path, number, text_fields[0],
                                text_fields[1] if len(text_fields) > 1 else None, label,
                                require_labels, bad)
        if example:
            examples.append(example)
    if require_labels and examples:
        _reject_text_in_label_column(path, examples, bad)
    return TaskData(path, examples, "fork"), bad


def _reject_text_in_label_column(path: str, examples: list[Example], bad: list) -> None:
    """In header-less files a shifted line puts text where the label belongs; when nearly every
    label is a number, a long non-numeric "label" is such a line."""
    numeric = sum(_is_float(example.label) for example in examples)
    if numeric < 0.99 * len(examples):
        return
    kept = []
    for example in examples:
        if _is_float(example.label):
            kept.append(example)
        else:
            bad.append((example.line, f"the label column holds {example.label[:30]!r}, not a number"))
    examples[:] = kept
    bad.sort()


@dataclass
class DataOptions:
    """How to read the user's files (shared by every command that reads task data)."""

    text_column: str | None = None
    pair_column: str | None = None
    label_column: str | None = None
    skip_bad_lines: bool = False
    max_examples: int | None = None

    def read(self, path):
        data = read_task_file(path, text_column=self.text_column, pair_column=self.pair_column,
                              label_column=self.label_column, skip_bad_lines=self.skip_bad_lines)
        if self.max_examples:
            data.examples = data.examples[: self.max_examples]
        return data


# --------------------------------------------------------------------------------------------
# Tokenising and batching


@dataclass
class EncodedData:
    """Token ids for every example (unpadded), in file order."""

    features: list[dict]
    lengths: list[int]
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.features)


def encode(data: TaskData, tokenizer: PreTrainedTokenizerBase, max_length: int,
           label_space: LabelSpace | None = None, *, chunk_size: int = 2048,
           show_progress: bool = True) -> EncodedData:
    """Tokenise every example once, truncating to ``max_length`` with one warning."""
    features, lengths = [], []
    examples = data.examples
    pairs = data.has_pairs
    progress = tqdm(total=len(examples), desc=f"tokenising {Path(data.path).name}", unit="ex",
                    disable=not show_progress, leave=False)
    at_limit = []
    for start in range(0, len(examples), chunk_size):
        chunk = examples[start:start + chunk_size]
        texts_a = [example.text_a for example in chunk]
        texts_b = [example.text_b or "" for example in chunk] if pairs else None
        batch = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
        for offset, example in enumerate(chunk):
            feature = {key: batch[key][offset] for key in batch.keys()}
            length = len(feature["input_ids"])
            if length == max_length:
                at_limit.append(start + offset)
            if label_space is not None and example.label is not None:
                feature["labels"] = label_space.encode(example, data.path)
            features.append(feature)
            lengths.append(length)
        progress.update(len(chunk))
    progress.close()
    truncated = _count_truncated(examples, at_limit, tokenizer, max_length, pairs)
    if truncated:
        logger.warning("%s: %d of %d examples are longer than %d tokens and were truncated "
                       "(raise --max-length to keep more text)", data.path, truncated, len(examples),
                       max_length)
    return EncodedData(features, lengths, truncated)


def _count_truncated(examples, candidates, tokenizer, max_length, pairs) -> int:
    """Only examples that came out exactly at the limit can have been cut: re-measure those."""
    if not candidates:
        return 0
    texts_a = [examples[i].text_a for i in candidates]
    texts_b = [examples[i].text_b or "" for i in candidates] if pairs else None
    full = tokenizer(texts_a, texts_b, truncation=False, verbose=False)["input_ids"]
    return sum(len(ids) > max_length for ids in full)


class LengthGroupedEpochSampler(Sampler[int]):
    """Shuffles each epoch (seeded by seed + epoch, so a resumed run sees the same order) and
    groups examples of similar length into the same batch, so padding stays small."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def train_loader(encoded: EncodedData, tokenizer, batch_size: int, seed: int = 0) -> DataLoader:
    sampler = LengthGroupedEpochSampler(encoded.lengths, batch_size, seed)
    return DataLoader(encoded.features, batch_size=batch_size, sampler=sampler,
                      collate_fn=DataCollatorWithPadding(tokenizer))


def eval_loader(encoded: EncodedData, tokenizer, batch_size: int) -> tuple[DataLoader, list[int]]:
    """Batches of examples sorted by length; returns the order, to put predictions back."""
    order = sorted(range(len(encoded)), key=encoded.lengths.__getitem__)
    loader = DataLoader(encoded.features, batch_size=batch_size, sampler=order,
                        collate_fn=DataCollatorWithPadding(tokenizer))
    return loader, order
