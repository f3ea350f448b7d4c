"""Feature files: tokenised examples on disk as named columns, read back by index.

A *token column* holds one value per token (token ids, token types, a tag per token, a character
offset per token), all examples one after another in a flat file, with the offsets of each
example in ``offsets.bin``; an *example column* holds one value per example (a label, an answer's
positions, where the example's label comes from). ``lengths.bin`` holds the tokens per example,
what length-grouped batching sorts by.
Reads are positioned (``os.pread``), so a process holds only what its batches need.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .labels import ORIGINS
from ..artifacts import read_json, read_lock
from ..errors import InputError

META_FILE = "meta.json"  # a cache's stamp and description, written last


class FeatureWriter:
    """Appends examples, a chunk at a time, to the column files of a directory."""

    def __init__(self, directory: Path, token_columns: dict[str, str], example_columns: dict[str, str],
                 max_length: int):
        self.directory = directory
        self.token_columns = {name: np.dtype(dtype) for name, dtype in token_columns.items()}
        self.example_columns = {name: np.dtype(dtype) for name, dtype in example_columns.items()}
        self.length_dtype = np.dtype("<u1") if max_length < 2**8 else np.dtype("<u2")  # 1 byte an example at 64
        self.handles = {name: open(directory / f"{name}.bin", "wb")
                        for name in ["offsets", "lengths", *self.token_columns, *self.example_columns]}
        self.handles["offsets"].write(np.zeros(1, dtype="<u8").tobytes())
        self.count = self.position = 0

    def add(self, tokens: dict[str, list], values: dict[str, list] | None = None) -> None:
        """``tokens``: for each token column, one list of values per example; ``values``: for
        each example column, one value per example."""
        lengths = np.fromiter((len(row) for row in tokens["input_ids"]), dtype=np.int64)
        for name, dtype in self.token_columns.items():
            flat = np.fromiter((value for row in tokens[name] for value in row), dtype=dtype, count=int(lengths.sum()))
            self.handles[name].write(flat.tobytes())
        for name, dtype in self.example_columns.items():
            self.handles[name].write(np.asarray(values[name], dtype=dtype).tobytes())
        self.handles["offsets"].write((self.position + np.cumsum(lengths)).astype("<u8").tobytes())
        self.handles["lengths"].write(lengths.astype(self.length_dtype).tobytes())
        self.position += int(lengths.sum())
        self.count += len(lengths)

    def finish(self) -> dict:
        for handle in self.handles.values():
            handle.close()
        return {"examples": self.count, "tokens": self.position, "length_dtype": self.length_dtype.str,
                "token_columns": {k: v.str for k, v in self.token_columns.items()},
                "example_columns": {k: v.str for k, v in self.example_columns.items()}}


def rebuilt_elsewhere(directory: Path) -> InputError:
    """The error of a cache that another run rebuilt from other inputs (the same file path, edited,
    or read otherwise) while this run was using it."""
    return InputError("this cache was rebuilt by another run from other inputs (its data file changed, or is "
                      "read with other settings) while this run used it", path=directory,
                      fix="run again; give runs that read a file being edited their own --cache-dir")


class FeatureFile(Dataset):
    """Reads the examples a ``FeatureWriter`` wrote: ``row(i)`` is a dict of lists (token
    columns) and numbers (example columns); ``lengths`` is in memory (1–2 bytes an example)."""

    def __init__(self, directory: Path, meta: dict):
        self.directory = Path(directory)
        self.meta = meta
        self.count = meta["examples"]
        self.lengths = np.fromfile(self.directory / "lengths.bin", dtype=meta["length_dtype"])
        self._token = {name: np.dtype(dtype) for name, dtype in meta["token_columns"].items()}
        self._example = {name: np.dtype(dtype) for name, dtype in meta["example_columns"].items()}
        self._files = None
        self._reading = read_lock(self.directory / META_FILE)  # in use while any view of it lives

    def __len__(self) -> int:
        return self.count

    def _handles(self) -> dict[str, int]:
        """The column files' descriptors, opened lazily, once per process (DataLoader workers fork);
        file objects own them, so they close when the last view of the cache is gone."""
        if self._files is None:
            names = ["offsets", *self._token, *self._example]
            files = {name: open(self.directory / f"{name}.bin", "rb", buffering=0) for name in names}
            # open files stay the ones opened if the folder is replaced later; until now it could have been
            if (read_json(self.directory / META_FILE) or {}).get("fingerprint") != self.meta.get("fingerprint"):
                for handle in files.values():
                    handle.close()
                raise rebuilt_elsewhere(self.directory)
            self._files = files, {name: handle.fileno() for name, handle in files.items()}
        return self._files[1]

    def __getstate__(self) -> dict:
        """Sent to a process started afresh (DataLoader workers under spawn): it opens its own files
        (the process that sent it holds the cache in use)."""
        return {**self.__dict__, "_files": None, "_reading": None}

    def __copy__(self):
        """A view in this process (``first``, ``labelled``): it shares the open files and the hold."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        return view

    def first(self, count: int | None):
        """A view of the first ``count`` examples (all when None)."""
        view = copy.copy(self)
        if count is not None and count < self.count:
            view.count, view.lengths = count, self.lengths[:count]
        return view

    def origins(self) -> dict[str, int]:
        """How many examples in view are original rows, augmented variants and unlabelled text."""
        counts = np.bincount(self.column("origin", self.count), minlength=len(ORIGINS))
        return dict(zip(ORIGINS, map(int, counts)))

    def token_counts(self) -> np.ndarray:
        """How often each token id occurs in the examples in view (read a block at a time: any size)."""
        end = int(np.fromfile(self.directory / "offsets.bin", dtype="<u8", count=self.count + 1)[-1])
        if end == 0:  # no example, or none with a token (an empty file cannot be mapped)
            return np.zeros(0, dtype=np.int64)
        ids = np.memmap(self.directory / "input_ids.bin", dtype=self._token["input_ids"], mode="r", shape=(end,))
        block = 1 << 24
        return _added([np.bincount(ids[start:start + block]) for start in range(0, end, block)])

    def column(self, name: str, count: int | None = None) -> np.ndarray:
        """A whole example column (for the few that are needed at once, e.g. to list labels)."""
        return np.fromfile(self.directory / f"{name}.bin", dtype=self._example[name], count=-1 if count is None else count)

    def row(self, index: int) -> dict:
        files = self._handles()
        start, end = (int(v) for v in np.frombuffer(os.pread(files["offsets"], 16, 8 * index), dtype="<u8"))
        row = {}
        for name, dtype in self._token.items():
            size = dtype.itemsize
            row[name] = np.frombuffer(os.pread(files[name], (end - start) * size, start * size), dtype=dtype).tolist()
        for name, dtype in self._example.items():
            row[name] = np.frombuffer(os.pread(files[name], dtype.itemsize, index * dtype.itemsize), dtype=dtype)[0].item()
        return row

    def __getitem__(self, index: int) -> dict:
        return self.row(index)


class Joined(Dataset):
    """Feature files read as one dataset, one after the other (a training file and files of
    unlabelled text); ``lengths`` and ``labelled`` as each part's."""

    def __init__(self, parts: list):
        self.parts = parts
        self.lengths = np.concatenate([part.lengths for part in parts])
        self.starts = np.cumsum([0] + [len(part) for part in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> dict:
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.parts[part][index - int(self.starts[part])]

    def labelled(self, label_space) -> "Joined":
        return Joined([part.labelled(label_space) for part in self.parts])

    def token_counts(self) -> np.ndarray:
        return _added([part.token_counts() for part in self.parts])

    def origins(self) -> dict[str, int]:
        counts = [part.origins() for part in self.parts]
        return {name: sum(count[name] for count in counts) for name in ORIGINS}


def _added(counts: list[np.ndarray]) -> np.ndarray:
    """Counts of token ids added up (the arrays as long as the largest id each saw)."""
    total = np.zeros(max((len(part) for part in counts), default=0), dtype=np.int64)
    for part in counts:
        total[:len(part)] += part
    return total
