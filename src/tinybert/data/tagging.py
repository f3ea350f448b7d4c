"""Token classification data (named entities): CoNLL column files and JSONL, and their token cache.

* CoNLL: one word per line, its columns separated by spaces or tabs, the word first and its tag
  last (``EU NNP B-NP B-ORG``); a blank line ends a sentence; ``-DOCSTART-`` lines are skipped.
* JSONL: one sentence per line, ``{"tokens": [...], "tags": [...]}`` (``ner_tags`` too).

Tags are IOB2 strings (O, B-TYPE, I-TYPE). A word's tag goes on its first piece; the other
pieces, and the special tokens, get -100 and count neither in the loss nor in the metrics.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..artifacts import read_json
from ..errors import InputError
from .batching import IGNORED_LABEL, warn_truncated
from .cache import cache_directory, cached_features, check_length, token_columns, write_in_chunks
from .features import FeatureFile, FeatureWriter
from .formats import json_lines, report_bad_lines, utf8_lines
from .labels import LabelSpace
from .options import DataOptions

TAG = re.compile(r"^(O|[BI]-\S+)$")  # IOB2: what the metrics (seqeval's default and strict IOB2 modes) read
_CHUNK = 1024


@dataclass
class Sentence:
    words: list[str]
    tags: list[str] | None
    line: int  # where it starts in the file
    problem: str | None = None


def read_sentences(path: str | Path, require_tags: bool = True) -> Iterator[Sentence]:
    """The sentences of a CoNLL or JSONL file, streamed; malformed ones carry a ``problem``."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        yield from _jsonl_sentences(path, require_tags)
        return
    words, tags, start, broken = [], [], None, False
    for number, line in utf8_lines(str(path)):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words and not broken:
                yield Sentence(words, tags if require_tags else None, start)
            words, tags, start, broken = [], [], None, False
            continue
        if start is None:
            start = number
        if broken:  # the rest of a sentence with a bad line is left out with it
            continue
        if require_tags and (len(fields) < 2 or not TAG.match(fields[-1])):
            yield Sentence([], None, number, f"{line.strip()[:40]!r} has no IOB2 tag (O, B-TYPE, I-TYPE) in its last "
                                             "column")
            broken = True
            continue
        words.append(fields[0])
        tags.append(fields[-1] if len(fields) > 1 else "O")
    if words and not broken:
        yield Sentence(words, tags if require_tags else None, start)


def _jsonl_sentences(path: Path, require_tags: bool) -> Iterator[Sentence]:
    for number, record, problem in json_lines(str(path)):
        if problem:
            yield Sentence([], None, number, problem)
            continue
        words = record.get("tokens") if isinstance(record, dict) else None
        tags = (record.get("tags") or record.get("ner_tags")) if isinstance(record, dict) else None
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w for w in words):
            yield Sentence([], None, number, "no list of words under \"tokens\"")
        elif require_tags and (not isinstance(tags, list) or len(tags) != len(words)
                               or not all(isinstance(t, str) and TAG.match(t) for t in tags)):
            yield Sentence([], None, number, "\"tags\" is not one IOB2 tag per word")
        else:
            yield Sentence(words, tags if require_tags else None, number)


def tag_pieces(tokenizer, sentences: list[list[str]], tags: list[list[int]] | None, max_length: int) -> dict:
    """Token ids of word lists (pre-split), and each piece's tag: the word's on its first piece,
    -100 elsewhere (and on everything when ``tags`` is None)."""
    batch = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length,
                      return_attention_mask=False)
    labels = []
    for index in range(len(sentences)):
        previous, row = None, []
        for word in batch.word_ids(index):
            first = word is not None and word != previous
            row.append(tags[index][word] if first and tags is not None else IGNORED_LABEL)
            previous = word
        labels.append(row)
    return {"input_ids": batch["input_ids"], "token_type_ids": batch.get("token_type_ids"), "labels": labels,
            "words": [len(words) for words in sentences]}


class TagCache(FeatureFile):
    """Cached sentences of a token classification file; ``labelled`` maps the file's tags to a model's."""

    def __init__(self, directory: Path, meta: dict):
        super().__init__(directory, meta)
        self.path = meta["source"]
        self._mapping: np.ndarray | None = None

    @property
    def raw_labels(self) -> dict[str, int]:
        return dict(zip(self.meta["labels"], self.meta["label_lines"]))

    def labelled(self, label_space: LabelSpace) -> "TagCache":
        view = copy.copy(self)
        view._mapping = np.array([label_space.encode_value(tag, self.path, line)
                                  for tag, line in zip(self.meta["labels"], self.meta["label_lines"])])
        return view

    def __getitem__(self, index: int) -> dict:
        row = self.row(index)
        tags = np.asarray(row.pop("tags"))
        if self._mapping is not None:
            row["labels"] = np.where(tags == IGNORED_LABEL, IGNORED_LABEL, self._mapping[np.maximum(tags, 0)]).tolist()
        return row


def tag_cache(path: str | Path, tokenizer, max_length: int, options: DataOptions, default_dir=None,
              show_progress: bool = True) -> TagCache:
    """The token cache of a CoNLL or JSONL tagging file (see ``cache.task_cache``)."""
    path = Path(path)
    directory, inputs = cache_directory(path, "token", tokenizer, max_length, options, default_dir)
    cached_features(path, inputs, directory, lambda staging: _build(path, tokenizer, max_length, options, staging,
                                                                   show_progress))
    cache = TagCache(directory, read_json(directory / "meta.json"))
    if cache.meta["skipped"]:
        report_bad_lines(str(path), cache.meta["skipped_lines"], True, total=cache.meta["skipped"])
    warn_truncated(path, cache.meta["truncated"], cache.meta["examples"], max_length)
    return cache


def _build(path: Path, tokenizer, max_length: int, options: DataOptions, staging: Path, show_progress: bool) -> dict:
    check_length(max_length)
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("token classification needs a fast tokenizer (it maps word pieces to words)", path=path,
                         fix="use a model directory with a tokenizer.json")
    writer = FeatureWriter(staging, token_columns(tokenizer, tags="<i2"), {}, max_length)
    table: dict[str, int] = {}
    first_lines: list[int] = []
    cut = 0

    def add(good) -> None:
        nonlocal cut
        for sentence in good:
            for tag in sentence.tags:
                if tag not in table:
                    table[tag] = len(table)
                    first_lines.append(sentence.line)
        pieces = tag_pieces(tokenizer, [s.words for s in good], [[table[t] for t in s.tags] for s in good], max_length)
        cut += sum(sum(label != IGNORED_LABEL for label in row) < words
                   for row, words in zip(pieces["labels"], pieces["words"]))
        writer.add({"input_ids": pieces["input_ids"], "token_type_ids": pieces["token_type_ids"],
                    "tags": pieces["labels"]})

    meta = write_in_chunks(path, read_sentences(path), writer, add, options, show_progress, _CHUNK, "no sentences",
                           "give CoNLL lines (word … tag), blank lines between sentences, or JSONL with tokens and tags")
    return {**meta, "source": str(path), "labels": list(table), "label_lines": first_lines, "truncated": cut}
