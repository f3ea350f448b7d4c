"""What tinybert writes: digests of what it read, atomic writes, and stamps.

Everything that is skipped when done or resumed when interrupted (training checkpoints, the
corpus and task-data caches, augmentation, pipeline stages, converted reference checkpoints)
asks one question: is this output complete, and was it made from these inputs? A *stamp*
answers it: a small JSON file beside the output holding the inputs (settings, and content
digests of the files read) and their fingerprint, written last and atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

_BLOCK = 1 << 20


def digest(value) -> str:
    """A fingerprint of a JSON-like value (dict order does not matter)."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def digest_file(path: str | os.PathLike) -> str:
    """The SHA-1 of a file's content: the same bytes anywhere, under any name or date, are the same input."""
    sha = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            sha.update(block)
    return sha.hexdigest()


def digest_files(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """One fingerprint for several files: their names (relative to ``root``) and contents."""
    parts = []
    for path in sorted(Path(p) for p in paths):
        name = str(path.relative_to(root)) if root is not None else str(path)
        parts.append([name, digest_file(path)])
    return digest(parts)


def cache_root() -> Path:
    """Where caches shared between runs live: $TINYBERT_CACHE, else ~/.cache/tinybert."""
    base = os.environ.get("TINYBERT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tinybert")
    return Path(base)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` to write it under; renamed to ``path`` when the block ends
    without an error (removed when it does not), so a reader sees the old file or the whole new
    one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    try:
        yield temporary
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    with atomic_file(path) as temporary:
        temporary.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def write_json(path: str | os.PathLike, value) -> None:
    atomic_write(path, json.dumps(value, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike):
    """The file's value, or None when it does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


@contextmanager
def staged_directory(target: str | os.PathLike) -> Iterator[Path]:
    """A fresh directory to build ``target`` in; it replaces ``target`` only when the block ends
    without an error (and is removed when it does not), so ``target`` is never half-written."""
    target = Path(target)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


class Stamp:
    """A JSON record that an output is complete (or, for a checkpoint, how far it got) and which
    inputs made it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> dict | None:
        return read_json(self.path)

    def matches(self, inputs) -> bool:
        record = self.read()
        return record is not None and record.get("fingerprint") == digest(inputs)

    def write(self, inputs, **details) -> None:
        write_json(self.path, {"fingerprint": digest(inputs), "inputs": inputs, **details})
