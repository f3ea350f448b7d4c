"""Word-vector candidates: nearest neighbours by cosine in a GloVe, word2vec or fastText file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

logger = logging.getLogger(__name__)


class WordVectors:
    """Nearest neighbours by cosine in a GloVe text, word2vec/fastText text or word2vec binary
    file (all of it). Multi-word phrase entries (``New_York``) are skipped."""

    def __init__(self, words: list[str], vectors: np.ndarray, lowercase: bool):
        self.words = words
        self.lowercase = lowercase
        matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self.unit = torch.nn.functional.normalize(matrix, dim=1)
        self.index: dict[str, int] = {}
        for i, word in enumerate(words):
            self.index.setdefault(word, i)
        for i, word in enumerate(words):  # the most frequent casing answers lower-case look-ups
            self.index.setdefault(word.lower(), i)
        self.cache: dict[str, list[str]] = {}

    @classmethod
    def load(cls, path: str | os.PathLike, lowercase: bool = False) -> "WordVectors":
        path = Path(path)
        if not path.is_file():
            raise InputError("word-vector file not found", path=path,
                             fix="pass --word-vectors a GloVe text or word2vec file")
        with open(path, "rb") as handle:
            first = handle.readline()
        header = first.split()
        has_header = len(header) == 2 and all(part.isdigit() for part in header)
        if has_header and _looks_binary(path, len(first)):
            words, vectors = _read_word2vec_binary(path)
        else:
            words, vectors = _read_text_vectors(path, skip_first=has_header)
        keep = [i for i, word in enumerate(words) if "_" not in word and " " not in word]
        logger.info("%s: %d word vectors (%d phrases skipped), dimension %d", path, len(keep),
                    len(words) - len(keep), vectors.shape[1])
        return cls([words[i] for i in keep], vectors[keep], lowercase)

    def neighbours(self, words: list[str], k: int, chunk: int = 256) -> dict[str, list[str]]:
        """K nearest neighbours of each word, one matrix product per chunk of new words, cached."""
        new = [w for w in dict.fromkeys(words) if w not in self.cache]
        known = [w for w in new if self._lookup(w) is not None]
        for word in set(new) - set(known):
            self.cache[word] = []
        for start in range(0, len(known), chunk):
            part = known[start:start + chunk]
            query = self.unit[[self._lookup(w) for w in part]]
            similarity = query @ self.unit.T
            # room for the word itself and for neighbours that fold together when lower-cased
            top = similarity.topk(min(3 * k + 1, similarity.shape[1]), dim=1).indices.tolist()
            for word, row in zip(part, top):
                self.cache[word] = self._clean(word, row, k)
        return {word: self.cache[word] for word in words}

    def _lookup(self, word: str) -> int | None:
        index = self.index.get(word)
        return self.index.get(word.lower()) if index is None else index

    def _clean(self, word: str, row: list[int], k: int) -> list[str]:
        seen = {word.lower()}
        result = []
        for index in row:
            candidate = self.words[index].lower() if self.lowercase else self.words[index]
            if candidate.lower() in seen:
                continue
            seen.add(candidate.lower())
            result.append(candidate)
            if len(result) == k:
                break
        return result


def _looks_binary(path: Path, header_length: int) -> bool:
    with open(path, "rb") as handle:
        handle.seek(header_length)
        sample = handle.read(4096)
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start < len(sample) - 4  # not just a character cut at the sample's end
    return False


def _read_word2vec_binary(path: Path) -> tuple[list[str], np.ndarray]:
    data = path.read_bytes()
    newline = data.index(b"\n")
    count, dimension = map(int, data[:newline].split())
    vectors = np.empty((count, dimension), dtype=np.float32)
    words = []
    offset = newline + 1
    width = 4 * dimension
    for row in range(count):
        space = data.index(b" ", offset)
        words.append(data[offset:space].decode("utf-8", errors="replace").strip())
        start = space + 1
        vectors[row] = np.frombuffer(data, dtype="<f4", count=dimension, offset=start)
        offset = start + width
        if offset < len(data) and data[offset:offset + 1] == b"\n":
            offset += 1
    return words, vectors


def _read_text_vectors(path: Path, skip_first: bool) -> tuple[list[str], np.ndarray]:
    words, rows, dimension = [], [], None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if skip_first and number == 1:
                continue
            parts = line.rstrip().split(" ")
            if len(parts) < 3:
                continue
            if dimension is None:
                dimension = len(parts) - 1
            if len(parts) - 1 != dimension:
                raise InputError(f"{len(parts) - 1} numbers where earlier lines have {dimension}", path=path,
                                 line=number, fix="give a GloVe/word2vec text file with one vector per line")
            try:
                rows.append(np.asarray(parts[1:], dtype=np.float32))
            except ValueError:
                raise InputError("a vector entry is not a number", path=path, line=number,
                                 fix="give a GloVe/word2vec text file: a word, then its numbers") from None
            words.append(parts[0])
    if not rows:
        raise InputError("no word vectors found", path=path, fix="give a GloVe text or word2vec file")
    return words, np.stack(rows)
