"""Task metrics: which ones a task has, which one picks the best epoch, and computing them."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

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


def compute_metrics(logits: np.ndarray, labels: np.ndarray, label_space: LabelSpace) -> dict:
    """accuracy, MCC (+ F1 of label index 1 when binary) for classes; Pearson, Spearman for scores."""
    if label_space.is_regression:
        predictions = logits.reshape(-1)
        constant = np.ptp(predictions) == 0 or np.ptp(labels) == 0
        return {
            "pearson": 0.0 if constant else float(pearsonr(predictions, labels)[0]),
            "spearman": 0.0 if constant else float(spearmanr(predictions, labels)[0]),
            "mse": float(np.mean((predictions - labels) ** 2)),
        }
    predictions = logits.argmax(axis=-1)
    metrics = {"accuracy": float(accuracy_score(labels, predictions)),
               "mcc": float(matthews_corrcoef(labels, predictions))}
    if label_space.num_labels == 2:
        metrics["f1"] = float(f1_score(labels, predictions, pos_label=1, zero_division=0))
    return metrics
