"""Compiled steps over a few static shapes.

On a GPU a small step costs the host dispatching thousands of operations one by one, not the
arithmetic (the same steps per second at batch 32 and 256). torch.compile traces a whole step
(for distillation the teacher's forward, the student's forward and the losses; backward through
AOTAutograd) into fused kernels, and on a GPU replays their launches as CUDA graphs. A graph is
reused only for a shape it has seen, so batches are padded to a few length buckets (32, 64, 128,
… up to the max length) and every training batch has the same number of rows: the short last
batch of an epoch is left out (the order is new every epoch, so other rows are left out next
time), and evaluation fills its last batch with copies that are then discarded.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from .settings import option

logger = logging.getLogger(__name__)

# On a GPU compiling takes a minute or two; it repays itself only over this many steps.
COMPILE_MIN_STEPS = 3000
SHORTEST_BUCKET = 32
RECOMPILE_LIMIT = 64

# not on/off: YAML reads those as booleans
CompileSetting = Literal["auto", "always", "never"]


def compile_option(what: str):
    """The ``--compile`` setting of a command that runs ``what``."""
    return option("auto", f"torch.compile {what} over a few static shapes (CUDA graphs on a GPU): always, never, "
                          f"or auto (on a GPU, for runs of {COMPILE_MIN_STEPS:,} steps or more)")


def length_buckets(max_length: int) -> tuple[int, ...]:
    """32, 64, 128, … doubling below ``max_length``, then ``max_length`` itself."""
    buckets, length = [], SHORTEST_BUCKET
    while length < max_length:
        buckets.append(length)
        length *= 2
    return (*buckets, max_length)


@dataclass(frozen=True)
class StaticShapes:
    """Batches of exactly ``rows`` rows, each padded to one of ``lengths`` tokens."""

    lengths: tuple[int, ...]
    rows: int

    def width(self, longest: int) -> int:
        """The bucket a batch whose longest example has ``longest`` tokens is padded to."""
        return next((length for length in self.lengths if length >= longest), longest)

    def fill_rows(self, inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        """``inputs`` with the batch filled up to ``rows`` rows by copies of its first (for
        evaluation, whose outputs for the copies are dropped), and how many rows are real."""
        real = next(iter(inputs.values())).shape[0]
        if real >= self.rows:
            return inputs, real
        return {key: torch.cat([value, value[:1].expand(self.rows - real, *value.shape[1:])])
                for key, value in inputs.items()}, real


def decide(setting: CompileSetting, device: torch.device, steps: int) -> bool:
    """``auto`` compiles on a GPU when the run is long enough to repay the compiling."""
    if setting == "auto":
        return device.type == "cuda" and steps >= COMPILE_MIN_STEPS
    return setting == "always"


def static_shapes(setting: CompileSetting, device: torch.device, *, rows: int, max_length: int, examples: int,
                  epochs: float = 1.0, max_steps: int | None = None, rows_per_step: int | None = None
                  ) -> StaticShapes | None:
    """The shapes of a run's batches when its steps are compiled, else None (batches then pad to
    their own longest example). ``rows_per_step``: examples one optimizer step takes in all
    processes (``rows`` by default), to count the run's steps."""
    steps = math.ceil(examples / (rows_per_step or rows) * epochs)
    if max_steps:
        steps = min(steps, max_steps)
    compiled = decide(setting, device, steps)
    logger.info("compile %s: %s (%s, about %d steps)", setting, "on" if compiled else "off", device.type, steps)
    return StaticShapes(length_buckets(max_length), rows) if compiled else None


def compile_module(module: torch.nn.Module, device: torch.device, cuda_graphs: bool = True) -> torch.nn.Module:
    """``module`` through torch.compile for static shapes; on a GPU its launches are replayed as
    CUDA graphs unless ``cuda_graphs`` is False (gradients accumulated over several batches would
    live in the graphs' memory, which each replay overwrites)."""
    # two compiled graphs (training and evaluation) per length bucket, and a pipeline's stages in one
    # process, share transformers' wrapper functions: dynamo's default of 8 graphs each would fall
    # back to eager code, with only a warning
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    graphs = device.type == "cuda" and cuda_graphs
    return torch.compile(module, dynamic=False, mode="reduce-overhead" if graphs else None)


class CompiledStep:
    """``compute(module, batch)`` with ``module`` through torch.compile. ``first_of_shape(batch)``
    times the step (forward and backward) that compiles for a new shape, and ``summary`` says once
    how long compiling took in all."""

    def __init__(self, module: torch.nn.Module, device: torch.device, what: str, cuda_graphs: bool = True):
        self.module = compile_module(module, device, cuda_graphs)
        self.what = what
        self.seconds: dict[tuple, float] = {}

    def __call__(self, compute, batch: dict) -> dict:
        outputs = compute(self.module, batch)
        # on a GPU the outputs live in the CUDA graphs' memory, which the next step overwrites
        return {name: value.clone() for name, value in outputs.items()}

    @contextmanager
    def first_of_shape(self, batch: dict):
        """Times the block when the batch's shape is new (its forward compiles at once, its backward
        when first run)."""
        shape = tuple(batch["input_ids"].shape)
        if shape in self.seconds:
            yield
            return
        start = time.perf_counter()
        yield
        self.seconds[shape] = time.perf_counter() - start
        logger.info("%s: compiled the step for batches of %s in %.1f s", self.what, " × ".join(map(str, shape)),
                    self.seconds[shape])

    def summary(self) -> None:
        logger.info("%s: compiling took %.1f s for %d shape(s) (%s)", self.what, sum(self.seconds.values()),
                    len(self.seconds), ", ".join(" × ".join(map(str, shape)) for shape in self.seconds))
