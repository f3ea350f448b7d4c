"""Writing augmented output a chunk at a time, resumably: what every augmentation driver shares."""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..artifacts import Stamp

logger = logging.getLogger(__name__)


def resumable_stream(units, render, output_path: Path, inputs: dict, chunk_size: int, total: int | None,
                     header: str, show_progress: bool, finish=None) -> dict:
    """Writes ``render(chunk, state) -> (text, variants)`` for consecutive chunks of ``units`` to
    OUTPUT.partial, each chunk synced to disk and then recorded (units and bytes done) in
    OUTPUT.progress.json; run again with the same inputs, it continues after the last recorded
    chunk. At the end OUTPUT.partial becomes OUTPUT (through ``finish(partial, output)`` where the
    format needs a closing step)."""
    partial = output_path.with_name(output_path.name + ".partial")
    progress = Stamp(output_path.with_name(output_path.name + ".progress.json"))
    state = {"rows": 0, "bytes": 0, "written": 0}
    if partial.exists() and progress.matches(inputs):
        state = progress.read()["state"]
        logger.info("resuming %s after %d rows", output_path, state["rows"])
    output_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(partial, "r+b" if state["bytes"] else "wb")
    handle.truncate(state["bytes"])
    handle.seek(state["bytes"])
    if not state["bytes"]:
        handle.write(header.encode("utf-8"))
    bar = tqdm(total=total, initial=state["rows"], desc="augmenting", unit="sent", disable=not show_progress,
               dynamic_ncols=True)
    started, done_before = time.perf_counter(), state["rows"]
    remaining = itertools.islice(units, done_before, None)
    while chunk := list(itertools.islice(remaining, chunk_size)):
        text, written = render(chunk, state)
        handle.write(text.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
        state.update(rows=state["rows"] + len(chunk), bytes=handle.tell(), written=state["written"] + written)
        progress.write(inputs, state=state)
        bar.update(len(chunk))
    bar.close()
    handle.close()
    if finish is None:
        os.replace(partial, output_path)
    else:
        finish(partial, output_path)
        partial.unlink()
    progress.path.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    return {"rows": state["rows"], "written": state["written"], "seconds": seconds,
            "rows_per_s": (state["rows"] - done_before) / seconds if seconds else None, "complete": True}
