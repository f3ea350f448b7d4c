"""Augmentation of token classification and QA files: only words that carry no label change.

Token classification (CoNLL, JSONL): every sentence, then its variants, in the input's format;
only words tagged O are replaced, one word for one word, so every tag stays on its word.
QA (SQuAD JSON): every paragraph as it is, then, for each of its questions, variants of the
context as paragraphs of their own; only context words outside the question's answers are
replaced (the question never), and the answers' character offsets are recomputed.
Variants are marked: ``"augmented": true`` in a JSONL sentence or a SQuAD question, and a
``-DOCSTART- augmented`` line before a CoNLL sentence (a document break every CoNLL reader skips).
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from tokenizers import pre_tokenizers

from ..artifacts import atomic_write
from ..data.formats import MARK, report_bad_lines
from ..data.squad import paragraphs_of, read_document, read_questions
from ..data.tagging import read_sentences
from ..errors import InputError
from .algorithm import Augmenter
from .stream import resumable_stream


def augment_tagged(input_path: str, output_path: Path, augmenter: Augmenter, inputs: dict, options,
                   show_progress: bool) -> dict:
    config = augmenter.config
    jsonl = Path(input_path).suffix.lower() in (".jsonl", ".json")
    sentences = itertools.islice(read_sentences(input_path), options.max_examples)
    bad = [(s.line, s.problem) for s in itertools.islice(read_sentences(input_path), options.max_examples)
           if s.problem]
    if bad:
        report_bad_lines(input_path, bad, options.skip_bad_lines)
    columns = _columns(input_path) if not jsonl else {}

    def render(chunk, state) -> tuple[str, int]:
        good = [s for s in chunk if s.problem is None]
        replaceable = [{i for i, tag in enumerate(s.tags) if tag == "O"} for s in good]
        vary = len(good) if config.augment_first is None else \
            max(0, min(len(good), config.augment_first - state["rows"]))
        found = augmenter.candidates_of([s.words for s in good[:vary]], replaceable[:vary])
        out, written = [], 0
        for index, sentence in enumerate(good):
            out.append(_sentence(sentence, sentence.words, jsonl, columns, sentence.augmented))
            if index < vary:
                for words in augmenter.variant_words(sentence.words, found[index],
                                                     random.Random(f"{config.seed}:{sentence.line}")):
                    out.append(_sentence(sentence, words, jsonl, columns, True))
                    written += 1
        return "".join(out), written

    return resumable_stream(sentences, render, output_path, inputs, config.chunk_rows, None, "", show_progress)


def _columns(path: str) -> dict[int, list[str]]:
    """Each CoNLL line's middle columns (part of speech, chunk), by line number, to write back."""
    with open(path, encoding="utf-8") as handle:
        return {number: line.split()[1:-1] for number, line in enumerate(handle, start=1)
                if line.strip() and not line.startswith("-DOCSTART-")}


def _sentence(sentence, words: list[str], jsonl: bool, columns: dict[int, list[str]], variant: bool) -> str:
    if jsonl:
        return json.dumps({"tokens": words, "tags": sentence.tags, **({MARK: True} if variant else {})},
                          ensure_ascii=False) + "\n"
    lines = [" ".join([word, *columns.get(sentence.line + i, []), tag])
             for i, (word, tag) in enumerate(zip(words, sentence.tags))]
    return (f"-DOCSTART- {MARK}\n\n" if variant else "") + "\n".join(lines) + "\n\n"


def augment_questions(input_path: str, output_path: Path, augmenter: Augmenter, inputs: dict, options,
                      show_progress: bool) -> dict:
    """SQuAD JSON in, SQuAD JSON out (written as one paragraph per line, then closed into a document)."""
    config = augmenter.config
    if Path(input_path).suffix.lower() == ".jsonl":
        raise InputError("augmentation of questions reads SQuAD JSON (articles, paragraphs, questions)",
                         path=input_path, fix="give the questions as a SQuAD JSON file")
    questions = read_questions(input_path)  # checks the file first: a bad one stops here
    bad = [(q.line, q.problem) for q in questions if q.problem]
    if bad:
        report_bad_lines(input_path, bad, options.skip_bad_lines)
    document = read_document(input_path)
    good = iter([q.problem is None for q in questions])  # in read_questions' order
    paragraphs, left = [], options.max_examples or len(questions)
    for title, paragraph in paragraphs_of(document, input_path):
        kept = [record for record in paragraph["qas"] if next(good)][:left]
        left -= len(kept)
        if kept:
            paragraphs.append((title, {**paragraph, "qas": kept}))
    splitter = pre_tokenizers.BertPreTokenizer()

    def render(chunk, state) -> tuple[str, int]:
        out, written = [], 0
        for offset, (title, paragraph) in enumerate(chunk):
            out.append(json.dumps({"title": title, "paragraph": paragraph}, ensure_ascii=False) + "\n")
            if config.augment_first is not None and state["rows"] + offset >= config.augment_first:
                continue
            context = paragraph["context"]
            spans = splitter.pre_tokenize_str(context)  # words with their characters in the context
            words = [word for word, _ in spans]
            everywhere = augmenter.candidates_of([words])[0]  # the same context for all its questions
            for question in paragraph.get("qas", []):
                answers = [(a["answer_start"], a["answer_start"] + len(a["text"])) for a in question.get("answers", [])]
                found = {i: candidates for i, candidates in everywhere.items()
                         if not any(spans[i][1][0] < stop and begin < spans[i][1][1] for begin, stop in answers)}
                rng = random.Random(f"{config.seed}:{question.get('id')}")
                for number, new in enumerate(augmenter.variant_words(words, found, rng)):
                    text, moved = _rebuilt(context, spans, new)
                    qas = [{**question, "id": f"{question.get('id')}-aug{number + 1}", MARK: True,
                            "answers": [{"text": a["text"], "answer_start": moved(a["answer_start"])}
                                        for a in question.get("answers", [])]}]
                    out.append(json.dumps({"title": title, "paragraph": {"context": text, "qas": qas}},
                                          ensure_ascii=False) + "\n")
                    written += 1
        return "".join(out), written

    def finish(partial: Path, output: Path) -> None:
        articles: list[dict] = []
        with open(partial, encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                if not articles or articles[-1]["title"] != record["title"]:
                    articles.append({"title": record["title"], "paragraphs": []})
                articles[-1]["paragraphs"].append(record["paragraph"])
        atomic_write(output, json.dumps({"version": document.get("version", "1.1"), "data": articles},
                                        ensure_ascii=False))

    if not paragraphs:
        raise InputError("no paragraphs", path=input_path, fix="give a SQuAD file with questions")
    return resumable_stream(iter(paragraphs), render, output_path, inputs, max(1, config.chunk_rows // 16),
                            len(paragraphs), "", show_progress, finish)


def _rebuilt(context: str, spans: list, words: list[str]):
    """The context with its words replaced (what lies between words kept), and a function that
    moves a character offset of the old context to the new one."""
    pieces, shifts, position, delta = [], [], 0, 0
    for (old, (start, end)), new in zip(spans, words):
        pieces.append(context[position:start] + new)
        if new != old:
            delta += len(new) - (end - start)
            shifts.append((end, delta))
        position = end
    pieces.append(context[position:])

    def moved(offset: int) -> int:  # by the length change of every replaced word that ends before it
        return offset + next((shift for end, shift in reversed(shifts) if end <= offset), 0)
    return "".join(pieces), moved
