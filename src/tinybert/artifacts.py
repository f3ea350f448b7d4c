"""What tinybert writes: digests of what it read, atomic writes, and stamps.

Everything that is skipped when done or resumed when interrupted (training checkpoints, the
corpus and task-data caches, augmentation, pipeline stages, converted reference checkpoints)
asks one question: is this output complete, and was it made from these inputs? A *stamp*
answers it: a small JSON file beside the output holding the inputs (settings, and content
digests of the files read) and their fingerprint, written last and atomically.

Shared outputs (the caches every run of a user reads) are built under a file lock, each builder
in a staging folder of its own, and checked before reuse: a stamped directory whose files are
missing or shorter than when it was built is rebuilt, not trusted. A process reading a cache holds
a shared lock on its stamp, and its use sets the stamp's time: `tinybert cache` tells from them
which caches are in use and when each was last used.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from filelock import FileLock, Timeout

from .errors import InputError

LOCK_NOTICE_SECONDS = 60

logger = logging.getLogger(__name__)

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
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # two writers never share one
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
def locked(target: str | os.PathLike, leave_no_file: bool = False) -> Iterator[None]:
    """Holds the lock of ``target`` (the file ``target.lock`` beside it) for the block: one
    process at a time builds or replaces it. The lock is taken again freely by its holder. The
    lock file stays (filelock's advice: its presence says nothing of a holder) unless
    ``leave_no_file``: then it goes when the holder's outermost block ends."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # one lock object per path in a process, so that the holder may take it again
    lock = FileLock(target.with_name(target.name + ".lock"), is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("%s: waiting for another process that is building it", target)
        waited = 0
        while True:  # a large corpus may take long to build: say so now and then, never give up
            try:
                lock.acquire(timeout=LOCK_NOTICE_SECONDS)
                break
            except Timeout:
                waited += LOCK_NOTICE_SECONDS
                logger.warning("%s: still waiting after %d s for another process that is building it (if none "
                               "is running, delete %s)", target, waited, lock.lock_file)
    try:
        yield
    finally:
        if leave_no_file and lock.lock_counter == 1:
            _remove_held(lock)
        lock.release()


@contextmanager
def staged_directory(target: str | os.PathLike) -> Iterator[Path]:
    """A fresh directory of this builder's own (a unique name beside ``target``) to build
    ``target`` in, under ``target``'s lock; it replaces ``target`` only when the block ends
    without an error (and is removed when it does not), so ``target`` is never half-written."""
    target = Path(target)
    with locked(target):
        # the lock is held by whoever builds: what another builder left here was killed mid-way
        # (hidden names of tinybert's own, so no folder of the user's is taken for one)
        for kind in ("partial", "old"):
            for stale in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"):
                shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(target.with_name(target.name + ".partial"), ignore_errors=True)  # older tinybert's name
        staging = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
        staging.mkdir()  # as any directory made here (mkdtemp would make it private to this user)
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # two renames: a reader sees the old directory, none for an instant, or the new one
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)


def read_lock(stamp: Path):
    """A shared lock on a built output's stamp, held while the returned file stays open (by the
    object that reads the output, for its life): `tinybert cache clean` removes no cache that a
    process holds one on. Marks the output's last use. None where the output is gone already
    (reading it then fails with its own message)."""
    try:
        handle = open(stamp, "rb")
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise InputError(f"{stamp.parent} is being removed by `tinybert cache clean`",
                         fix="run again: the cache is built anew") from None
    _mark_used(stamp)
    return handle


def _mark_used(stamp: Path) -> None:
    with contextlib.suppress(OSError):  # a cache shared read-only keeps its time
        os.utime(stamp)


def _remove_held(lock: FileLock) -> None:
    """Removes a lock's file while still holding it, as the holder's last act under it: a process
    that opened the file before finds it gone once it holds it, and takes a new one (filelock
    checks since 3.20.4)."""
    Path(lock.lock_file).unlink(missing_ok=True)


@contextmanager
def unused(target: Path, stamp_file: str) -> Iterator[bool]:
    """Whether no process builds ``target`` (holds its lock) or reads it (a shared lock on its
    stamp) now; while a block told True runs, none can start to (so it may remove ``target``).
    The lock file goes if it was not there before, or ``target`` is gone after the block."""
    lock_path = target.with_name(target.name + ".lock")
    existed = lock_path.exists()
    lock = FileLock(lock_path, is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        with contextlib.ExitStack() as stack:
            free = True
            try:
                stamp = stack.enter_context(open(target / stamp_file, "rb"))
                fcntl.flock(stamp.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except FileNotFoundError:  # nothing built there (what a killed builder left): nobody reads it
                pass
            except BlockingIOError:
                free = False
            yield free
    finally:
        if not existed or not target.exists():
            _remove_held(lock)
        lock.release()


def build_directory(target: str | os.PathLike, stamp_file: str, inputs, build: Callable[[Path], dict]) -> bool:
    """Makes directory ``target`` with ``build(staging) -> details`` unless it holds an intact
    output made from ``inputs``; returns whether it built. The stamp (``stamp_file`` inside it,
    holding ``details``) lists the size of every file, so a directory with a file missing or cut
    short is rebuilt, with a warning saying so. Several processes asking at once: one builds,
    the others wait for it and reuse what it built."""
    target = Path(target)
    if _check(target, stamp_file, inputs) is None:
        _mark_used(target / stamp_file)
        return False
    with locked(target):
        problem = _check(target, stamp_file, inputs)  # another process may have built it while we waited
        if problem is None:
            return False
        if problem:
            logger.warning("%s %s: rebuilding it", target, problem)
        with staged_directory(target) as staging:
            details = build(staging)
            sizes = {str(path.relative_to(staging)): path.stat().st_size
                     for path in sorted(staging.rglob("*")) if path.is_file()}
            Stamp(staging / stamp_file).write(inputs, file_sizes=sizes, **details)
    return True


def is_built(target: str | os.PathLike, stamp_file: str, inputs) -> bool:
    """Whether ``target`` holds an intact output made from ``inputs`` (what ``build_directory`` reuses)."""
    return _check(Path(target), stamp_file, inputs) is None


def _check(target: Path, stamp_file: str, inputs) -> str | None:
    """None when ``target`` is intact and made from ``inputs``; otherwise why not ("" when it
    was never built or was made from other inputs: rebuilding it then is no news)."""
    try:
        record = Stamp(target / stamp_file).read()
    except (ValueError, OSError):
        return f"fails its integrity check ({stamp_file} is unreadable)"
    if record is None or record.get("fingerprint") != digest(inputs):
        return ""
    if "file_sizes" not in record:
        return "lists no file sizes to check (an older tinybert built it)"
    for name, size in record["file_sizes"].items():
        path = target / name
        if not path.is_file():
            return f"fails its integrity check ({name} is missing)"
        if path.stat().st_size != size:
            return f"fails its integrity check ({name} has {path.stat().st_size:,} bytes, {size:,} when built)"
    return None


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
