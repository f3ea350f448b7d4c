"""Experiment trackers (--report-to), dev evaluations every --eval-every steps, and --patience."""

import json

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import BertForSequenceClassification

from conftest import tiny_bert_config, write
from tinybert import monitoring

LABELS = {"num_labels": 2, "id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
SHAPE = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}


def _rows(count, offset=0):
    return "".join(f"{'a great and warm film' if i % 2 else 'a dull , tired mess'} {'really ' * (i % 5)}\t"
                   f"{'pos' if i % 2 else 'neg'}\n" for i in range(offset, offset + count))


def _log(directory):
    return [json.loads(line) for line in (directory / "train_log.jsonl").read_text().splitlines()]


def _scalars(directory):
    """tag → {step: value} of every scalar in the TensorBoard event files under ``directory``."""
    found = {}
    for events in sorted(directory.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, {}).update({event.step: event.value for event in accumulator.Scalars(tag)})
    return found


def test_distill_writes_every_logged_loss_and_evaluation_to_tensorboard(tmp_path, real_tokenizer, tinybert_cli):
    torch.manual_seed(1)
    teacher = tmp_path / "teacher"
    BertForSequenceClassification(tiny_bert_config(num_hidden_layers=4, hidden_size=64, intermediate_size=128,
                                                   **LABELS)).save_pretrained(teacher)
    real_tokenizer.save_pretrained(teacher)
    train, dev = write(tmp_path / "train.txt", _rows(32)), write(tmp_path / "dev.txt", _rows(8, 32))
    student = write(tmp_path / "student.json", json.dumps(SHAPE))
    common = ["--teacher", teacher, "--train", train, "--batch-size", "8", "--max-length", "32", "--log-every", "1",
              "--report-to", "tensorboard"]
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    first = tinybert_cli("distill", "--stage", "intermediate", "--student", student, "--output", stage1, "--epochs", "1",
                         *common)
    assert first.returncode == 0, first.stderr[-2000:]
    second = tinybert_cli("distill", "--stage", "prediction", "--student", stage1, "--eval", dev, "--output", stage2,
                          "--epochs", "2", "--eval-every", "3", *common)
    assert second.returncode == 0, second.stderr[-2000:]

    for run, parts in ((stage1, {"loss", "att", "hid", "emb"}), (stage2, {"loss", "pred"})):
        scalars = _scalars(run / "tinybert")
        records = _log(run)
        losses = [record for record in records if "loss" in record]
        assert len(losses) == 4 * (1 if run == stage1 else 2)  # every step, as logged
        for record in losses:
            assert set(record) - {"step", "epoch", "lr"} == parts
            for name in parts | {"lr", "epoch"}:
                assert scalars[f"train/{name}"][record["step"]] == pytest.approx(record[name], rel=1e-6), name
        assert all(value > 0 for value in scalars["train/examples_per_s"].values())
        for record in (record for record in records if "eval" in record):
            for name, value in record["eval"].items():
                assert scalars[f"eval/{name}"][record["step"]] == pytest.approx(value, rel=1e-6)
    # stage 2 evaluated at steps 3 and 6 (--eval-every 3) and at each epoch's end (4 and 8)
    assert [record["step"] for record in _log(stage2) if "eval" in record] == [3, 4, 6, 8]
    # the run's settings are its hyper-parameters
    settings = yaml.safe_load(next((stage2 / "tinybert").rglob("hparams.yml")).read_text())
    assert settings["stage"] == "prediction" and settings["eval_every"] == 3 and settings["report_to"] == "tensorboard"


@pytest.mark.parametrize("trackers, message", [
    (["wandb"], "--report-to wandb needs the wandb package, which is not installed\n  fix: pip install wandb"),
    (["tensorbord"], "--report-to tensorbord: not a tracker accelerate supports"),
])
def test_a_missing_or_unknown_tracker_is_one_message_before_training(tmp_path, tiny_model_dir, tinybert_cli,
                                                                     trackers, message):
    train = write(tmp_path / "train.txt", _rows(16))
    result = tinybert_cli("finetune", "--model", tiny_model_dir, "--train", train, "--output", tmp_path / "out",
                          "--report-to", *trackers)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_finetune_with_patience_stops_once_dev_stops_improving(tmp_path, tiny_model_dir, tinybert_cli):
    def scored(count, offset=0):  # scores: dev's Pearson moves with every epoch, where accuracy would jump
        return "".join(f"{'a great and warm film' if i % 2 else 'a dull , tired mess'} {'really ' * (i % 5)}\t"
                       f"{(4.5 if i % 2 else 0.5) + (i % 5) * (0.1 if i % 2 else -0.1):.1f}\n"
                       for i in range(offset, offset + count))
    train, dev = write(tmp_path / "train.txt", scored(32)), write(tmp_path / "dev.txt", scored(16, 32))
    result = tinybert_cli("finetune", "--model", tiny_model_dir, "--train", train, "--eval", dev, "--output",
                          tmp_path / "out", "--patience", "1", "--epochs", "50", "--batch-size", "8", "--lr", "1e-3",
                          "--max-length", "32")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "training_state.json").read_text())
    pearson = [record["eval"]["pearson"] for record in summary["history"]]
    # dev improved, then one evaluation did not improve on the best, and training ended there: far from 50 epochs
    assert pearson[-2] > pearson[0] and pearson[-2] == max(pearson) > pearson[-1]
    assert summary["stopped_early"] and len(pearson) < 50 and summary["steps"] == 4 * len(pearson)
    assert summary["best"]["pearson"] == pearson[-2]
    assert "stopping early (--patience 1)" in result.stdout + result.stderr


def _points(directory):
    """tag → [(step, value), ...] of the scalars of one TensorBoard folder, read as TensorBoard reads
    it: a writer started again with a purge step hides the earlier points from that step on."""
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_a_run_started_afresh_over_an_earlier_ones_events_leaves_one_point_per_step(tmp_path, tiny_model_dir,
                                                                                    tinybert_cli):
    train, output = write(tmp_path / "train.txt", _rows(16)), tmp_path / "out"
    argv = ["finetune", "--model", tiny_model_dir, "--train", train, "--output", output, "--epochs", "2",
            "--batch-size", "8", "--max-length", "32", "--log-every", "1", "--report-to", "tensorboard"]
    first = tinybert_cli(*argv)
    assert first.returncode == 0, first.stderr[-2000:]
    # as after a kill before the first checkpoint, or a checkpoint deleted to train from the start
    (output / "training_state.json").unlink()
    second = tinybert_cli(*argv, "--lr", "1e-3")
    assert second.returncode == 0, second.stderr[-2000:]
    losses = [(record["step"], record["loss"]) for record in _log(output) if "loss" in record]
    points = _points(output / "tinybert")["train/loss"]
    assert [step for step, _ in points] == [step for step, _ in losses] == [1, 2, 3, 4]  # the second run's only
    assert [value for _, value in points] == pytest.approx([value for _, value in losses], rel=1e-6)


def test_patience_running_out_at_the_last_epoch_is_no_early_stop(tmp_path, tiny_model_dir, tinybert_cli, monkeypatch):
    from tinybert.evaluation import measure
    scores = iter([0.5, 0.6, 0.55])  # dev improves, then falls at the third and last epoch
    monkeypatch.setattr(measure, "evaluate_dataset", lambda *args, **kwargs: dict.fromkeys(
        ("accuracy", "f1", "mcc", "pearson", "spearman"), next(scores)))
    train, dev = write(tmp_path / "train.txt", _rows(16)), write(tmp_path / "dev.txt", _rows(8, 16))
    result = tinybert_cli("finetune", "--model", tiny_model_dir, "--train", train, "--eval", dev, "--output",
                          tmp_path / "out", "--patience", "1", "--epochs", "3", "--batch-size", "8", "--max-length", "32")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "training_state.json").read_text())
    assert len(summary["history"]) == 3 and summary["steps"] == 6 and not summary["stopped_early"]
    assert "stopping early" not in result.stdout + result.stderr


def test_a_negative_patience_is_one_message_before_training(tmp_path, tiny_model_dir, tinybert_cli):
    train = write(tmp_path / "train.txt", _rows(16))
    result = tinybert_cli("finetune", "--model", tiny_model_dir, "--train", train, "--eval", train, "--output",
                          tmp_path / "out", "--patience", "-1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--patience -1 is no number of evaluations" in result.stderr and not (tmp_path / "out").exists()


def test_all_trackers_are_those_that_keep_the_run_on_this_machine(monkeypatch):
    monkeypatch.setattr(monitoring, "get_available_trackers", lambda: ["tensorboard", "comet_ml", "clearml", "mlflow"])
    assert monitoring.trackers(["all"]) == ["tensorboard", "mlflow"]
    assert monitoring.trackers(["comet_ml"]) == ["comet_ml"]  # named: the user's choice
    assert monitoring.trackers(["all", "comet_ml"]) == ["tensorboard", "comet_ml", "mlflow"]


def test_a_last_evaluation_barely_above_the_best_is_no_sign_of_a_model_still_learning():
    def history(*values):
        return [{"step": step, "eval": {"f1": value}} for step, value in enumerate(values, start=1)]
    assert monitoring.still_rising(history(0.8073, 0.8330), "f1") == (0.8073, 0.8330)
    assert monitoring.still_rising(history(0.8517, 0.8684, 0.8692), "f1") is None  # CoNLL's teacher at epoch 8
    assert monitoring.still_rising(history(0.30, 0.29), "f1") is None


def test_an_evaluation_after_max_steps_stops_mid_epoch_is_recorded_at_the_fraction_reached(
        tmp_path, tiny_model_dir, tinybert_cli):
    max_steps, epoch = 6, 1.5
    train, dev = write(tmp_path / "train.txt", _rows(32)), write(tmp_path / "dev.txt", _rows(8, 32))  # 4 batches an epoch
    result = tinybert_cli("finetune", "--model", tiny_model_dir, "--train", train, "--eval", dev, "--output",
                          tmp_path / "out", "--max-steps", max_steps, "--epochs", "3", "--batch-size", "8",
                          "--max-length", "32")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "training_state.json").read_text())
    assert summary["steps"] == max_steps and summary["history"][-1]["epoch"] == epoch
    assert [record["epoch"] for record in _log(tmp_path / "out") if "eval" in record][-1] == epoch
    assert f"epoch {epoch:.4g} (step {max_steps})" in result.stdout + result.stderr
