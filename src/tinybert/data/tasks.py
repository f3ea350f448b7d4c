"""Which task a file holds, and its token cache: one entry point for every command."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..errors import InputError
from .cache import task_cache
from .labels import LabelSpace
from .options import DataOptions, TaskLabels
from .squad import answer_cache, read_questions
from .tagging import TAG, read_sentences, tag_cache

_PEEK = 1 << 16


def detect_task(path: str | Path, options: DataOptions, expected: str | None = None) -> str:
    """``options.task``, or what the file looks like: SQuAD JSON or JSONL questions → qa; CoNLL
    columns ending in IOB2 tags, or JSONL with tokens → token; anything else → sequence. Lines of
    one word each with blank lines between them are bare words in sentences (a tagger's unlabelled
    text) only when ``expected`` (the model's task) is token: alone they are as likely texts without
    a label column (a Chinese sentence has no spaces) with a blank line among them."""
    if options.task != "auto":
        return options.task
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path, fix="check the path")
    with open(path, "rb") as handle:
        head = handle.read(_PEEK).decode("utf-8", errors="replace")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):  # JSON lines (the tagging reader takes .json lines too)
        first = next((line for line in head.splitlines() if line.strip()), "")
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and "tokens" in record:  # before "paragraphs": a word may be that
            return "token"
        if suffix == ".json":
            return "qa" if '"paragraphs"' in head else "sequence"
        return "qa" if isinstance(record, dict) and {"question", "context"} <= record.keys() else "sequence"
    complete = head.splitlines()[:-1]
    lines = [line for line in complete if line.strip()][:50]
    # a word first, not `text<TAB>label`
    one_word_first = "\t" not in lines[0] or " " not in lines[0].split("\t")[0] if lines else False
    words = [line.split() for line in lines if not line.startswith("-DOCSTART-")]
    tagged = all(len(fields) >= 2 and TAG.match(fields[-1]) for fields in words)
    bare = expected == "token" and all(len(fields) == 1 for fields in words) and any(not line.strip()
                                                                                    for line in complete)
    if one_word_first and (lines[0].startswith("-DOCSTART-") or tagged or bare):
        return "token"
    return "sequence"


def task_data(kind: str, path, tokenizer, max_length: int, options: DataOptions, default_dir=None,
              show_progress: bool = True, limit: bool = True, labels: str = "required"):
    """The token cache of a file of task ``kind``; ``options.max_examples`` cuts it unless ``limit``
    is False (a dev set is read whole). ``labels``: required, optional or ignored (see ``labels.py``)."""
    if kind == "qa":
        return answer_cache(path, tokenizer, max_length, replace(options, max_examples=options.max_examples
                                                                 if limit else None), default_dir, show_progress,
                            labels)
    build = tag_cache if kind == "token" else task_cache
    cache = build(path, tokenizer, max_length, options, default_dir, show_progress=show_progress, labels=labels)
    return cache.first(options.max_examples if limit else None)


def train_and_dev(kind: str, train_path, eval_path, tokenizer, max_length: int, options: DataOptions,
                  default_dir=None, show_progress: bool = True, labels: str = "required"):
    """The training data's cache (cut to ``max_examples``; its rows' ``labels`` as asked) and the
    dev data's (whole and labelled, or None)."""
    train = task_data(kind, train_path, tokenizer, max_length, options, default_dir, show_progress, labels=labels)
    dev = task_data(kind, eval_path, tokenizer, max_length, options, default_dir, show_progress, limit=False) \
        if eval_path else None
    return train, dev


def label_space_of_data(kind: str, data) -> LabelSpace:
    """The label space a file's labels make: classes or scores, tags, or answer spans."""
    if kind == "qa":
        return LabelSpace("qa")
    if kind == "token":
        return LabelSpace.of_tags(data.raw_labels)
    return LabelSpace.infer(data)


def scan_labels(path, options: DataOptions, kind: str | None = None, require_labels: bool = True) -> TaskLabels:
    """The labels of a file read without tokenising it (for a plan or a check of --num_labels);
    ``require_labels=False`` for distillation's training files, which may have none."""
    kind = kind or detect_task(path, options)
    if kind == "token":
        tags: dict[str, int] = {}
        for sentence in read_sentences(path):
            for tag in sentence.tags or ():
                tags.setdefault(tag, sentence.line)
        return TaskLabels(str(path), tags)
    if kind == "qa":
        read_questions(path)
        return TaskLabels(str(path), {})
    return options.labels(path, require_labels)
