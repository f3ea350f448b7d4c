"""Token classification data (named entities): CoNLL column files and JSONL, and their token cache.

* CoNLL: one word per line, its columns separated by spaces or tabs, the word first and its tag
  last (``EU NNP B-NP B-ORG``); a blank line ends a sentence; ``-DOCSTART-`` lines are skipped.
* JSONL: one sentence per line, ``{"tokens": [...], "tags": [...]}`` (``ner_tags`` too).

Tags are IOB2 strings (O, B-TYPE, I-TYPE). A word's tag goes on its first piece; the other
pieces, and the special tokens, get -100 and count neither in the loss nor in the metrics. The
first piece of a word without a tag (unlabelled text, distilled from the teacher alone) gets -1.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from .batching import IGNORED_LABEL, warn_truncated
from .cache import cache_directory, cached_features, check_length, token_columns, write_in_chunks
from .features import FeatureFile, FeatureWriter
from .formats import MARK, json_lines, report_bad_lines, utf8_lines
from .labels import LabelSpace, origin_of
from .options import DataOptions

TAG = re.compile(r"^(O|[BI]-\S+)$")  # IOB2: what the metrics (seqeval's default and strict IOB2 modes) read
UNKNOWN_TAG = -1  # a word's first piece whose tag is not known
_CHUNK = 1024


@dataclass
class Sentence:
    words: list[str]
    tags: list[str] | None  # None: the sentence has no tags (unlabelled)
    line: int  # where it starts in the file
    problem: str | None = None
    augmented: bool = False  # a variant written by `tinybert augment`


def read_sentences(path: str | Path, labels: str = "required") -> Iterator[Sentence]:
    """The sentences of a CoNLL or JSONL file, streamed; malformed ones carry a ``problem``.
    ``labels``: every word needs its tag (``required``), a sentence of bare words (one word per
    line) is unlabelled (``optional``), or tags are not read (``ignored``). A CoNLL sentence after
    a ``-DOCSTART- augmented`` line is an augmented variant."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        yield from _jsonl_sentences(path, labels)
        return
    words, tags, start, broken, variant = [], [], None, False, False
    for number, line in utf8_lines(str(path)):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if start is not None:  # a sentence ends here: its mark goes with it, even when a bad line left it out
                if words and not broken:
                    yield _tagged(words, tags, start, labels, variant)
                variant = False
            words, tags, start, broken = [], [], None, False
            variant = variant or fields[1:] == [MARK]
            continue
        if start is None:
            start = number
        if broken:  # the rest of a sentence with a bad line is left out with it
            continue
        tagged = len(fields) > 1 and TAG.match(fields[-1])
        if labels != "ignored" and not tagged and (labels == "required" or len(fields) > 1):
            yield Sentence([], None, number, f"{line.strip()[:40]!r} has no IOB2 tag (O, B-TYPE, I-TYPE) in its last "
                                             "column")
            broken = True
            continue
        words.append(fields[0])
        tags.append(fields[-1] if tagged else None)
    if words and not broken:
        yield _tagged(words, tags, start, labels, variant)


def _tagged(words: list[str], tags: list, start: int, labels: str, variant: bool) -> Sentence:
    """A CoNLL sentence: tagged, or bare words (where tags are optional), never a mix of both."""
    if labels == "ignored" or all(tag is None for tag in tags):
        return Sentence(words, None, start, augmented=variant)
    if None in tags:
        return Sentence([], None, start, "some words of the sentence have a tag and others none", variant)
    return Sentence(words, tags, start, augmented=variant)


def _jsonl_sentences(path: Path, labels: str) -> Iterator[Sentence]:
    for number, record, problem in json_lines(str(path)):
        if problem:
            yield Sentence([], None, number, problem)
            continue
        words = record.get("tokens") if isinstance(record, dict) else None
        tags = (record.get("tags") or record.get("ner_tags")) if isinstance(record, dict) else None
        variant = isinstance(record, dict) and record.get(MARK) is True
        if labels == "ignored" or (labels == "optional" and tags is None):
            tags = None
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w for w in words):
            yield Sentence([], None, number, "no list of words under \"tokens\"")
        elif (tags is not None or labels == "required") and (
                not isinstance(tags, list) or len(tags) != len(words)
                or not all(isinstance(t, str) and TAG.match(t) for t in tags)):
            yield Sentence([], None, number, "\"tags\" is not one IOB2 tag per word")
        else:
            yield Sentence(words, tags, number, augmented=variant)


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
        if self._mapping is not None:  # -100 (not a word's first piece) and -1 (no tag) stay as they are
            known = tags >= 0
            tags[known] = self._mapping[tags[known]]
            row["labels"] = tags.tolist()
        return row


def tag_cache(path: str | Path, tokenizer, max_length: int, options: DataOptions, default_dir=None,
              show_progress: bool = True, labels: str = "required") -> TagCache:
    """The token cache of a CoNLL or JSONL tagging file (see ``cache.task_cache``)."""
    path = Path(path)
    directory, inputs = cache_directory(path, "token", tokenizer, max_length, options, default_dir, labels=labels)
    meta = cached_features(path, inputs, directory, lambda staging: _build(path, tokenizer, max_length, options,
                                                                          staging, show_progress, labels), tokenizer)
    cache = TagCache(directory, meta)
    if cache.meta["skipped"]:
        report_bad_lines(str(path), cache.meta["skipped_lines"], True, total=cache.meta["skipped"])
    warn_truncated(path, cache.meta["truncated"], cache.meta["examples"], max_length)
    return cache


def _build(path: Path, tokenizer, max_length: int, options: DataOptions, staging: Path, show_progress: bool,
           labels: str) -> dict:
    check_length(max_length)
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("token classification needs a fast tokenizer (it maps word pieces to words)", path=path,
                         fix="use a model directory with a tokenizer.json")
    writer = FeatureWriter(staging, token_columns(tokenizer, tags="<i2"), {"origin": "<u1"}, max_length)
    table: dict[str, int] = {}
    first_lines: list[int] = []
    cut = 0

    def add(good) -> None:
        nonlocal cut
        for sentence in good:
            for tag in sentence.tags or ():
                if tag not in table:
                    table[tag] = len(table)
                    first_lines.append(sentence.line)
        tags = [[table[t] for t in s.tags] if s.tags else [UNKNOWN_TAG] * len(s.words) for s in good]
        pieces = tag_pieces(tokenizer, [s.words for s in good], tags, max_length)
        cut += sum(sum(label != IGNORED_LABEL for label in row) < words
                   for row, words in zip(pieces["labels"], pieces["words"]))
        writer.add({"input_ids": pieces["input_ids"], "token_type_ids": pieces["token_type_ids"],
                    "tags": pieces["labels"]}, {"origin": [origin_of(s.augmented, s.tags is not None) for s in good]})

    meta = write_in_chunks(path, read_sentences(path, labels), writer, add, options, show_progress, _CHUNK,
                           "no sentences",
                           "give CoNLL lines (word … tag), blank lines between sentences, or JSONL with tokens and tags")
    return {**meta, "source": str(path), "labels": list(table), "label_lines": first_lines, "truncated": cut}
