"""Token caches: every example of a task file tokenised once, on disk, read back by index.

Training and evaluation read task data from here, so memory does not grow with the number of
rows and every process of a multi-GPU run reads only the examples of its own batches. One
directory per (file, task, tokenizer, max length), in the feature files of ``features.py``,
stamped in ``meta.json`` with what it was made from and each file's size; it is rebuilt in place
when the file's content, the tokenizer, the length or the column options change, or when a file
of it is missing or cut short. Runs sharing a cache build it once, under a lock. Labels are stored as indices
into the file's own label table (in ``meta.json``, with each label's first line; -1: none), so a
cache serves any model that reads them; beside each, where its label comes from (an original row,
an augmented variant, unlabelled text: ``labels.ORIGINAL`` ...). This module holds text
classification's cache and what all caches share; ``tagging.py`` and ``squad.py`` build those of
token classification and QA.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..artifacts import build_directory, cache_root, digest, digest_file, read_json
from ..errors import InputError
from ..models.tokenizer import tokenizer_digest
from .formats import report_bad_lines
from .options import DataOptions, TaskLabels, count_lines
from .labels import LabelSpace, origin_of
from .batching import IGNORED_LABEL, TextEncoder, warn_truncated
from .features import META_FILE, FeatureFile, FeatureWriter, rebuilt_elsewhere

logger = logging.getLogger(__name__)

CACHE_DIR = "token_cache"  # inside a stage's output directory, unless --cache-dir says otherwise
VERSION = 4
_CHUNK_ROWS = 2048
_SKIPPED_SHOWN = 100


class TokenCache(FeatureFile):
    """The cached examples of a text-classification file, as features for the collator;
    ``labelled`` and ``first`` give views with labels encoded for a model, or the first N only."""

    def __init__(self, directory: str | os.PathLike, meta: dict):
        super().__init__(Path(directory), meta)
        self.path = self.meta["source"]
        self.has_pairs = self.meta["pairs"]
        self._label_values: list | None = None

    @property
    def raw_labels(self) -> dict[str, int]:
        """The distinct labels of the examples in view, as written in the file, with their first line."""
        table = dict(zip(self.meta["labels"], self.meta["label_lines"]))
        if self.count == self.meta["examples"]:
            return table
        used = np.unique(self.column("label", self.count))
        return {self.meta["labels"][i]: self.meta["label_lines"][i] for i in used if i >= 0}

    def labelled(self, label_space: LabelSpace) -> "TokenCache":
        """A view whose examples carry their label encoded in ``label_space`` (an unknown label is
        an error naming its first line)."""
        view = copy.copy(self)
        view._label_values = [label_space.encode_value(raw, self.path, line)
                              for raw, line in zip(self.meta["labels"], self.meta["label_lines"])]
        # last, so that a row without a label (index -1) reads it: a placeholder of the labels' type no loss reads
        view._label_values.append(float(IGNORED_LABEL) if label_space.is_regression else IGNORED_LABEL)
        return view

    def __getitem__(self, index: int) -> dict:
        row = self.row(index)
        label = row.pop("label")
        if self._label_values is not None:
            row["labels"] = self._label_values[label]
        return row


def data_fingerprints(train: TokenCache, dev: TokenCache | None) -> dict:
    """What a training checkpoint must have been made from to be resumed: the same examples of the
    same files, tokenised the same way."""
    return {"train": train.meta["fingerprint"], "examples": len(train),
            "eval": dev.meta["fingerprint"] if dev is not None else None}


def cached_features(path: Path, inputs: dict, directory: Path, build, tokenizer) -> dict:
    """Makes ``directory`` with ``build(staging) -> meta`` unless it holds an intact cache made
    from ``inputs`` (stamped in its meta.json, written last, with the model ``tokenizer`` came
    from); one process builds, others wait. Returns the meta, of the cache made from ``inputs``
    (not one another run has put there since)."""
    built = build_directory(directory, META_FILE, inputs,
                            lambda staging: {**build(staging), "model": tokenizer.name_or_path})
    meta = read_json(directory / META_FILE) or {}
    if meta.get("fingerprint") != digest(inputs):
        raise rebuilt_elsewhere(directory)
    if built:
        logger.info("%s: %d examples tokenised into %s", path, meta["examples"], directory)
    return meta


def cache_directory(path: Path, kind: str, tokenizer, max_length: int, options: DataOptions,
                    default_dir: str | os.PathLike | None, **more) -> tuple[Path, dict]:
    """Where the cache of ``path`` lives (``options.cache_dir``, else ``default_dir``, else the user
    cache) and the inputs it is made from: the file's content, the tokenizer, the length, the
    columns, and ``more`` settings of its kind (each set of them gets its own folder)."""
    if not path.is_file():
        raise InputError("file not found", path=path, fix="check the path")
    columns = [options.text_column, options.pair_column, options.label_column]
    inputs = {"file": digest_file(path), "tokenizer": tokenizer_digest(tokenizer), "max_length": max_length,
              "columns": columns, "skip_bad_lines": options.skip_bad_lines, "kind": kind, "version": VERSION, **more}
    named_by = [str(path.resolve()), kind, inputs["tokenizer"], max_length, columns, options.skip_bad_lines] + \
        ([more] if more else [])
    name = f"{path.stem}-{digest(named_by)[:12]}"
    return Path(options.cache_dir or default_dir or cache_root() / "tokens") / name, inputs


def task_cache(path: str | os.PathLike, tokenizer, max_length: int, options: DataOptions,
               default_dir: str | os.PathLike | None = None, show_progress: bool = True,
               labels: str = "required") -> TokenCache:
    """The token cache of a text-classification file, in ``options.cache_dir`` (else
    ``default_dir``, else the user cache), built now unless one made from the same inputs is
    there. ``options.max_examples`` is not applied here (``TokenCache.first`` does). ``labels``:
    required, optional or ignored (see ``labels.py``)."""
    path = Path(path)
    directory, inputs = cache_directory(path, "sequence", tokenizer, max_length, options, default_dir, labels=labels)
    meta = cached_features(path, inputs, directory,
                           lambda staging: _build(path, tokenizer, max_length, options, staging, show_progress, labels),
                           tokenizer)
    cache = TokenCache(directory, meta)
    # what the build said, said again on every use of the cache
    if cache.meta["skipped"]:
        report_bad_lines(str(path), cache.meta["skipped_lines"], True, total=cache.meta["skipped"])
    warn_truncated(path, cache.meta["truncated"], cache.meta["examples"], max_length)
    return cache


def token_columns(tokenizer, **more: str) -> dict[str, str]:
    """The token columns every cache has: ids (2 bytes, or 4 for a large vocabulary) and, where the
    model takes them, token types (1 byte)."""
    columns = {"input_ids": "<u2" if len(tokenizer) < 2**16 else "<u4"}
    if "token_type_ids" in tokenizer.model_input_names:
        columns["token_type_ids"] = "<u1"
    return {**columns, **more}


def check_length(max_length: int) -> None:
    if max_length >= 2**16:
        raise InputError(f"--max-length {max_length} is beyond the cache's 65,535 tokens", fix="use a shorter length")


def write_in_chunks(path: Path, records, writer: FeatureWriter, add, options: DataOptions, show_progress: bool,
                    chunk_size: int, nothing: str, fix: str) -> dict:
    """Reads ``records`` (each with its ``line`` and a ``problem`` or None) a chunk at a time and
    hands the good ones to ``add``, with a progress bar over the file's lines. Malformed ones stop
    the build (named with their lines) unless ``options.skip_bad_lines``. Returns the writer's
    meta with the count and first lines of the malformed ones."""
    bad: list[tuple[int, str]] = []
    skipped = 0
    bar = tqdm(total=count_lines(path) if show_progress else None, desc=f"tokenising {path.name}", unit="line",
               unit_scale=True, disable=not show_progress, leave=False)
    try:
        while chunk := list(itertools.islice(records, chunk_size)):
            good = []
            for record in chunk:
                if record.problem is None:
                    good.append(record)
                    continue
                skipped += 1
                if len(bad) < _SKIPPED_SHOWN:
                    bad.append((record.line, record.problem))
            if good:
                add(good)
            bar.update(chunk[-1].line - bar.n)
    finally:
        meta = writer.finish()
        bar.close()
    if bad and not options.skip_bad_lines:
        report_bad_lines(str(path), bad, False, total=skipped)
    if not meta["examples"]:
        raise InputError(nothing, path=path, fix=fix)
    return {**meta, "skipped": skipped, "skipped_lines": bad}


def _build(path: Path, tokenizer, max_length: int, options: DataOptions, staging: Path, show_progress: bool,
           labels: str) -> dict:
    check_length(max_length)
    layout, rows = options.open(path, require_labels=labels == "required", read_labels=labels != "ignored")
    pairs = layout.has_pairs
    encoder = TextEncoder(tokenizer, max_length)
    writer = FeatureWriter(staging, token_columns(tokenizer), {"label": "<i4", "origin": "<u1"}, max_length)
    table: dict[str, int] = {}
    first_lines: list[int] = []
    truncated = 0

    def add(chunk) -> None:
        nonlocal truncated
        good = [row.example for row in chunk if row.example is not None]
        if not good:
            return
        tokens = encoder([e.text_a for e in good], [e.text_b or "" for e in good] if pairs else None)
        read = [e.label if labels != "ignored" else None for e in good]
        for example, label in zip(good, read):
            if label is not None and label not in table:
                table[label] = len(table)
                first_lines.append(example.line)
        writer.add({"input_ids": tokens.input_ids, "token_type_ids": tokens.token_type_ids},
                   {"label": [-1 if label is None else table[label] for label in read],
                    "origin": [origin_of(e.augmented, label is not None) for e, label in zip(good, read)]})
        truncated += tokens.truncated

    meta = write_in_chunks(path, rows, writer, add, options, show_progress, _CHUNK_ROWS, "no usable examples",
                           "check the file's format and columns")
    if table:  # labels no model can read: stop here
        LabelSpace.infer(TaskLabels(str(path), dict(zip(table, first_lines))))
    return {**meta, "source": str(path), "pairs": pairs, "labels": list(table), "label_lines": first_lines,
            "truncated": truncated}
