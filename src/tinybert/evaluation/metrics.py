"""Task metrics: which ones a task has, which one picks the best epoch, and computing them."""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

from ..data import LabelSpace
from ..errors import InputError

_PUNCTUATION = frozenset(string.punctuation)


def metric_names(label_space: LabelSpace) -> tuple[str, ...]:
    """The metrics that can pick the best epoch (higher is better for each), the default first."""
    if label_space.kind == "token":
        return ("f1", "precision", "recall", "f1_strict")
    if label_space.kind == "qa":
        return ("f1", "exact_match")
    if label_space.is_regression:
        return ("pearson", "spearman")
    return ("accuracy", "mcc", "f1") if label_space.num_labels == 2 else ("accuracy", "mcc")


def default_metric(label_space: LabelSpace) -> str:
    return metric_names(label_space)[0]


def selection_metric(metric: str | None, label_space: LabelSpace) -> str:
    """``metric`` (or the task's default) after checking that this task has it."""
    metric = metric or default_metric(label_space)
    if metric not in metric_names(label_space):
        raise InputError(f"unknown metric {metric!r} for this task",
                         fix=f"use one of {', '.join(metric_names(label_space))}")
    return metric


class MetricAccumulator:
    """Task metrics gathered batch by batch: a confusion matrix for classes (memory independent of
    the number of examples), predictions and scores (float32) for regression."""

    def __init__(self, label_space: LabelSpace):
        self.label_space = label_space
        self.confusion = np.zeros((label_space.num_labels, label_space.num_labels), dtype=np.int64)
        self.scores: list[np.ndarray] = []
        self.count = 0

    def merge(self, other: "MetricAccumulator") -> None:
        """Adds another process's share of the same evaluation."""
        self.confusion += other.confusion
        self.scores += other.scores
        self.count += other.count

    def add_batch(self, outputs: dict, batch: dict) -> None:
        self.add(outputs["logits"], batch["labels"].numpy())

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        self.count += len(labels)
        if self.label_space.is_regression:
            self.scores.append(np.stack([logits.reshape(-1), labels.reshape(-1)]).astype(np.float32))
        else:
            # imported where used, as scipy's below and seqeval's: at the top they made every command start a second later
            from sklearn.metrics import confusion_matrix
            size = self.label_space.num_labels
            self.confusion += confusion_matrix(labels, logits.argmax(axis=-1), labels=range(size))

    def result(self) -> dict:
        """accuracy, MCC (+ F1 of label index 1 when binary) for classes; Pearson, Spearman (+ MSE) for scores."""
        if self.label_space.is_regression:
            from scipy.stats import pearsonr, spearmanr
            predictions, labels = np.concatenate(self.scores, axis=1).astype(np.float64)
            constant = np.ptp(predictions) == 0 or np.ptp(labels) == 0
            return {"pearson": 0.0 if constant else float(pearsonr(predictions, labels)[0]),
                    "spearman": 0.0 if constant else float(spearmanr(predictions, labels)[0]),
                    "mse": float(np.mean((predictions - labels) ** 2))}
        matrix = self.confusion.astype(np.float64)
        total, correct = matrix.sum(), np.trace(matrix)
        true, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
        # Matthews' correlation for K classes (Gorodkin 2004), as scikit-learn computes it
        covariance = correct * total - true @ predicted
        spread = np.sqrt((total ** 2 - predicted @ predicted) * (total ** 2 - true @ true))
        metrics = {"accuracy": float(correct / total), "mcc": float(covariance / spread) if spread else 0.0}
        if self.label_space.num_labels == 2:
            hits, false_positives, misses = matrix[1, 1], matrix[0, 1], matrix[1, 0]
            denominator = 2 * hits + false_positives + misses
            metrics["f1"] = float(2 * hits / denominator) if denominator else 0.0
        return metrics


def compute_metrics(logits: np.ndarray, labels: np.ndarray, label_space: LabelSpace) -> dict:
    accumulator = MetricAccumulator(label_space)
    accumulator.add(np.asarray(logits), np.asarray(labels))
    return accumulator.result()


class TagMetrics:
    """Entity-level precision, recall and F1 over the words of each sentence (a word's tag is
    predicted on its first piece), counted as conlleval and Hugging Face's run_ner count them:
    seqeval's default mode, where an I-X that follows no X entity starts one. ``f1_strict`` beside
    them is seqeval's strict IOB2 mode, where such an I-X is no entity."""

    def __init__(self, label_space: LabelSpace):
        self.names = label_space.names
        self.gold: list[list[str]] = []
        self.predicted: list[list[str]] = []
        self.count = 0

    def add_batch(self, outputs: dict, batch: dict) -> None:
        labels = batch["labels"].numpy()
        guesses = outputs["logits"].argmax(-1)
        for row, guess in zip(labels, guesses):
            words = row != -100
            self.gold.append([self.names[i] for i in row[words]])
            self.predicted.append([self.names[i] for i in guess[words]])
        self.count += len(labels)

    def merge(self, other: "TagMetrics") -> None:
        self.gold += other.gold
        self.predicted += other.predicted
        self.count += other.count

    def result(self) -> dict:
        from seqeval.metrics import f1_score, precision_score, recall_score
        from seqeval.scheme import IOB2
        scores = {name: float(score(self.gold, self.predicted, zero_division=0))
                  for name, score in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score))}
        scores["f1_strict"] = float(f1_score(self.gold, self.predicted, mode="strict", scheme=IOB2, zero_division=0))
        return scores


class AnswerMetrics:
    """SQuAD exact match and F1 (the official answer normalisation, the best over each question's
    reference answers) of the best span of each question over its windows."""

    def __init__(self, examples: list[dict]):
        from ..data.squad import AnswerFinder
        self.examples = examples
        self.finder = AnswerFinder()
        self.count = 0

    def add_batch(self, outputs: dict, batch: dict) -> None:
        self.finder.add(outputs["start_logits"], outputs["end_logits"], batch["offset_start"].numpy(),
                        batch["offset_end"].numpy(), batch["example"].numpy())
        self.count += len(batch["example"])

    def merge(self, other: "AnswerMetrics") -> None:
        self.finder.merge(other.finder)
        self.count += other.count

    def result(self) -> dict:
        allow_empty = any(example["impossible"] for example in self.examples)
        answers = self.finder.answers(self.examples, allow_empty)
        return squad_scores([text for text, _, _ in answers],
                            [example["answers"] or [""] for example in self.examples], unanswerable=allow_empty)


def metrics_for(label_space: LabelSpace, dataset=None):
    """The accumulator of a task's metrics (QA needs the dataset's questions)."""
    if label_space.kind == "token":
        return TagMetrics(label_space)
    if label_space.kind == "qa":
        return AnswerMetrics(dataset.examples())
    return MetricAccumulator(label_space)


def normalize_answer(text: str) -> str:
    """SQuAD's official normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _f1(prediction: str, truth: str, unanswerable: bool) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if unanswerable and (not predicted or not gold):
        return float(predicted == gold)  # SQuAD 2.0's script: no answer is right where there is none
    common = sum((Counter(predicted) & Counter(gold)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], references: list[list[str]], unanswerable: bool = False) -> dict:
    """Exact match and F1 (fractions), each the best over a question's reference answers, as the
    official SQuAD v1.1 script counts them (an answer that normalises to nothing has F1 0), or
    v2.0's when the file has ``unanswerable`` questions (an empty answer to one scores 1)."""
    exact = [max(float(normalize_answer(p) == normalize_answer(r)) for r in refs)
             for p, refs in zip(predictions, references)]
    f1 = [max(_f1(p, r, unanswerable) for r in refs) for p, refs in zip(predictions, references)]
    return {"f1": float(np.mean(f1)), "exact_match": float(np.mean(exact))}
