import math

import numpy as np
import pytest

from tinybert.data import LabelSpace
from tinybert.evaluation.measure import format_table
from tinybert.evaluation.metrics import compute_metrics


def test_binary_classification_metrics_by_hand():
    # predictions 1,0,1,1 vs labels 1,0,0,1: TP=2, TN=1, FP=1, FN=0
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 0.5], [-3.0, 3.0]])
    metrics = compute_metrics(logits, np.array([1, 0, 0, 1]), LabelSpace("classification", ["0", "1"]))
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    assert metrics["mcc"] == pytest.approx((2 * 1 - 1 * 0) / math.sqrt(3 * 2 * 1 * 2))


def test_multiclass_has_no_binary_f1():
    logits = np.eye(3)[[0, 1, 2, 2]]
    metrics = compute_metrics(logits, np.array([0, 1, 2, 1]), LabelSpace("classification", ["a", "b", "c"]))
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert "f1" not in metrics


def test_regression_metrics_by_hand():
    predictions = np.array([[1.0], [2.0], [3.0]])
    labels = np.array([1.0, 2.0, 4.0])
    metrics = compute_metrics(predictions, labels, LabelSpace("regression"))
    # covariance 3, variances 2 and 42/9
    assert metrics["pearson"] == pytest.approx(3 / math.sqrt(2 * 42 / 9))
    assert metrics["spearman"] == pytest.approx(1.0)
    assert metrics["mse"] == pytest.approx(1 / 3)


def test_constant_predictions_do_not_crash():
    metrics = compute_metrics(np.zeros((3, 1)), np.array([1.0, 2.0, 3.0]), LabelSpace("regression"))
    assert metrics["pearson"] == 0.0


def test_table_formats_numbers():
    table = format_table({"accuracy": 0.91234, "params": 22713216, "examples_per_s_batch32": 1234.5})
    assert "0.9123" in table and "22,713,216" in table and "1,234.5" in table


def test_a_rank_merges_the_other_ranks_shares_once_and_its_own_once(monkeypatch):
    """gather_object hands every rank a copy of its own share too: merging everything that is not
    the same object counted the local share twice."""
    import copy
    from types import SimpleNamespace

    import tinybert.evaluation.measure as evaluation
    from tinybert.evaluation.metrics import MetricAccumulator
    space = LabelSpace("classification", ["0", "1"])
    shares = [MetricAccumulator(space), MetricAccumulator(space)]
    shares[0].add(np.array([[0.0, 1.0]] * 3), np.array([1, 1, 1]))  # rank 0: 3 right
    shares[1].add(np.array([[0.0, 1.0]] * 5), np.array([0, 0, 0, 0, 0]))  # rank 1: 5 wrong
    for rank in (0, 1):
        local = copy.deepcopy(shares[rank])
        monkeypatch.setattr(evaluation, "metrics_of_shard", lambda *args, **kwargs: local)
        monkeypatch.setattr(evaluation, "gather_object", lambda objects: [copy.deepcopy(s) for s in shares])
        result = evaluation.evaluate_dataset(None, [], None, space,
                                             accelerator=SimpleNamespace(num_processes=2, process_index=rank))
        assert result["accuracy"] == pytest.approx(3 / 8)
