"""Task metrics: which ones a task has, which one picks the best epoch, and computing them."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import confusion_matrix

from .data import LabelSpace
from .errors import InputError


def metric_names(label_space: LabelSpace) -> tuple[str, ...]:
    """The metrics that can pick the best epoch (higher is better for each)."""
    if label_space.is_regression:
        return ("pearson", "spearman")
    return ("accuracy", "mcc", "f1") if label_space.num_labels == 2 else ("accuracy", "mcc")


def default_metric(label_space: LabelSpace) -> str:
    return "pearson" if label_space.is_regression else "accuracy"


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

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        self.count += len(labels)
        if self.label_space.is_regression:
            self.scores.append(np.stack([logits.reshape(-1), labels.reshape(-1)]).astype(np.float32))
        else:
            size = self.label_space.num_labels
            self.confusion += confusion_matrix(labels, logits.argmax(axis=-1), labels=range(size))

    def result(self) -> dict:
        """accuracy, MCC (+ F1 of label index 1 when binary) for classes; Pearson, Spearman (+ MSE) for scores."""
        if self.label_space.is_regression:
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
