"""Reading the task files users have, and writing rows back in the same format.

Formats (chosen by file extension, then by content):

* ``.jsonl`` / ``.json``: one JSON object per line.
* ``.csv``: comma-separated with a header row.
* anything else is tab-separated: GLUE TSV with a header row (columns picked by name), or the
  simplified fork's header-less ``text<TAB>label`` / ``text_a<TAB>text_b<TAB>label`` lines.

Rows are streamed (one at a time), so augmentation and prediction run on files of any size.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import InputError

logger = logging.getLogger(__name__)

# Column names recognised in files with a header, in order of preference.
TEXT_COLUMNS = ("sentence1", "question", "question1", "premise", "text_a", "sentence", "text", "review")
PAIR_COLUMNS = ("sentence2", "text_b", "question2", "hypothesis", "sentence")
LABEL_COLUMNS = ("label", "labels", "score", "gold_label", "target", "class", "category")
KNOWN_COLUMNS = frozenset(TEXT_COLUMNS + PAIR_COLUMNS + LABEL_COLUMNS + ("idx", "index", "id"))
# The column (or JSON key) `tinybert augment` marks its variants with: 1 (true) on a variant
MARK = "augmented"

_BAD_LINES_SHOWN = 5
_PEEK_LINES = 1000  # lines read ahead to find a header-less file's field count


@dataclass
class Example:
    text_a: str
    text_b: str | None
    label: str | None  # raw text of the label; interpreted by a LabelSpace
    line: int  # 1-based line number in the source file, for error messages
    augmented: bool = False  # a variant written by `tinybert augment`


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

    @property
    def raw_labels(self) -> dict[str, int]:
        """The distinct labels, as written in the file, with the line each first appears on."""
        labels: dict[str, int] = {}
        for example in self.examples:
            if example.label is not None:
                labels.setdefault(example.label, example.line)
        return labels

    def __len__(self) -> int:
        return len(self.examples)


def is_float(value: str) -> bool:
    """A finite number (a regression score, or a numeric label)."""
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Reading (streamed: one row at a time, so augmentation can run on files of any size)


@dataclass
class Layout:
    """How a file is laid out, as found from its name and first lines; enough to write rows back."""

    path: str
    format: str  # "jsonl", "csv", "tsv" (with header) or "fork" (no header)
    header: list[str] | None = None
    text_column: str | None = None
    pair_column: str | None = None
    label_column: str | None = None
    width: int | None = None  # fields per line, for the fork's format
    numeric_labels: bool = False  # fork's format: nearly all labels are numbers

    @property
    def has_pairs(self) -> bool:
        return bool(self.pair_column) or (self.format == "fork" and self.width == 3)


@dataclass
class Row:
    line: int
    fields: list[str] | dict  # as read (a list of fields, or a JSON object), for writing back
    example: Example | None  # None when the row is malformed
    problem: str | None = None


def open_task_file(path: str | os.PathLike, *, text_column: str | None = None,
                   pair_column: str | None = None, label_column: str | None = None,
                   require_labels: bool = True, read_labels: bool = True) -> tuple[Layout, Iterator[Row]]:
    """The file's layout and a stream of its rows (malformed rows carry a ``problem``). Without
    ``read_labels`` (unlabelled text given as such) no label column is looked for: not even
    ``label_column``, which names the labelled files' column."""
    path = str(path)
    if not os.path.isfile(path):
        raise InputError("file not found", path=path, fix="check the path")
    lines = utf8_lines(path)
    peeked = list(itertools.islice(lines, _PEEK_LINES))
    if not any(line.strip() for _, line in peeked):
        raise InputError("the file is empty", path=path, fix="give a file with one example per line")
    lines = itertools.chain(peeked, lines)
    suffix = Path(path).suffix.lower()
    columns = (text_column, pair_column, label_column)
    if suffix in (".jsonl", ".json"):
        return _jsonl_rows(path, lines, *columns, require_labels, read_labels)
    if suffix == ".csv":
        return _delimited_rows(path, lines, ",", *columns, require_labels, read_labels)
    first = next(line for _, line in peeked if line.strip())
    if _has_header(first.rstrip("\r\n").split("\t"), columns):
        return _delimited_rows(path, lines, "\t", *columns, require_labels, read_labels)
    return _fork_rows(path, peeked, lines, require_labels)


def read_task_file(path: str | os.PathLike, *, text_column: str | None = None,
                   pair_column: str | None = None, label_column: str | None = None,
                   skip_bad_lines: bool = False, require_labels: bool = True) -> TaskData:
    """Read a whole task file in any supported format.

    Lines with the wrong number of fields, an empty text or a missing label are "bad": they are
    reported (count and first line numbers) and the read fails, unless ``skip_bad_lines``.
    """
    layout, rows = open_task_file(path, text_column=text_column, pair_column=pair_column,
                                  label_column=label_column, require_labels=require_labels)
    examples, bad = [], []
    for row in rows:
        if row.problem:
            bad.append((row.line, row.problem))
        else:
            examples.append(row.example)
    data = TaskData(layout.path, examples, layout.format, layout.text_column, layout.pair_column,
                    layout.label_column, layout.header)
    if bad:
        report_bad_lines(layout.path, bad, skip_bad_lines)
        data.skipped_lines = [number for number, _ in bad]
    if not data.examples:
        raise InputError("no usable examples", path=layout.path, fix="check the file's format and columns")
    return data


def report_bad_lines(path: str, bad: list[tuple[int, str]], skip_bad_lines: bool, total: int | None = None) -> None:
    """Fails on malformed lines (count, first line numbers, first problem) unless they are skipped.
    ``total``: how many there are, when ``bad`` holds only the first ones."""
    total = total or len(bad)
    shown = ", ".join(str(number) for number, _ in bad[:_BAD_LINES_SHOWN])
    more = ", …" if total > _BAD_LINES_SHOWN else ""
    summary = f"{total} malformed line(s) (lines {shown}{more}); line {bad[0][0]}: {bad[0][1]}"
    if not skip_bad_lines:
        raise InputError(summary, path=path, fix="correct those lines, or pass --skip-bad-lines to leave them out")
    logger.warning("%s: skipping %s", path, summary)


def utf8_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text with its line ending) pairs; a byte-order mark is dropped."""
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
            yield number, text.lstrip("\ufeff") if number == 1 else text


def json_lines(path: str) -> Iterator[tuple[int, object, str | None]]:
    """(line number, parsed record, problem) for each non-blank line of a JSONL file; a line that
    is not JSON comes with its problem and no record."""
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as error:
            yield number, None, f"not valid JSON ({error.msg})"


def _has_header(first_fields: list[str], columns: Sequence[str | None]) -> bool:
    names = {name.strip().lower() for name in first_fields}
    wanted = {c.lower() for c in columns if c}
    return bool(names & (KNOWN_COLUMNS | wanted))


def _pick_columns(path: str, header: list[str], text_column, pair_column, label_column,
                  require_labels: bool, read_labels: bool) -> tuple[str, str | None, str | None]:
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
    label = (named("--label-column", label_column) or first_of(LABEL_COLUMNS, {text})) if read_labels else None
    if label is None and require_labels:
        raise InputError(f"no label column among {', '.join(header)}", path=path, line=1,
                         fix="name it with --label-column (e.g. --label-column label)")
    pair = named("--pair-column", pair_column)
    if pair is None and pair_column is None:
        pair = first_of(PAIR_COLUMNS, {text, label})
    return text, pair, label


def _row(number, fields, text_a, text_b, label, require_labels, augmented=False) -> Row:
    text_a = (text_a or "").strip()
    text_b = None if text_b is None else text_b.strip()
    label = None if label is None else str(label).strip()
    if not text_a:
        return Row(number, fields, None, "the text is empty")
    if text_b is not None and not text_b:
        return Row(number, fields, None, "the second text of the pair is empty")
    if require_labels and not label:
        return Row(number, fields, None, "the label is empty")
    return Row(number, fields, Example(text_a, text_b, label or None, number, augmented))


def _delimited_rows(path, lines, delimiter, text_column, pair_column, label_column, require_labels, read_labels):
    if delimiter == "\t":
        # GLUE files contain unbalanced quotes: fields are split on tabs only.
        records = ((number, line.rstrip("\r\n").split("\t")) for number, line in lines if line.strip())
    else:
        reader = csv.reader(line for _, line in lines)
        records = ((reader.line_num, record) for record in reader if any(field.strip() for field in record))
    _, header = next(records)
    header = [name.strip() for name in header]
    text, pair, label = _pick_columns(path, header, text_column, pair_column, label_column, require_labels,
                                      read_labels)
    index = {name: i for i, name in enumerate(header)}
    layout = Layout(path, "tsv" if delimiter == "\t" else "csv", header, text, pair, label)
    mark = index.get(MARK)

    def rows():
        for number, fields in records:
            if len(fields) != len(header):
                yield Row(number, fields, None, f"{len(fields)} fields where the header has {len(header)}")
                continue
            yield _row(number, fields, fields[index[text]], fields[index[pair]] if pair else None,
                       fields[index[label]] if label else None, require_labels, mark is not None and
                       fields[mark] == "1")
    return layout, rows()


def _jsonl_rows(path, lines, text_column, pair_column, label_column, require_labels, read_labels):
    parsed = ((number, _parse_json(line)) for number, line in lines if line.strip())
    first = next(((n, r) for n, r in parsed if isinstance(r, dict)), None)
    if first is None:
        raise InputError("no JSON object on any line", path=path, fix="write one JSON object per line")
    header = list(first[1])
    text, pair, label = _pick_columns(path, header, text_column, pair_column, label_column, require_labels,
                                      read_labels)
    layout = Layout(path, "jsonl", header, text, pair, label)

    def rows():
        for number, record in itertools.chain([first], parsed):
            if isinstance(record, str):
                yield Row(number, {}, None, record)
                continue
            missing = [name for name in (text, pair, label) if name and name not in record]
            if missing:
                yield Row(number, record, None, f"missing key {missing[0]!r}")
                continue
            yield _row(number, record, record[text], record[pair] if pair else None,
                       record[label] if label else None, require_labels, record.get(MARK) is True)
    return layout, rows()


def _parse_json(line: str) -> dict | str:
    """The object on a line, or a description of what is wrong with it."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return f"not valid JSON ({error.msg})"
    return record if isinstance(record, dict) else "not a JSON object"


def _fork_rows(path, peeked, lines, require_labels):
    """Header-less ``text[\\ttext_b]\\tlabel`` lines: the field count is the most common one among
    the first lines. In such files a shifted line puts text where the label belongs: when nearly
    every label there is a number, a non-numeric "label" marks a malformed line."""
    sample = [line.rstrip("\r\n").split("\t") for _, line in peeked if line.strip()]
    width = Counter(len(fields) for fields in sample).most_common(1)[0][0]
    if width > 3 or (require_labels and width == 1):
        raise InputError(f"found {width} tab-separated field(s) per line and no header", path=path, line=1,
                         fix="use `text<TAB>label` or `text_a<TAB>text_b<TAB>label` lines, "
                             "or add a header row naming the columns (sentence, label, ...)")
    labelled = width > 1  # a single field is unlabelled text (accepted where labels are optional)
    numeric = labelled and sum(is_float(f[-1]) for f in sample) >= 0.99 * len(sample)
    layout = Layout(path, "fork", width=width, numeric_labels=numeric)

    def rows():
        for number, line in lines:
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != width:
                yield Row(number, fields, None, f"{len(fields)} tab-separated fields where the file has {width}")
                continue
            texts = fields[:-1] if labelled else fields
            label = fields[-1] if labelled else None
            if numeric and not is_float(label):
                yield Row(number, fields, None, f"the label column holds {label[:30]!r}, not a number")
                continue
            yield _row(number, fields, texts[0], texts[1] if len(texts) > 1 else None, label, require_labels)
    return layout, rows()
