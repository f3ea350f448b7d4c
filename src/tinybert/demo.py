"""`tinybert demo`: the whole pipeline on the bundled teacher and review snippets."""

from __future__ import annotations

import os
from pathlib import Path

from .pipeline import load_config, run_pipeline

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


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
