"""`tinybert cache`: the caches tinybert keeps, listed and removed, as `huggingface-cli scan-cache`
and `delete-cache` do for the Hub's downloads.

Four kinds pile up: token caches (a task file tokenised for one tokenizer and length), corpus
caches (general distillation's text), teacher outputs (stage 2's), and converted reference-code
checkpoints. Each is a directory its builder stamped (``artifacts.build_directory``); the stamp
says what it was made from, and its time is the cache's last use. A cache is in use while a
command builds it (holds its lock) or reads it (holds a shared lock on its stamp): `clean` leaves
those alone.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .artifacts import cache_root, read_json, unused
from .data.features import META_FILE
from .distillation.teacher_outputs import STAMP_FILE as TEACHER_OUTPUTS_STAMP
from .models.legacy import CONVERTED_STAMP
from .settings import option

# what a builder may leave beside a cache when it is killed: its staging folder, the folder it replaced,
# the processes' shares of teacher outputs
_LEFT_BY_BUILDERS = ("partial-", "old-", "shares-")


@dataclass
class Cache:
    path: Path
    stamp_file: str
    kind: str
    source: str
    model: str
    size: int  # bytes
    last_used: float  # seconds since the epoch

    def in_use(self) -> bool:
        with unused(self.path, self.stamp_file) as free:
            return not free


def _described(path: Path, stamp_file: str, stamp: dict) -> tuple[str, str, str]:
    """(kind, source, model) of a cache from its stamp (older caches may lack the model)."""
    inputs = stamp.get("inputs", {})
    if stamp_file == TEACHER_OUTPUTS_STAMP:
        return "teacher outputs", ", ".join(stamp.get("sources", [])), stamp.get("teacher", "?")
    if stamp_file == CONVERTED_STAMP:
        return "converted checkpoint", stamp.get("source_dir", "?"), stamp.get("source_dir", "?")
    if "files" in stamp:  # general distillation's corpus
        return "corpus", ", ".join(stamp["files"]), stamp.get("model", "?")
    return f"tokens ({inputs.get('kind', '?')})", stamp.get("source", "?"), stamp.get("model", "?")


def scan(root: str | os.PathLike) -> list[Cache]:
    """Every cache under ``root`` (searched through), oldest use first."""
    found = []
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(name for name in folders if not name.startswith("."))  # builds under way
        stamp_file = next((name for name in (META_FILE, TEACHER_OUTPUTS_STAMP, CONVERTED_STAMP) if name in files), None)
        stamp = read_json(Path(directory) / stamp_file) if stamp_file else None
        if not isinstance(stamp, dict) or "file_sizes" not in stamp:  # not a stamp of ours
            continue
        folders[:] = []
        path = Path(directory)
        size = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
        found.append(Cache(path, stamp_file, *_described(path, stamp_file, stamp), size,
                           (path / stamp_file).stat().st_mtime))
    return sorted(found, key=lambda cache: cache.last_used)


def remove(caches: list[Cache]) -> tuple[list[Cache], list[Cache]]:
    """Removes each cache no command uses now (with what killed builders of it left beside it);
    returns (removed, left because in use)."""
    removed, in_use = [], []
    for cache in caches:
        with unused(cache.path, cache.stamp_file) as free:
            if not free:
                in_use.append(cache)
                continue
            shutil.rmtree(cache.path)
            for kind in _LEFT_BY_BUILDERS:
                for left in cache.path.parent.glob(f".{cache.path.name}.{kind}*"):
                    shutil.rmtree(left, ignore_errors=True)
            removed.append(cache)
    return removed, in_use


def remove_unfinished(root: str | os.PathLike) -> int:
    """Removes what builders killed before they finished left under ``root`` (the lock file of a
    cache that does not exist, and their staging folders) unless a builder holds that lock now.
    Returns how many such builds it cleared."""
    count = 0
    for lock in Path(root).rglob("*.lock"):
        target = lock.with_suffix("")
        if target.exists():
            continue
        with unused(target, META_FILE) as free:  # the lock file goes with it
            if free:
                for kind in _LEFT_BY_BUILDERS:
                    for left in lock.parent.glob(f".{target.name}.{kind}*"):
                        shutil.rmtree(left, ignore_errors=True)
                count += 1
    return count


def format_size(size: float) -> str:
    """1.2M: sizes as `huggingface-cli scan-cache` writes them."""
    units = ["B", "K", "M", "G", "T"]
    unit = 0
    while size >= 1000 and unit < len(units) - 1:
        size, unit = size / 1000, unit + 1
    return f"{size:.0f}B" if unit == 0 else f"{size:.1f}{units[unit]}"


def format_age(moment: float, now: float | None = None) -> str:
    seconds = max(0.0, (now or time.time()) - moment)
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = int(seconds // length)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "a few seconds ago"


def format_caches(caches: list[Cache]) -> str:
    """A table of ``caches``, one a line, as `huggingface-cli scan-cache` prints its repositories."""
    header = ("KIND", "SOURCE", "MODEL", "SIZE", "LAST USED", "IN USE", "PATH")
    rows = [header] + [(cache.kind, cache.source, cache.model, format_size(cache.size), format_age(cache.last_used),
                        "yes" if cache.in_use() else "", str(cache.path)) for cache in caches]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in rows)


@dataclass
class CacheArguments:
    action: Literal["list", "clean"] = option(
        "list", "list: every cache with its kind, source file, model, size and last use; clean: remove caches "
                "(never one a running command builds or reads)", positional=True, required=True)
    cache_dir: str | None = option(None, "the folder of caches, searched through (default: the user cache, "
                                         "$TINYBERT_CACHE or ~/.cache/tinybert; commands given no --cache-dir keep "
                                         "theirs in their output's token_cache)")
    older_than: float | None = option(None, "clean: only caches last used more than this many days ago")
    yes: bool = option(False, "clean: remove without asking")

    @property
    def root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else cache_root()

    def caches(self) -> list[Cache]:
        """The caches the action applies to: every one for list; for clean, those unused for longer
        than ``older_than`` days."""
        found = scan(self.root) if self.root.is_dir() else []
        if self.action == "clean" and self.older_than is not None:
            found = [cache for cache in found if cache.last_used < time.time() - self.older_than * 86400]
        return found
