"""The report shows differences at a glance: metric axes that start near the lowest value,
retention beside each bar, the task's own metric, and smoothed loss curves."""

import json

import numpy as np
import pytest
from matplotlib import pyplot as plt

import tinybert.pipeline.report as report


def _results(metric: str, values: dict, extra: dict | None = None) -> dict:
    return {"evaluation": {key: {metric: value, "params": 1_000_000, "size_mb": 4.0, **(extra or {})}
                           for key, value in values.items()}}


def test_metric_axis_starts_near_the_lowest_value_not_zero():
    low, high = report.metric_axis([0.83, 0.89, 0.86])
    assert 0.7 < low < 0.83 and high > 0.89
    low, high = report.metric_axis([0.9, 0.9])  # equal values still get an axis
    assert low < 0.9 < high


def test_metric_bars_carry_their_retention(tmp_path, monkeypatch):
    labels = []
    monkeypatch.setattr(plt.Axes, "bar_label", lambda self, bars, labels=None, **kw: labels_seen(labels))

    def labels_seen(shown):
        labels.extend(shown)
    _, rows = report.model_rows(_results("f1", {"teacher": 0.90, "student": 0.88, "baseline": 0.80}))
    report._plot_bars(rows, "test", "test f1", tmp_path / "m.png", "{:.4f}", is_metric=True)
    assert labels == ["0.9000", "0.8800 (97.8 % of teacher)", "0.8000 (88.9 % of teacher)"]
    assert (tmp_path / "m.png").is_file()


@pytest.mark.parametrize("metric, extra, column", [("accuracy", {}, None), ("pearson", {}, None), ("f1", {}, None),
                                                   ("f1", {"exact_match": 0.5}, "test exact_match")])
def test_the_table_reports_the_tasks_metric(metric, extra, column):
    results = _results(metric, {"teacher": 0.8, "student": 0.78}, extra)
    chosen, rows = report.model_rows(results)
    assert chosen == metric and rows[1]["retention"] == pytest.approx(0.78 / 0.8)
    header, _ = report._table(results)
    assert f"test {metric}" in header and (column is None or column in header)


def test_smoothed_curves_follow_the_trend_and_keep_gaps():
    rng = np.random.default_rng(0)
    noisy = list(1.0 + rng.normal(0, 0.3, 200))
    smooth = report.smoothed(noisy)
    assert np.std(smooth[50:]) < np.std(noisy[50:]) / 3
    assert report.smoothed([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # unbiased from the first point
    assert report.smoothed([1.0, None, 1.0])[1] is None


def test_loss_plot_draws_raw_points_faint_behind_the_smoothed_line(tmp_path, monkeypatch):
    stage = tmp_path / "teacher"
    stage.mkdir()
    (stage / "train_log.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1 / (i + 1)}) + "\n" for i in range(30)))
    drawn = []
    real = plt.Axes.plot
    monkeypatch.setattr(plt.Axes, "plot", lambda self, *a, **kw: drawn.append(kw) or real(self, *a, **kw))
    assert report._plot_losses(tmp_path, tmp_path)
    assert [kw.get("alpha", 1) < 0.5 for kw in drawn] == [True, False]


def test_a_metric_that_is_not_a_number_is_left_out_of_its_plot(tmp_path):
    _, rows = report.model_rows(_results("pearson", {"teacher": 0.9, "student": float("nan")}))
    assert report._plot_bars(rows, "test", "test pearson", tmp_path / "m.png", "{:.4f}", is_metric=True)


def test_the_report_warns_when_the_baseline_beats_the_teacher_and_not_otherwise(tmp_path):
    finetune = {"epochs": 3.0, "patience": 2}
    beaten = _results("f1", {"teacher": 0.32, "student": 0.31, "baseline": 0.33})
    [warning] = report.warnings_of(beaten, None, finetune)
    assert warning.startswith("The baseline (the student fine-tuned on the labels alone) beats the teacher on test "
                              "(f1 0.3300 against 0.3200): the teacher is under-trained: distillation cannot exceed it")
    assert "finetune.epochs" in warning
    assert report.write_report(tmp_path, {**beaten, "warnings": [warning]}).read_text().count(warning) == 1
    # a teacher that stopped improving before its last evaluation, and a baseline below it: nothing to say
    settled = {"metric": "f1", "history": [{"step": 4, "eval": {"f1": 0.30}}, {"step": 8, "eval": {"f1": 0.29}}]}
    assert report.warnings_of(_results("f1", {"teacher": 0.32, "baseline": 0.31}), settled, finetune) == []

    # a teacher given as finetune.teacher_dir: the pipeline's fine-tuning settings are not what made it
    [given] = report.warnings_of(beaten, None, {**finetune, "teacher_dir": "teachers/sst2"})
    assert "the teacher is under-trained" in given and "Train the teacher of finetune.teacher_dir" in given
    assert "(finetune.epochs, finetune.lr)" not in given
