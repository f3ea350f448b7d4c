"""`tinybert demo`: the whole pipeline on the bundled teacher and review snippets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .pipeline import load_config, run_pipeline
from .resources import write_rotten_tomatoes_splits
from .settings import option

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


@dataclass
class DemoArguments:
    quick: bool = option(False, "a small run that ends in about five minutes")
    data: str | None = option(None, "directory with train.tsv, dev.tsv (and test.tsv) to use instead of the "
                                    "bundled Rotten Tomatoes snippets")
    output: str | None = option(None, "run directory (default runs/demo, runs/demo-quick with --quick)")
    write_data: str | None = option(None, "only write the bundled review snippets into this folder (train.tsv, "
                                          "dev.tsv, test.tsv, split by movie), to try the other commands on")

    def run(self) -> dict:
        """The pipeline's results; with ``write_data``, ``{"data": {split: path}}`` alone."""
        if self.write_data:
            if self.data:
                raise InputError("--write-data writes the bundled snippets, --data names other data",
                                 fix="give one of them")
            return {"data": write_rotten_tomatoes_splits(self.write_data)}
        return run_demo(self.output, data_dir=self.data, quick=self.quick)


def run_demo(output_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
             quick: bool = False) -> dict:
    """Runs the pipeline of ``demo.yaml`` (``configs/demo.yaml`` in the repository).

    ``data_dir`` holds ``train.tsv``, ``dev.tsv`` and optionally ``test.tsv`` (e.g. SST-2);
    by default the Rotten Tomatoes snippets are split by movie into ``RUN/data``.
    """
    overrides = []
    if output_dir is not None:
        overrides.append(("run_dir", str(output_dir)))
    if data_dir is not None:
        overrides.append(("data.dir", str(data_dir)))
    return run_pipeline(load_config(DEMO_CONFIG, overrides, quick=quick))
