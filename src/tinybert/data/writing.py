"""Writing rows back in their file's own format (augmentation keeps the user's format), with the
mark that says which rows are augmented variants."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

from .formats import MARK, Layout, Row


def marked(layout: Layout) -> Layout:
    """The layout of augmented output: the input's, with a last column ``augmented`` (1 on a
    variant, 0 on a row of the input) unless it has one; JSONL rows get ``"augmented": true``
    on variants instead. A header-less file (the fork's) gains a header naming its columns, so
    the mark has a column and every command still reads the file."""
    if layout.format == "jsonl" or MARK in (layout.header or ()):
        return layout
    if layout.format == "fork":
        names = ["text_a", "text_b", "label"] if layout.width == 3 else ["text_a", "label"][:layout.width]
        return Layout(layout.path, "tsv", names + [MARK], "text_a", "text_b" if layout.has_pairs else None,
                      "label" if layout.width > 1 else None)
    return replace(layout, header=layout.header + [MARK])


def header_line(layout: Layout) -> str | None:
    if layout.format == "tsv":
        return "\t".join(layout.header) + "\n"
    if layout.format == "csv":
        return _csv_line(layout.header)
    return None


def format_row(layout: Layout, row: Row, text_a: str | None = None, text_b: str | None = None,
               variant: bool = False) -> str:
    """The row as a line of the file's format, with its text(s) replaced where given; marked as
    a variant when ``variant`` and the layout has the mark (see ``marked``)."""
    if layout.format == "jsonl":
        record = dict(row.fields)
        if text_a is not None:
            record[layout.text_column] = text_a
        if text_b is not None:
            record[layout.pair_column] = text_b
        if variant:
            record[MARK] = True
        return json.dumps(record, ensure_ascii=False) + "\n"
    fields = list(row.fields)
    if layout.format == "fork":
        positions = (0, 1)
    else:
        positions = (layout.header.index(layout.text_column),
                     layout.header.index(layout.pair_column) if layout.pair_column else None)
    for position, text in zip(positions, (text_a, text_b)):
        if text is not None:
            fields[position] = text
    if MARK in (layout.header or ()):
        mark = layout.header.index(MARK)
        fields += ["0"] * (mark + 1 - len(fields))  # a row of an input without the column
        if variant:
            fields[mark] = "1"
    if layout.format == "csv":
        return _csv_line(fields)
    return "\t".join(fields) + "\n"


def _csv_line(fields: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(fields)
    return buffer.getvalue()
