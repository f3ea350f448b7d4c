"""Writing rows back in their file's own format (augmentation keeps the user's format)."""

from __future__ import annotations

import csv
import io
import json

from .formats import Layout, Row


def header_line(layout: Layout) -> str | None:
    if layout.format == "tsv":
        return "\t".join(layout.header) + "\n"
    if layout.format == "csv":
        return _csv_line(layout.header)
    return None


def format_row(layout: Layout, row: Row, text_a: str | None = None, text_b: str | None = None) -> str:
    """The row as a line of the file's format, with its text(s) replaced where given."""
    if layout.format == "jsonl":
        record = dict(row.fields)
        if text_a is not None:
            record[layout.text_column] = text_a
        if text_b is not None:
            record[layout.pair_column] = text_b
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
    if layout.format == "csv":
        return _csv_line(fields)
    return "\t".join(fields) + "\n"


def _csv_line(fields: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(fields)
    return buffer.getvalue()
