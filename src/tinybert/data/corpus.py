"""The corpus of general distillation: plain text tokenised once, streaming, into an on-disk cache.

Lines are packed greedily into examples of up to max-length tokens; a line longer than that is
cut into windows; a blank line ends a document, and examples never span documents. Training
reads examples back with positioned reads, so memory does not grow with the corpus and a
resumed run can skip straight to the batch it stopped at.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..artifacts import build_directory, digest_files, read_json, read_lock
from ..errors import InputError
from ..models.tokenizer import tokenizer_digest
from .features import META_FILE

logger = logging.getLogger(__name__)

# Lines go to the tokenizer in batches bounded by count and by characters, so the memory a
# batch takes does not depend on how long the corpus's lines happen to be.
_LINES_PER_BATCH = 2000
_CHARACTERS_PER_BATCH = 200_000


class CorpusCache(Dataset):
    """Packed examples (with [CLS] … [SEP]) read from the cache files on demand."""

    def __init__(self, directory: Path):
        meta = read_json(directory / META_FILE)
        self.fingerprint = meta["fingerprint"]
        self.cls_id, self.sep_id = meta["cls_id"], meta["sep_id"]
        self.count = meta["examples"]
        self.tokens_path = directory / "tokens.bin"
        self.offsets_path = directory / "offsets.bin"
        self.token_dtype = np.dtype(meta["dtype"])
        self._files = None
        self._reading = read_lock(directory / META_FILE)  # in use while it lives

    def __len__(self) -> int:
        return self.count

    def _handles(self):
        if self._files is None:  # opened lazily, once per process (DataLoader workers fork)
            self._files = (open(self.tokens_path, "rb"), open(self.offsets_path, "rb"))
        return self._files

    def __getstate__(self) -> dict:
        """Sent to a process started afresh (DataLoader workers under spawn): it opens its own files
        (the process that sent it holds the cache in use)."""
        return {**self.__dict__, "_files": None, "_reading": None}

    def __getitem__(self, index: int) -> dict:
        tokens, offsets = self._handles()
        start, end = np.frombuffer(os.pread(offsets.fileno(), 16, 16 * index), dtype="<u8")
        size = self.token_dtype.itemsize
        ids = np.frombuffer(os.pread(tokens.fileno(), int(end - start) * size, int(start) * size),
                            dtype=self.token_dtype)
        return {"input_ids": [self.cls_id, *ids.tolist(), self.sep_id]}


def build_corpus_cache(files: list[str | os.PathLike], tokenizer, max_length: int, directory: Path,
                       show_progress: bool = True) -> CorpusCache:
    """Tokenises the corpus files once (streaming) into ``directory``; reused while the files'
    content, the tokenizer and the length are the same and its files are intact."""
    paths = [Path(f) for f in files]
    for path in paths:
        if not path.is_file():
            raise InputError("corpus file not found", path=path, fix="check the path")
    inputs = {"files": digest_files(paths), "tokenizer": tokenizer_digest(tokenizer), "max_length": max_length}
    if build_directory(directory, META_FILE, inputs,
                       lambda staging: _tokenise(paths, tokenizer, max_length, staging, show_progress)):
        meta = read_json(directory / META_FILE)
        logger.info("corpus: %d examples, %d tokens", meta["examples"], meta["tokens"])
    return CorpusCache(directory)


def _tokenise(paths: list[Path], tokenizer, max_length: int, staging: Path, show_progress: bool) -> dict:
    dtype = np.dtype("<u2") if len(tokenizer) < 2**16 else np.dtype("<u4")
    window = max_length - 2
    examples = 0
    position = 0
    total_bytes = sum(p.stat().st_size for p in paths)
    bar = tqdm(total=total_bytes, desc="tokenising corpus", unit="B", unit_scale=True, disable=not show_progress)
    with open(staging / "tokens.bin", "wb") as tokens_out, open(staging / "offsets.bin", "wb") as offsets_out:
        pending: list[int] = []

        def emit(ids: list[int]) -> None:
            nonlocal examples, position
            tokens_out.write(np.asarray(ids, dtype=dtype).tobytes())
            offsets_out.write(np.asarray([position, position + len(ids)], dtype="<u8").tobytes())
            position += len(ids)
            examples += 1

        def add_line(ids: list[int]) -> None:
            nonlocal pending
            if len(pending) + len(ids) > window and pending:
                emit(pending)
                pending = []
            while len(ids) > window:
                emit(ids[:window])
                ids = ids[window:]
            pending = pending + ids

        for path in paths:
            for lines in _line_batches(path, bar):
                # long lines are windowed below: the tokenizer's length warning does not apply
                encoded = tokenizer([line or "" for line in lines], add_special_tokens=False,
                                    verbose=False)["input_ids"]
                for line, ids in zip(lines, encoded):
                    if line is None:  # a blank line: the document ends
                        if pending:
                            emit(pending)
                            pending = []
                    elif ids:
                        add_line(ids)
            if pending:
                emit(pending)
                pending = []
    bar.close()
    if not examples:
        raise InputError("the corpus has no text", path=paths[0], fix="give plain-text files, one sentence or "
                                                                      "paragraph per line")
    return {"examples": examples, "tokens": position, "dtype": dtype.str, "cls_id": tokenizer.cls_token_id,
            "sep_id": tokenizer.sep_token_id, "max_length": max_length, "files": [str(p) for p in paths],
            "model": tokenizer.name_or_path}


def _line_batches(path: Path, bar):
    """Batches of stripped lines, None for a blank line; never the whole file in memory."""
    batch, characters = [], 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            bar.update(len(raw))
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                raise InputError(f"not valid UTF-8 (byte {raw[error.start]:#04x})", path=path, line=number,
                                 fix="convert the corpus to UTF-8") from None
            batch.append(text or None)
            characters += len(text)
            if len(batch) == _LINES_PER_BATCH or characters >= _CHARACTERS_PER_BATCH:
                yield batch
                batch, characters = [], 0
    if batch:
        yield batch


