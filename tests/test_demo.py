import bz2
import csv
import json

import pytest
from huggingface_hub import ModelCard

from tinybert.data import read_task_file
from tinybert.demo import run_demo
from tinybert.resources import rotten_tomatoes_file, write_rotten_tomatoes_splits


def test_demo_split_is_by_movie_deterministic_and_complete(tmp_path):
    first = write_rotten_tomatoes_splits(tmp_path / "a")
    second = write_rotten_tomatoes_splits(tmp_path / "b")
    assert all(first[name].read_bytes() == second[name].read_bytes() for name in first)
    movies_of = {}
    with bz2.open(rotten_tomatoes_file(), "rt", encoding="utf-8", newline="") as handle:
        for record in csv.DictReader(handle):
            if record["category"] in ("fresh", "rotten"):
                movies_of.setdefault(" ".join(record["text"].split()), set()).add(record["movie_name"])
    splits_of_movie = {}
    total = 0
    for name, path in first.items():
        data = read_task_file(path)
        total += len(data)
        assert {e.label for e in data.examples} == {"fresh", "rotten"}
        for example in data.examples:
            if len(movies_of[example.text_a]) == 1:  # a few snippets are shared by several films
                splits_of_movie.setdefault(next(iter(movies_of[example.text_a])), set()).add(name)
    assert total == 12808  # every snippet, plot summaries left out
    assert all(len(splits) == 1 for splits in splits_of_movie.values())  # no film in two splits
    assert len(splits_of_movie) > 500


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    results = run_demo(tmp_path / "demo", quick=True)
    evaluated = results["evaluation"]
    assert evaluated["teacher"]["accuracy"] > 0.6  # fresh is ~58% of the test split
    assert evaluated["student"]["params"] < evaluated["teacher"]["params"]
    # --quick leaves the baseline out; every student (the copy, the pruned one, the static one) and its int8
    # export is scored on the test split beside the teacher
    students = {"student", "student_pruned-3x192", "student_static"}
    assert set(evaluated) == {"teacher"} | students | {f"{name}_onnx_int8" for name in students}
    assert evaluated["student_onnx_int8"]["size_mb"] < evaluated["student"]["size_mb"]
    assert (evaluated["student_static"]["params"] < evaluated["student_pruned-3x192"]["params"]
            < evaluated["student"]["params"])
    assert results["export"]["fp32_parity_passed"] and "int8_metric_drop_points" in results["export"]
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["evaluation"] == evaluated
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "ONNX export of the student" in report and "retention" in report
    assert all((tmp_path / "demo" / "plots" / f"{name}.png").is_file()
               for name in ("losses", "metric", "size", "tradeoffs"))
    # every model directory carries a Hub model card; an evaluated model's holds its measured metrics
    for name in ("teacher", "intermediate", "student"):
        card = ModelCard.load(tmp_path / "demo" / name / "README.md")
        assert card.data.library_name == "transformers" and "## How it was made" in card.text
        if name == "intermediate":  # stage 1 is never evaluated: no results
            assert card.data.eval_results is None
            continue
        measured = {(result.dataset_split, result.metric_type): result.metric_value
                    for result in card.data.eval_results}
        best = json.loads((tmp_path / "demo" / name / "training_state.json").read_text())["best"]
        assert measured[("dev", "accuracy")] == best["accuracy"]
        assert measured[("test", "accuracy")] == evaluated[name]["accuracy"]
