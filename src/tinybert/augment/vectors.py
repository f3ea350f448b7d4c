"""Word-vector candidates: nearest neighbours by cosine in a GloVe, word2vec or fastText file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

logger = logging.getLogger(__name__)


# vocabulary rows one chunk of queries is compared with at a time: a 256 × 65,536 block is 64 MB,
# whatever the size of the vocabulary (2.2 M words for GloVe 840B)
QUERY_BLOCK = 1 << 16


class WordVectors:
    """Nearest neighbours by cosine in a GloVe text, word2vec/fastText text or word2vec binary
    file (all of it), read in one pass into one array. Multi-word entries (``New_York``, and
    GloVe 840B's tokens with spaces) are skipped."""

    def __init__(self, words: list[str], vectors: np.ndarray, lowercase: bool):
        self.words = words
        self.lowercase = lowercase
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # in place: one copy
        self.unit = torch.from_numpy(vectors)
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
        read = _read_word2vec_binary if has_header and _looks_binary(path, len(first)) else _read_text_vectors
        words, vectors = read(path, has_header)
        if not words:
            raise InputError("no word vectors found", path=path, fix="give a GloVe text or word2vec file")
        logger.info("%s: %d word vectors (phrases skipped), dimension %d", path, len(words), vectors.shape[1])
        return cls(words, vectors, lowercase)

    def neighbours(self, words: list[str], k: int, chunk: int = 256) -> dict[str, list[str]]:
        """K nearest neighbours of each word, cached; new words are compared with the vocabulary a
        chunk of queries and a block of rows at a time, keeping the best so far."""
        new = [w for w in dict.fromkeys(words) if w not in self.cache]
        known = [w for w in new if self._lookup(w) is not None]
        for word in set(new) - set(known):
            self.cache[word] = []
        # room for the word itself and for neighbours that fold together when lower-cased
        wanted = min(3 * k + 1, len(self.words))
        for start in range(0, len(known), chunk):
            part = known[start:start + chunk]
            query = self.unit[[self._lookup(w) for w in part]]
            best_values = best_indices = None
            for block in range(0, len(self.words), QUERY_BLOCK):
                values, indices = (query @ self.unit[block:block + QUERY_BLOCK].T).topk(
                    min(wanted, min(QUERY_BLOCK, len(self.words) - block)), dim=1)
                indices += block
                if best_values is not None:
                    values, indices = torch.cat([best_values, values], 1), torch.cat([best_indices, indices], 1)
                    values, order = values.topk(min(wanted, values.shape[1]), dim=1)
                    indices = indices.gather(1, order)
                best_values, best_indices = values, indices
            for word, row in zip(part, best_indices.tolist()):
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


def _is_phrase(word: str) -> bool:
    return "_" in word or " " in word


def _looks_binary(path: Path, header_length: int) -> bool:
    with open(path, "rb") as handle:
        handle.seek(header_length)
        sample = handle.read(4096)
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start < len(sample) - 4  # not just a character cut at the sample's end
    return False


def _read_word2vec_binary(path: Path, _header: bool = True) -> tuple[list[str], np.ndarray]:
    """word2vec's binary format, streamed: a header ``count dimension``, then each word, a space
    and its float32 numbers."""
    with open(path, "rb") as handle:
        count, dimension = map(int, handle.readline().split())
        vectors = np.empty((count, dimension), dtype=np.float32)
        width = 4 * dimension
        words: list[str] = []
        buffer, offset = b"", 0
        for _ in range(count):
            while (space := buffer.find(b" ", offset)) < 0 or len(buffer) < space + 1 + width:
                more = handle.read(1 << 20)
                if not more:
                    raise InputError(f"the file ends after {len(words)} of its {count} vectors", path=path,
                                     fix="give a complete word2vec binary file")
                buffer, offset = buffer[offset:] + more, 0
            word = buffer[offset:space].decode("utf-8", errors="replace").strip()
            if not _is_phrase(word):
                vectors[len(words)] = np.frombuffer(buffer, dtype="<f4", count=dimension, offset=space + 1)
                words.append(word)
            offset = space + 1 + width
    return words, vectors[:len(words)]


def _read_text_vectors(path: Path, has_header: bool) -> tuple[list[str], np.ndarray]:
    """GloVe (no header) or word2vec/fastText text: a word, then its numbers, on each line. The
    word is everything before the last ``dimension`` numbers (GloVe 840B has words with spaces)."""
    with open(path, "rb") as handle:
        lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b"")) + 1
    words: list[str] = []
    vectors, dimension = None, None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.rstrip().split(" ")
            if (has_header and number == 1) or len(parts) < 2:
                continue
            if dimension is None:
                dimension = len(parts) - 1
                vectors = np.empty((lines, dimension), dtype=np.float32)
            if len(parts) - 1 < dimension:
                raise InputError(f"{len(parts) - 1} numbers where earlier lines have {dimension}", path=path,
                                 line=number, fix="give a GloVe/word2vec text file with one vector per line")
            word = " ".join(parts[:len(parts) - dimension])
            if _is_phrase(word):
                continue
            try:
                vectors[len(words)] = np.asarray(parts[-dimension:], dtype=np.float32)
            except ValueError:
                raise InputError("a vector entry is not a number", path=path, line=number,
                                 fix="give a GloVe/word2vec text file: a word, then its numbers") from None
            words.append(word)
    return words, (vectors[:len(words)] if vectors is not None else np.empty((0, 0), dtype=np.float32))
