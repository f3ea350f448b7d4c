"""Fault suite: each long-running command killed with SIGKILL at three seeded random points, then
run again until it completes, ends with the same weights (or the same output file) as a run that
was never interrupted. (No dev set: the weights compared are those of the last step, not of
a best epoch that an early kill might never touch.)

Runs are forked from the test process (no start-up cost) and use one thread, as DataLoader
workers do after a fork; the uninterrupted run is forked the same way, so all share the arithmetic.
"""

import json
import multiprocessing
import os
import random
import signal
import threading
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForMaskedLM, BertForSequenceClassification

from conftest import tiny_bert_config, write
from tinybert.augment import AugmentConfig, augment_file
from tinybert.distillation.task import DistillConfig, distill
from tinybert.finetune import FinetuneConfig, finetune
from tinybert.distillation.general import GeneralConfig, general_distill
from tinybert.training import CHECKPOINT_DIR, STATE_FILE, TrainingConfig

ROWS = "".join(f"{'a great and warm film' if i % 2 else 'a dull , tired mess'} {'really ' * (i % 5)}\t"
               f"{'pos' if i % 2 else 'neg'}\n" for i in range(64))
SHAPE = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}
LABELS = {"num_labels": 2, "id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}


def _training(**settings):
    return TrainingConfig(**{"epochs": 3, "batch_size": 8, "learning_rate": 1e-3, "checkpoint_every": 2,
                             "log_every": 1, **settings})


def _child(work, progress, kill_at) -> None:
    torch.set_num_threads(1)
    if kill_at is not None:
        # killed from within, a millisecond after it reaches the point (a step or a chunk takes far
        # longer): it cannot finish first, as it could between a parent's polls
        def watch():
            while progress() < kill_at:
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Thread(target=watch, daemon=True).start()
    try:
        work()
    except BaseException:  # noqa: BLE001 - reported through the exit code
        os._exit(1)
    os._exit(0)


def _run(work, progress=None, kill_at=None) -> None:
    """Runs ``work`` in a forked process to its end; with ``kill_at``, SIGKILLed once ``progress()``
    reaches that point: the process must have died of it (not finished first, not failed)."""
    process = multiprocessing.get_context("fork").Process(target=_child, args=(work, progress, kill_at))
    process.start()
    process.join()
    assert process.exitcode == (0 if kill_at is None else -signal.SIGKILL), (kill_at, process.exitcode)


def _log_steps(output):
    def steps():
        path = output / "train_log.jsonl"
        return len(path.read_text().splitlines()) if path.is_file() else 0
    return steps


def _checkpoint_step(output):
    def step():
        state = output / CHECKPOINT_DIR / STATE_FILE
        return json.loads(state.read_text())["global_step"] if state.is_file() else 0
    return step


def _killed_three_times_then_finished(make_work, output, progress, last, seed, done_before=None):
    """Kills the work at three seeded points before its ``last`` one, then runs it to the end, which
    must continue from where the kills left it (``done_before()``: what a resumed run starts from,
    by default the step of the training checkpoint), not start again."""
    for point in sorted(random.Random(seed).sample(range(2, last, 3), 3)):
        _run(make_work(output), progress, point)
    assert (done_before or _checkpoint_step(output))() > 0
    _run(make_work(output))


def _same_weights(first, second):
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)


@pytest.fixture
def files(tmp_path, tiny_model_dir, real_tokenizer):
    torch.manual_seed(1)
    teacher = tmp_path / "teacher"
    BertForSequenceClassification(tiny_bert_config(num_hidden_layers=4, hidden_size=64, intermediate_size=128,
                                                   **LABELS)).save_pretrained(teacher)
    real_tokenizer.save_pretrained(teacher)
    return {"train": write(tmp_path / "train.txt", ROWS), "teacher": teacher, "encoder": tiny_model_dir,
            "student": write(tmp_path / "student.json", json.dumps(SHAPE)),
            "corpus": write(tmp_path / "corpus.txt", "".join(f"sentence {i} about {'films ' * (i % 7)}.\n"
                                                              for i in range(200)))}


def test_finetune_survives_three_kills(tmp_path, files):
    def make(output):
        return lambda: finetune(files["encoder"], files["train"], output,
                                config=FinetuneConfig(training=_training(), max_length=32), show_progress=False)
    _run(make(tmp_path / "straight"))
    _killed_three_times_then_finished(make, tmp_path / "killed", _log_steps(tmp_path / "killed"), 24, seed=1)
    _same_weights(tmp_path / "straight", tmp_path / "killed")


def test_finetune_with_mid_epoch_evaluations_and_patience_survives_three_kills(tmp_path, files):
    """The evaluations so far and the best one are in the checkpoint: a resumed run evaluates,
    saves and stops early exactly where an uninterrupted one does."""
    def scored(numbers):  # scores: dev's Pearson changes at every evaluation
        return "".join(f"{'a great and warm film' if i % 2 else 'a dull , tired mess'} {'really ' * (i % 5)}\t"
                       f"{(4.5 if i % 2 else 0.5) + (i % 5) * (0.1 if i % 2 else -0.1):.1f}\n" for i in numbers)
    train, dev = write(tmp_path / "scores.txt", scored(range(40))), write(tmp_path / "dev.txt", scored(range(40, 56)))

    def make(output):
        return lambda: finetune(files["encoder"], train, output, eval_path=dev, show_progress=False, config=FinetuneConfig(
            training=_training(epochs=20, eval_every=3, patience=2), max_length=32))
    _run(make(tmp_path / "straight"))
    straight = json.loads((tmp_path / "straight" / "training_state.json").read_text())
    assert straight["stopped_early"] and any(record["step"] % 3 == 0 and record["epoch"] % 1 for record in
                                             straight["history"])
    lines = _log_steps(tmp_path / "straight")()
    _killed_three_times_then_finished(make, tmp_path / "killed", _log_steps(tmp_path / "killed"), lines, seed=6)
    killed = json.loads((tmp_path / "killed" / "training_state.json").read_text())
    assert killed["history"] == straight["history"] and killed["steps"] == straight["steps"]
    _same_weights(tmp_path / "straight", tmp_path / "killed")


@pytest.mark.parametrize("stage", ["intermediate", "prediction"])
def test_both_distillation_stages_survive_three_kills(tmp_path, files, stage):
    student = str(files["student"])
    if stage == "prediction":  # stage 2 starts from a stage-1 output
        distill(files["teacher"], student, files["train"], tmp_path / "stage1",
                config=DistillConfig(training=_training(epochs=1), max_length=32), show_progress=False)
        student = str(tmp_path / "stage1")

    def make(output):
        return lambda: distill(files["teacher"], student, files["train"], output,
                               config=DistillConfig(stage=stage, training=_training(), max_length=32),
                               show_progress=False)
    _run(make(tmp_path / "straight"))
    _killed_three_times_then_finished(make, tmp_path / "killed", _log_steps(tmp_path / "killed"), 24,
                                      seed=2 if stage == "intermediate" else 3)
    _same_weights(tmp_path / "straight", tmp_path / "killed")


def test_general_distillation_survives_three_kills(tmp_path, files):
    def make(output):
        return lambda: general_distill(files["encoder"], [files["corpus"]], output, student=str(files["student"]),
                                       config=GeneralConfig(training=_training(epochs=2), max_length=32),
                                       show_progress=False)
    _run(make(tmp_path / "straight"))
    _killed_three_times_then_finished(make, tmp_path / "killed", _log_steps(tmp_path / "killed"), 18, seed=4)
    _same_weights(tmp_path / "straight", tmp_path / "killed")


def test_augmentation_survives_three_kills(tmp_path, files, real_tokenizer):
    torch.manual_seed(0)
    mlm = tmp_path / "mlm"
    BertForMaskedLM(tiny_bert_config()).save_pretrained(mlm)
    real_tokenizer.save_pretrained(mlm)

    def make(output):
        return lambda: augment_file(files["train"], output, mlm_dir=mlm, show_progress=False,
                                    config=AugmentConfig(candidates=4, variants=3, chunk_rows=2, mlm_runtime="torch"))

    def rows_done():
        progress = tmp_path / "killed.txt.progress.json"
        try:
            return json.loads(progress.read_text())["state"]["rows"] if progress.is_file() else 0
        except (json.JSONDecodeError, FileNotFoundError):
            return 0
    _run(make(tmp_path / "straight.txt"))
    _killed_three_times_then_finished(make, tmp_path / "killed.txt", rows_done, 60, seed=5, done_before=rows_done)
    assert (tmp_path / "killed.txt").read_bytes() == (tmp_path / "straight.txt").read_bytes()
    assert not list(tmp_path.glob("killed.txt.*"))
