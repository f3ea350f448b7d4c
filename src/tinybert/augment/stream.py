"""Writing augmented output a chunk at a time, resumably: what every augmentation driver shares.

Launched on several processes (``torchrun`` / ``accelerate launch``), chunk k of the input goes to
process k mod P, which writes it to its own share file (OUTPUT.share-R-of-P) and records where each
of its chunks ends; once every process is done, the main one joins the chunks in input order.
Each chunk is rendered from its rows alone (variants are seeded per row, and the rows counted
before it are given), so the joined file is the one a single process writes, byte for byte where
the arithmetic is (the same threads per process: sums in another order may break a near-tie
between two candidates differently).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import logging
import os
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from ..artifacts import Stamp, locked

logger = logging.getLogger(__name__)


def resumable_stream(units, render, output_path: Path, inputs: dict, chunk_size: int, total: int | None,
                     header: str, show_progress: bool, finish=None) -> dict:
    """Writes ``render(chunk, state) -> (text, variants)`` for consecutive chunks of ``units``
    (``state["rows"]``: the units before the chunk) to OUTPUT.partial, each chunk synced to disk
    and then recorded (units and bytes done) in OUTPUT.progress.json; run again with the same
    inputs, it continues after the last recorded chunk. At the end OUTPUT.partial becomes OUTPUT
    (through ``finish(partial, output)`` where the format needs a closing step). Under several
    processes each writes its share of the chunks, the main process joins them, and every
    process returns once OUTPUT is complete."""
    output_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    processes = _launched_processes()
    if processes is None:
        counts = _write_share(units, render, output_path, inputs, chunk_size, total, header, show_progress, 0, 1)
        _complete(output_path, finish)
        return _summary(*counts, started)
    from accelerate.utils import gather_object

    rank, count = processes.process_index, processes.num_processes
    counts = _write_share(units, render, output_path, inputs, chunk_size, total, header,
                          show_progress and processes.is_main_process, rank, count)
    every = gather_object([counts])  # also waits for every share to be written
    if processes.is_main_process:
        _join(output_path, header, count)
        _complete(output_path, finish)
    processes.wait_for_everyone()
    return _summary(*(sum(column) for column in zip(*every)), started)


@contextlib.contextmanager
def one_run_at_a_time(output_path: Path) -> Iterator[None]:
    """Held while a run writes OUTPUT: a second run on the same OUTPUT waits for the first, then
    finds OUTPUT complete, or continues what a killed run left (OUTPUT.partial and its progress
    are one run's at a time). Under several processes the main one holds it, the others wait for
    it. The lock leaves no file behind once the run ends."""
    processes = _launched_processes()
    main = processes is None or processes.is_main_process
    with locked(output_path, leave_no_file=True) if main else contextlib.nullcontext():
        if processes is not None:
            processes.wait_for_everyone()
        yield


def _complete(output_path: Path, finish) -> None:
    """OUTPUT.partial becomes OUTPUT; then what resuming needed goes."""
    partial = _partial(output_path)
    if finish is None:
        os.replace(partial, output_path)
    else:
        finish(partial, output_path)
        partial.unlink()
    _progress(output_path).path.unlink(missing_ok=True)
    remove_shares(output_path)  # kept until now: a run killed while joining joins them again


def remove_shares(output_path: Path) -> None:
    """Deletes what processes of a launched run left beside OUTPUT (of any process count)."""
    left = re.compile(re.escape(output_path.name) + r"\.(share-\d+-of-\d+(\.progress\.json)?|joining)")
    for leftover in output_path.parent.glob(glob.escape(output_path.name) + ".*"):
        if left.fullmatch(leftover.name) and leftover.is_file():
            leftover.unlink(missing_ok=True)


def _summary(rows: int, written: int, done_before: int, started: float) -> dict:
    seconds = time.perf_counter() - started
    return {"rows": rows, "written": written, "seconds": seconds,
            "rows_per_s": (rows - done_before) / seconds if seconds else None, "complete": True}


def _partial(output_path: Path) -> Path:
    return output_path.with_name(output_path.name + ".partial")


def _progress(output_path: Path) -> Stamp:
    return Stamp(output_path.with_name(output_path.name + ".progress.json"))


def _share(output_path: Path, rank: int, count: int) -> Path:
    return output_path.with_name(f"{output_path.name}.share-{rank}-of-{count}")


def _share_record(share: Path) -> Stamp:
    return Stamp(share.with_name(share.name + ".progress.json"))


def _launched_processes():
    """accelerate's view of the processes when launched on several (gloo on CPU), else None. The
    others wait at a collective while the main process joins the shares alone: as long as training's
    processes wait for its main one, not the backend's default (NCCL's 10 minutes)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState
    from ..training import COLLECTIVE_TIMEOUT_S
    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))


def _rows_of_share(total: int | None, chunk_size: int, rank: int, count: int) -> int | None:
    """How many of ``total`` units fall in chunks rank, rank + count, … (for the progress bar)."""
    if total is None:
        return None
    return sum(min(chunk_size, total - start) for start in range(rank * chunk_size, total, count * chunk_size))


def _write_share(units, render, output_path: Path, inputs: dict, chunk_size: int, total: int | None, header: str,
                 show_progress: bool, rank: int, count: int) -> tuple[int, int, int]:
    """Renders chunks rank, rank + count, rank + 2·count, … of ``units`` into this process's file
    (OUTPUT.partial for a single process, else its share), resuming after its last recorded chunk;
    returns (units rendered, variants written, units already done when it started)."""
    single = count == 1
    target = _partial(output_path) if single else _share(output_path, rank, count)
    progress = _progress(output_path) if single else _share_record(target)
    if not single:  # which chunks a share holds depends on their size and the number of processes
        inputs = {**inputs, "chunk_size": chunk_size, "share": [rank, count]}
    state = {"rows": 0, "bytes": 0, "written": 0}
    if target.exists() and progress.matches(inputs):
        state = progress.read()["state"]
        logger.info("resuming %s after %d rows", target, state["rows"])
    if not single:
        state.setdefault("ends", [])  # where each of its chunks ends in the share, for the join
    done_before = state["rows"]
    # a single process goes on after the units it did (whatever chunk size did them); a share after its chunks
    position = state["rows"] if single else 0  # the units before the next chunk
    remaining = itertools.islice(units, position, None)
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(open(target, "r+b" if state["bytes"] else "wb"))
        handle.truncate(state["bytes"])
        handle.seek(state["bytes"])
        if single and not state["bytes"]:
            handle.write(header.encode("utf-8"))
        bar = stack.enter_context(tqdm(
            total=total if single else _rows_of_share(total, chunk_size, rank, count), initial=state["rows"],
            desc="augmenting" if single else f"augmenting (share {rank + 1} of {count})", unit="sent",
            disable=not show_progress, dynamic_ncols=True))
        for index, chunk in enumerate(iter(lambda: list(itertools.islice(remaining, chunk_size)), [])):
            if single or (index % count == rank and index // count >= len(state["ends"])):
                text, written = render(chunk, {"rows": position})
                handle.write(text.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
                state.update(rows=state["rows"] + len(chunk), bytes=handle.tell(),
                             written=state["written"] + written)
                if not single:
                    state["ends"] = [*state["ends"], handle.tell()]
                progress.write(inputs, state=state)
                bar.update(len(chunk))
            position += len(chunk)
    progress.write(inputs, state=state)  # also for a share given no chunk: the join reads every share's record
    return state["rows"], state["written"], done_before


def _join(output_path: Path, header: str, count: int) -> None:
    """OUTPUT.partial made of the header and every share's chunks in input order (chunk k is the
    k // count-th of share k mod count)."""
    # a single process's record of OUTPUT.partial no longer describes it
    _progress(output_path).path.unlink(missing_ok=True)
    shares = [_share(output_path, rank, count) for rank in range(count)]
    states = [_share_record(share).read()["state"] for share in shares]
    joining = output_path.with_name(output_path.name + ".joining")
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(share, "rb")) for share in shares]
        joined = stack.enter_context(open(joining, "wb"))
        joined.write(header.encode("utf-8"))
        for index in range(sum(len(state["ends"]) for state in states)):
            share, own = index % count, index // count
            ends = states[share]["ends"]
            start = ends[own - 1] if own else 0
            handles[share].seek(start)
            joined.write(handles[share].read(ends[own] - start))
        joined.flush()
        os.fsync(joined.fileno())
    os.replace(joining, _partial(output_path))
