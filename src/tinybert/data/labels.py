"""The task's labels: class names in a stable order, or one regression target."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import InputError
from .formats import Example, is_float

INT_LABEL = re.compile(r"^[+-]?\d+$")


def _parses_as_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


TASKS = ("sequence", "token", "qa")

# Where a training example's label comes from, kept for every example in the token caches: only an
# original row's label is known to be right (an augmented variant keeps its row's label, which
# its new words may have made wrong; unlabelled text has none). Stage 2's gold-label loss reads it.
ORIGINAL, AUGMENTED, UNLABELLED = 0, 1, 2
ORIGINS = ("original", "augmented", "unlabeled")  # their names, in that order
# What reading a file asks of its labels (the readers' and caches' ``labels`` argument): every row
# has one ("required": fine-tuning, evaluation), a row may lack one ("optional": distillation's
# training data), or none is read ("ignored": unlabelled text given as such).


def origin_of(augmented: bool, labelled: bool) -> int:
    return AUGMENTED if augmented else ORIGINAL if labelled else UNLABELLED


@dataclass
class LabelSpace:
    """What a task's model predicts: classes of a text (ordered names), a score (regression), a
    tag for each word (``token``: IOB2 tags such as O, B-PER, I-PER), or an answer span (``qa``)."""

    kind: str  # "classification", "regression", "token" or "qa"
    names: list[str] = field(default_factory=list)

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    @property
    def task(self) -> str:
        """sequence (a label or score per text), token (a tag per word) or qa (an answer span)."""
        return self.kind if self.kind in ("token", "qa") else "sequence"

    @property
    def num_labels(self) -> int:
        return {"regression": 1, "qa": 2}.get(self.kind, len(self.names))

    @classmethod
    def of_tags(cls, tags) -> "LabelSpace":
        """Token classification's tags, O first, then by entity type, B- before I-."""
        def order(tag: str):
            return (tag != "O", tag[2:] if tag[1:2] == "-" else tag, tag[:1] != "B")
        return cls("token", sorted(set(tags), key=order))

    @classmethod
    def infer(cls, data) -> "LabelSpace":
        """Integers → classes in numeric order; other numbers → regression; anything else →
        classes in sorted order. ``data``: a ``TaskData``, a ``TokenCache`` or ``TaskLabels``
        (anything with the distinct ``raw_labels`` as written, and the ``path``)."""
        raw = data.raw_labels
        if not raw:
            raise InputError("no labelled examples", path=data.path, fix="check the file is not empty")
        numbers = {value: line for value, line in raw.items() if _parses_as_number(value)}
        if len(numbers) == len(raw) and not all(is_float(value) for value in raw):
            value, line = next((v, line) for v, line in numbers.items() if not is_float(v))
            raise InputError(f"the score {value!r} is not a finite number", path=data.path, line=line,
                             fix="give every example a real score, or leave that line out")
        if all(INT_LABEL.match(value) for value in raw):
            return cls("classification", [str(v) for v in sorted({int(value) for value in raw})])
        if all(is_float(value) for value in raw):
            return cls("regression")
        return cls("classification", sorted(set(raw)))

    @classmethod
    def from_config(cls, config) -> "LabelSpace | None":
        """The label space a model's config stores, or None for a bare encoder."""
        architectures = " ".join(getattr(config, "architectures", None) or [])
        if "QuestionAnswering" in architectures:
            return cls("qa")
        if "TokenClassification" not in architectures and "SequenceClassification" not in architectures:
            return None
        tagger = "TokenClassification" in architectures
        if not tagger and (getattr(config, "problem_type", None) == "regression" or config.num_labels == 1):
            return cls("regression")
        names = [config.id2label[i] for i in range(config.num_labels)]
        if names == [f"LABEL_{i}" for i in range(config.num_labels)]:
            # transformers' names for labels nobody named: class i is what the data calls i
            names = [str(i) for i in range(config.num_labels)]
        return cls("token" if tagger else "classification", names)

    def config_fields(self) -> dict:
        """Keyword arguments for a transformers config that store this label space."""
        if self.is_regression:
            return {"num_labels": 1, "problem_type": "regression", "id2label": {0: "score"},
                    "label2id": {"score": 0}}
        if self.kind == "qa":
            return {}
        if self.kind == "token":
            return {"num_labels": len(self.names), "id2label": dict(enumerate(self.names)),
                    "label2id": {name: i for i, name in enumerate(self.names)}}
        return {"num_labels": len(self.names), "problem_type": "single_label_classification",
                "id2label": dict(enumerate(self.names)),
                "label2id": {name: i for i, name in enumerate(self.names)}}

    def encode(self, example: Example, path: str) -> int | float:
        return self.encode_value(example.label, path, example.line)

    def encode_value(self, label: str, path: str, line: int) -> int | float:
        """The class index (or the score) of a label as written on ``line`` of ``path``."""
        if self.is_regression:
            if not is_float(label):
                raise InputError(f"label {label!r} is not a number, but this is a regression task",
                                 path=path, line=line, fix="give a numeric score on every line")
            return float(label)
        key = str(int(label)) if self.kind == "classification" and INT_LABEL.match(label) else label
        try:
            return self.names.index(key)
        except ValueError:
            raise InputError(
                f"unknown label {label!r}; the model knows {', '.join(self.names)}", path=path, line=line,
                fix="use one of the model's labels, or fine-tune a model on data with this label",
            ) from None
