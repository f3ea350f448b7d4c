"""`-` for standard input and output, as command-line tools spell them.

The task-file readers choose a format by a file's name and content and read a file more than
once (its layout, then its rows), so standard input is first copied to a temporary file whose
name says what its first bytes look like; a bad line is then reported as one of standard input.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InputError

STANDARD_STREAM = "-"
_HEAD_BYTES = 1 << 16


def is_standard_stream(path: str | os.PathLike | None) -> bool:
    return path is not None and str(path) == STANDARD_STREAM


def _suffix(head: bytes) -> str:
    """JSON (a SQuAD file) or JSON lines when the input opens with ``{``; otherwise text, which the
    readers tell apart by content (TSV with a header, the fork's lines, CoNLL columns)."""
    if not head.lstrip().startswith(b"{"):
        return ".txt"
    return ".json" if b'"paragraphs"' in head else ".jsonl"


@contextlib.contextmanager
def standard_input_file() -> Iterator[Path]:
    """Standard input, copied to a temporary file for the block's duration; an ``InputError`` about
    that file names standard input instead."""
    with tempfile.TemporaryDirectory(prefix="tinybert-stdin-") as folder:
        head = sys.stdin.buffer.read(_HEAD_BYTES)
        path = Path(folder) / f"stdin{_suffix(head)}"
        with open(path, "wb") as handle:
            handle.write(head)
            shutil.copyfileobj(sys.stdin.buffer, handle)
        try:
            yield path
        except InputError as error:
            if error.path != str(path):
                raise
            raise InputError(error.problem, path="standard input", line=error.line, fix=error.fix) from None


def copy_to_standard_output(path: str | os.PathLike) -> None:
    sys.stdout.flush()
    with open(path, "rb") as handle:
        shutil.copyfileobj(handle, sys.stdout.buffer)
    sys.stdout.buffer.flush()
