"""Extractive question answering: SQuAD files, their windows and token cache, and answers mapped
back from predicted spans.

Files: SQuAD JSON (v1.1; v2.0's ``is_impossible``), or JSONL with one question per line
(``question``, ``context``, optionally ``id`` and ``answers`` as ``[{"text", "answer_start"}]``).
A context longer than the window is cut into overlapping windows (``doc_stride`` tokens shared by
neighbours); the fast tokenizer's character offsets map every context token back to the text.
A window whose context does not hold the answer is trained to point at [CLS], as BERT's SQuAD code does.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from .cache import cache_directory, cached_features, check_length, token_columns
from .features import FeatureFile, FeatureWriter
from .formats import MARK, json_lines, report_bad_lines, utf8_lines
from .labels import origin_of
from .options import DataOptions

logger = logging.getLogger(__name__)

EXAMPLES_FILE = "examples.jsonl"
DEFAULT_DOC_STRIDE = 128  # BERT's for SQuAD, with 384-token windows
_CHUNK = 256


@dataclass
class Question:
    id: str
    question: str
    context: str
    answers: list[dict] = field(default_factory=list)  # {"text", "answer_start"}
    impossible: bool = False
    line: int = 1
    problem: str | None = None
    augmented: bool = False  # a variant written by `tinybert augment`

    @property
    def labelled(self) -> bool:
        return bool(self.answers) or self.impossible


def read_questions(path: str | Path, labels: str = "required") -> list[Question]:
    """Every question of a SQuAD JSON or JSONL file (a SQuAD file is one JSON document: it is read
    whole). Malformed questions carry a ``problem``. ``labels``: every question needs its answers
    (or ``is_impossible``), a question without any is unlabelled (``optional``), or answers are not
    read (``ignored``)."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return [Question("", "", "", line=number, problem=problem) if problem else
                _question(record, number, labels) for number, record, problem in json_lines(str(path))]
    questions = []
    for _, paragraph in paragraphs_of(read_document(path), path):
        for record in paragraph["qas"]:
            questions.append(_question({**record, "context": paragraph.get("context")} if isinstance(record, dict)
                                       else record, len(questions) + 1, labels))
    return questions


def read_document(path: str | Path) -> dict:
    """A SQuAD JSON document (UTF-8, a byte-order mark allowed), with its list of articles."""
    document = _parse(Path(path), "".join(line for _, line in utf8_lines(str(path))), 1)
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise InputError("not a SQuAD file: no \"data\" list of articles", path=path,
                         fix="give SQuAD JSON ({\"data\": [{\"title\", \"paragraphs\": [...]}]}) or JSONL questions")
    return document


def paragraphs_of(document: dict, path) -> list[tuple[str, dict]]:
    """(title, paragraph) of every paragraph of a SQuAD document, in order; a broken structure
    (an article or paragraph that is not an object, ``qas`` that is not a list) stops here."""
    found = []
    for number, article in enumerate(document["data"], start=1):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise InputError(f"article {number} is not an object with a \"paragraphs\" list", path=path,
                             fix="give SQuAD JSON: {\"data\": [{\"title\", \"paragraphs\": [{\"context\", \"qas\"}]}]}")
        for place, paragraph in enumerate(paragraphs, start=1):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas", []), list):
                raise InputError(f"article {number}, paragraph {place} is not an object with a \"qas\" list",
                                 path=path, fix="give each paragraph a \"context\" and a \"qas\" list")
            found.append((article.get("title", ""), {**paragraph, "qas": paragraph.get("qas", [])}))
    return found


def _parse(path: Path, text: str, line: int):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON ({error.msg})", path=path, line=line + error.lineno - 1,
                         fix="give SQuAD JSON, or one JSON object per line") from None


def _question(record, number: int, labels: str) -> Question:
    """A question and its answers, checked (the answers only when they are read)."""
    if not isinstance(record, dict):
        return Question("", "", "", line=number, problem="not a JSON object")
    question, context = record.get("question"), record.get("context")
    identifier = str(record.get("id", number))
    if not isinstance(question, str) or not question.strip() or not isinstance(context, str) or not context.strip():
        return Question(identifier, "", "", line=number, problem=f"question {identifier}: no question or context text")
    impossible = bool(record.get("is_impossible", False))
    answers = record.get("answers") or []
    variant = record.get(MARK) is True
    if labels == "ignored":  # predicting, or unlabelled text given as such: answers given are not read
        return Question(identifier, question, context, [], False, number, augmented=variant)
    if not isinstance(answers, list) or not all(isinstance(answer, dict) for answer in answers):
        return Question(identifier, question, context, line=number,
                        problem=f"question {identifier}: \"answers\" is not a list of {{text, answer_start}}")
    for answer in answers:
        start, text = answer.get("answer_start"), answer.get("text")
        if not isinstance(start, int) or not isinstance(text, str) or not text.strip() \
                or context[start:start + len(text)] != text:
            return Question(identifier, question, context, line=number,
                            problem=f"question {identifier}: answer {text!r} is not at character {start} of its context")
    if not answers and not impossible and labels == "required":
        return Question(identifier, question, context, line=number,
                        problem=f"question {identifier}: no answer (and not marked is_impossible)")
    return Question(identifier, question, context, answers, impossible, number, augmented=variant)


def fitting_stride(given: int | None, max_length: int, recorded: int | None = None) -> int:
    """Tokens shared by neighbouring windows of ``max_length`` tokens: ``given`` (refused when it
    is half the window or more: windows must move on by more than they share), else a model's
    ``recorded`` stride when it fits (a warning when it does not), else 128 (a quarter of the
    window when 128 does not fit)."""
    half = max_length // 2
    if given is not None:
        if not 0 <= given < half:
            raise InputError(f"--doc-stride {given} does not fit windows of {max_length} tokens: neighbouring windows "
                             "must share fewer tokens than half a window", fix=f"use a stride below {half} "
                             f"(e.g. {max_length // 4}), or a longer --max-length")
        return given
    default = DEFAULT_DOC_STRIDE if DEFAULT_DOC_STRIDE < half else max_length // 4
    if recorded is not None and not 0 <= recorded < half:
        logger.warning("the model's recorded doc stride %d does not fit windows of %d tokens: using %d", recorded,
                       max_length, default)
        return default
    return default if recorded is None else recorded


def _short_questions(tokenizer, questions: list[Question], max_length: int, stride: int) -> list[str]:
    """Each question cut to its first tokens (64 at most, as BERT's SQuAD code; fewer in a small
    window), so that the context always has room for more than the stride."""
    room = max_length - stride - tokenizer.num_special_tokens_to_add(pair=True)
    if room < 8:
        raise InputError(f"--max-length {max_length} leaves no room for a question and its context beside a doc "
                         f"stride of {stride}", fix="use --max-length 64 or more (384 is BERT's for SQuAD)")
    limit = min(64, room // 2)
    texts = [q.question.lstrip() for q in questions]
    encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=limit,
                        return_offsets_mapping=True, return_attention_mask=False)
    return [text[:offsets[-1][1]] if len(offsets) == limit else text
            for text, offsets in zip(texts, encoded["offset_mapping"])]


def require_right_padding(tokenizer) -> None:
    """Answer positions (and [CLS] at 0 for no answer) count from the window's first token: a
    batch padded on the left would shift them."""
    if tokenizer.padding_side != "right":
        raise InputError("question answering needs a tokenizer that pads on the right",
                         fix='set "padding_side": "right" in the model\'s tokenizer_config.json')


def windows(tokenizer, questions: list[Question], max_length: int, stride: int) -> dict:
    """The windows of each question's context, with each context token's characters and the
    answer's token positions in each window (0, 0: not in this window). ``stride``: see
    ``fitting_stride``."""
    stride = fitting_stride(stride, max_length)
    require_right_padding(tokenizer)
    encoded = tokenizer(_short_questions(tokenizer, questions, max_length, stride), [q.context for q in questions],
                        truncation="only_second",
                        max_length=max_length, stride=stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True, return_attention_mask=False)
    columns = {"input_ids": encoded["input_ids"], "token_type_ids": encoded.get("token_type_ids"),
               "offset_start": [], "offset_end": [], "example": [], "start_positions": [], "end_positions": []}
    for index, offsets in enumerate(encoded["offset_mapping"]):
        question = questions[encoded["overflow_to_sample_mapping"][index]]
        in_context = [part == 1 for part in encoded.sequence_ids(index)]
        starts = [begin if inside else -1 for (begin, _), inside in zip(offsets, in_context)]
        ends = [end if inside else -1 for (_, end), inside in zip(offsets, in_context)]
        columns["offset_start"].append(starts)
        columns["offset_end"].append(ends)
        columns["example"].append(encoded["overflow_to_sample_mapping"][index])
        start = end = 0
        if question.answers and not question.impossible:
            begin = question.answers[0]["answer_start"]
            finish = begin + len(question.answers[0]["text"])
            tokens = [i for i, inside in enumerate(in_context) if inside]
            if tokens and starts[tokens[0]] <= begin and ends[tokens[-1]] >= finish:
                start = next(i for i in tokens if ends[i] > begin)
                end = next(i for i in reversed(tokens) if starts[i] < finish)
        columns["start_positions"].append(start)
        columns["end_positions"].append(end)
    return columns


class AnswerCache(FeatureFile):
    """Cached windows of a QA file; ``examples()`` gives each question's context and answers."""

    def __init__(self, directory: Path, meta: dict):
        super().__init__(directory, meta)
        self.path = meta["source"]

    def labelled(self, _label_space=None) -> "AnswerCache":
        return copy.copy(self)

    def examples(self) -> list[dict]:
        with open(self.directory / EXAMPLES_FILE, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]


def answer_cache(path: str | Path, tokenizer, max_length: int, options: DataOptions, default_dir=None,
                 show_progress: bool = True, labels: str = "required") -> AnswerCache:
    path = Path(path)
    require_right_padding(tokenizer)  # here too: a cache built earlier skips ``windows``
    options = replace(options, doc_stride=fitting_stride(options.doc_stride, max_length))
    # questions are cut here, not when read: a cut file is a cache of its own
    directory, inputs = cache_directory(path, "qa", tokenizer, max_length, options, default_dir,
                                        doc_stride=options.doc_stride, max_examples=options.max_examples, labels=labels)
    meta = cached_features(path, inputs, directory, lambda staging: _build(path, tokenizer, max_length, options,
                                                                          staging, show_progress, labels), tokenizer)
    cache = AnswerCache(directory, meta)
    if cache.meta["skipped"]:
        report_bad_lines(str(path), cache.meta["skipped_lines"], True, total=cache.meta["skipped"])
    return cache


def _build(path: Path, tokenizer, max_length: int, options: DataOptions, staging: Path, show_progress: bool,
           labels: str) -> dict:
    check_length(max_length)
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("question answering needs a fast tokenizer (its character offsets map answers back)",
                         path=path, fix="use a model directory with a tokenizer.json")
    questions = read_questions(path, labels)
    bad = [(q.line, q.problem) for q in questions if q.problem]
    if bad and not options.skip_bad_lines:
        report_bad_lines(str(path), bad[:100], False, total=len(bad))
    good = [q for q in questions if not q.problem][:options.max_examples or None]
    if not good:
        raise InputError("no questions", path=path, fix="give SQuAD JSON or JSONL questions with contexts")
    writer = FeatureWriter(staging, token_columns(tokenizer, offset_start="<i4", offset_end="<i4"),
                           {"example": "<i4", "start_positions": "<i4", "end_positions": "<i4", "origin": "<u1"},
                           max_length)
    with open(staging / EXAMPLES_FILE, "w", encoding="utf-8") as table:
        for start in tqdm(range(0, len(good), _CHUNK), desc=f"tokenising {path.name}", unit="chunk",
                          disable=not show_progress, leave=False):
            chunk = good[start:start + _CHUNK]
            columns = windows(tokenizer, chunk, max_length, options.doc_stride)
            columns["origin"] = [origin_of(chunk[i].augmented, chunk[i].labelled) for i in columns["example"]]
            columns["example"] = [start + i for i in columns["example"]]
            writer.add(columns, columns)
            table.writelines(json.dumps({"id": q.id, "question": q.question, "context": q.context,
                                         "answers": [a["text"] for a in q.answers], "impossible": q.impossible},
                                        ensure_ascii=False) + "\n" for q in chunk)
    meta = writer.finish()
    return {**meta, "source": str(path), "questions": len(good), "skipped": len(bad),
            "skipped_lines": bad[:100]}


class AnswerFinder:
    """The best answer span of each question over all its windows: the highest start + end logit
    over every pair of context tokens with start ≤ end, at most ``max_tokens`` long (an exact
    search, not over the n best starts and ends only). For SQuAD 2.0 the empty answer wins where
    [CLS] scores higher."""

    def __init__(self, max_tokens: int = 30):
        self.max_tokens = max_tokens
        self.best: dict[int, tuple[float, int, int]] = {}  # example → (score, first char, end char)
        self.null: dict[int, float] = {}
        self._bands: dict[int, np.ndarray] = {}

    def _band(self, width: int) -> np.ndarray:
        """Pairs (start, end) with start ≤ end < start + max_tokens."""
        if width not in self._bands:
            ones = np.ones((width, width), dtype=bool)
            self._bands[width] = np.triu(ones) & ~np.triu(ones, self.max_tokens)
        return self._bands[width]

    def add(self, start_logits: np.ndarray, end_logits: np.ndarray, offset_start: np.ndarray,
            offset_end: np.ndarray, examples: np.ndarray) -> None:
        band = self._band(start_logits.shape[1])
        for starts, ends, first, last, example in zip(start_logits, end_logits, offset_start, offset_end, examples):
            example = int(example)
            self.null[example] = min(self.null.get(example, np.inf), float(starts[0] + ends[0]))
            allowed = band & (first >= 0)[:, None] & (last >= 0)[None, :]
            if not allowed.any():
                continue
            scores = np.where(allowed, starts[:, None].astype(np.float64) + ends[None, :], -np.inf)
            s, e = np.unravel_index(int(scores.argmax()), scores.shape)
            score = float(scores[s, e])
            if example not in self.best or score > self.best[example][0]:
                self.best[example] = (score, int(first[s]), int(last[e]))

    def merge(self, other: "AnswerFinder") -> None:
        for example, span in other.best.items():
            if example not in self.best or span[0] > self.best[example][0]:
                self.best[example] = span
        for example, score in other.null.items():
            self.null[example] = min(self.null.get(example, np.inf), score)

    def answers(self, examples: list[dict], allow_empty: bool = False) -> list[tuple[str, float | None, int]]:
        """(text, score, first character) per question, in the file's order; ("", None, -1) where
        no window held a span of the context."""
        found = []
        for index, example in enumerate(examples):
            best = self.best.get(index)
            if allow_empty and index in self.null and (best is None or self.null[index] > best[0]):
                found.append(("", self.null[index], -1))
            elif best is None:
                found.append(("", None, -1))
            else:
                score, first, last = best
                found.append((example["context"][first:last], score, first))
        return found
