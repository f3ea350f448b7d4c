"""Stage 2 reads the teacher's outputs from a cache made once: the same student as running the
teacher at every step, and a cache never reused for another teacher, data file or length."""

import json
import logging
import os
import subprocess
import sys
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification

from conftest import tiny_bert_config, write
from test_tasks import CONLL, TAGS, squad_document
from tinybert.data import DataOptions
from tinybert.data.labels import LabelSpace
from tinybert.data.tasks import task_data
from tinybert.distillation.task import DistillConfig, distill
from tinybert.distillation.teacher_pass import VALUES_FILE, TeacherPass
from tinybert.training import TrainingConfig

SENTIMENT = LabelSpace("classification", ["neg", "pos"])
MODELS = {"sequence": BertForSequenceClassification, "token": BertForTokenClassification,
          "qa": BertForQuestionAnswering}


def _teacher(path, real_tokenizer, space, seed=1):
    torch.manual_seed(seed)
    model = MODELS[space.task](tiny_bert_config(num_hidden_layers=2, **space.config_fields()))
    head = model.qa_outputs if space.task == "qa" else model.classifier
    with torch.no_grad():  # confident outputs, so that the soft loss and its gradients are far from uniform's
        head.weight.mul_(30)
    model.save_pretrained(path)
    real_tokenizer.save_pretrained(path)
    return path


def _data(tmp_path, task, rows=24):
    if task == "token":
        return write(tmp_path / "train.txt", CONLL * 16)
    if task == "qa":
        return write(tmp_path / "train.json", json.dumps(squad_document(repeat=2)))
    return write(tmp_path / "train.txt", "".join(f"{'a great and warm film' if i % 2 else 'a dull , tired mess'} "
                                                f"{'really ' * (i % 5)}\t{'pos' if i % 2 else 'neg'}\n"
                                                for i in range(rows)))


def _caches(directory) -> list:
    return [path for path in directory.glob("teacher-outputs-*") if path.is_dir()]


def _stage2(teacher, train, output, *, cached=True, max_length=48, cache=None, seed=3):
    training = TrainingConfig(epochs=2, batch_size=8, learning_rate=1e-3, log_every=1, seed=seed)
    config = DistillConfig(stage="prediction", training=training, max_length=max_length, init_from_teacher=True,
                           layers=1, no_teacher_cache=not cached)
    return distill(teacher, "unused", train, output, config=config, show_progress=False,
                   data_options=DataOptions(cache_dir=str(cache)) if cache else None)


@pytest.mark.parametrize("task", ["sequence", "token", "qa"])
def test_stage_2_from_the_cache_trains_the_student_running_the_teacher_would(tmp_path, real_tokenizer, task,
                                                                              monkeypatch):
    space = {"sequence": SENTIMENT, "token": LabelSpace.of_tags(TAGS), "qa": LabelSpace("qa", [])}[task]
    teacher, train = _teacher(tmp_path / "teacher", real_tokenizer, space), _data(tmp_path, task)
    teacher_passes = []  # forward calls without gradients: the frozen teacher's (no dev set is evaluated)
    forward = MODELS[task].forward

    def counted(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            teacher_passes.append(len(kwargs.get("input_ids", args[0] if args else ())))
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(MODELS[task], "forward", counted)
    _stage2(teacher, train, tmp_path / "live", cached=False)
    live_passes, teacher_passes[:] = list(teacher_passes), []
    _stage2(teacher, train, tmp_path / "cached")
    assert len(live_passes) >= 6  # the teacher at every step of two epochs
    assert sum(teacher_passes) == sum(live_passes) // 2  # once over the rows, to fill the cache, then never
    assert not _caches(tmp_path / "live" / "token_cache")
    assert len(_caches(tmp_path / "cached" / "token_cache")) == 1
    live, cached = load_file(tmp_path / "live" / "model.safetensors"), load_file(tmp_path / "cached" / "model.safetensors")
    assert live.keys() == cached.keys()
    for name in live:
        torch.testing.assert_close(cached[name], live[name], atol=1e-5, rtol=0)
    losses = {run: [json.loads(line)["pred"] for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()
                    if '"pred"' in line] for run in ("live", "cached")}
    assert len(losses["live"]) >= 4 and losses["cached"] == pytest.approx(losses["live"], abs=1e-5)


def test_a_changed_teacher_data_file_or_length_never_reuses_a_cache(tmp_path, real_tokenizer, caplog):
    cache = tmp_path / "shared_cache"
    teacher, train = _teacher(tmp_path / "teacher", real_tokenizer, SENTIMENT), _data(tmp_path, "sequence")

    def built(output, **settings) -> bool:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tinybert"):
            _stage2(settings.pop("teacher", teacher), settings.pop("train", train), tmp_path / output,
                    cache=cache, **settings)
        return "computing the teacher's outputs" in caplog.text

    assert built("first")
    assert not built("again")  # the same teacher, data and length: reused
    assert built("other-length", max_length=40)
    other_data = write(tmp_path / "train2.txt", train.read_text().replace("warm", "cold"))
    assert built("other-data", train=other_data)
    other_teacher = _teacher(tmp_path / "teacher2", real_tokenizer, SENTIMENT, seed=2)
    assert built("other-teacher", teacher=other_teacher)
    assert len(_caches(cache)) == 4
    _teacher(tmp_path / "teacher", real_tokenizer, SENTIMENT, seed=5)  # retrained where it was
    assert built("retrained")
    assert len(_caches(cache)) == 4  # rebuilt in place, not beside the old one


def test_two_processes_share_the_pass_and_gather_the_outputs_one_process_computes(tmp_path, real_tokenizer):
    teacher, train = _teacher(tmp_path / "teacher", real_tokenizer, SENTIMENT), _data(tmp_path, "sequence", rows=40)
    _stage2(teacher, train, tmp_path / "one", cache=tmp_path / "one-cache")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29544", "-m", "tinybert.cli", "distill", "--stage", "prediction", "--teacher", str(teacher),
                           "--student", "unused", "--init-from-teacher", "--layers", "1", "--train", str(train),
                           "--output", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "two-cache"),
                           "--max-length", "48", "--epochs", "1", "--batch-size", "4", "--eval-batch-size", "8"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    (one,), (two,) = _caches(tmp_path / "one-cache"), _caches(tmp_path / "two-cache")
    assert not [path for path in (tmp_path / "two-cache").iterdir() if ".shares-" in path.name]  # shares removed
    single = np.fromfile(one / "outputs.f32", dtype=np.float32)
    gathered = np.fromfile(two / "outputs.f32", dtype=np.float32)
    # each example's logits where they belong: rows differ from each other far more than the tolerance
    assert single.shape == gathered.shape == (40 * 2,) and np.ptp(single[0::2]) > 100 * 1e-6
    np.testing.assert_allclose(gathered, single, atol=1e-6, rtol=0)


@pytest.mark.parametrize("task", ["token", "qa"])
def test_shares_of_per_token_outputs_gather_into_what_one_pass_writes(tmp_path, real_tokenizer, task):
    """Each process's share (every other batch here) placed row by row where its examples' tokens go."""
    space = {"token": LabelSpace.of_tags(TAGS), "qa": LabelSpace("qa", [])}[task]
    teacher = MODELS[task].from_pretrained(_teacher(tmp_path / "teacher", real_tokenizer, space)).eval()
    data = task_data(task, _data(tmp_path, task), real_tokenizer, 48, DataOptions(cache_dir=str(tmp_path / "cache")),
                     show_progress=False).labelled(space)
    shape = (int(np.asarray(data.lengths).sum()), 2 if task == "qa" else len(TAGS))
    fills = [TeacherPass(teacher, data, task, real_tokenizer, 3, SimpleNamespace(
        device=torch.device("cpu"), autocast=nullcontext, num_processes=2, is_main_process=rank == 0),
        show_progress=False) for rank in (0, 1)]
    (tmp_path / "one").mkdir()
    fills[0].into(tmp_path / "one", shape, [])
    for rank, fill in enumerate(fills):
        fill.share(tmp_path / "shares", (rank, 2), shape[1])
    (tmp_path / "gathered").mkdir()
    fills[0].gathered(tmp_path / "gathered", shape, tmp_path / "shares")
    one = np.fromfile(tmp_path / "one" / VALUES_FILE, dtype=np.float32)
    gathered = np.fromfile(tmp_path / "gathered" / VALUES_FILE, dtype=np.float32)
    assert one.size == shape[0] * shape[1] and np.ptp(one) > 1e-3
    np.testing.assert_array_equal(gathered, one)


def test_the_outputs_go_to_a_process_started_afresh_as_a_file_to_map_not_a_copy(tmp_path, real_tokenizer):
    """DataLoader workers under spawn get the dataset pickled: a pickled memmap carries every value."""
    import pickle
    from accelerate import Accelerator
    from tinybert.distillation.teacher_outputs import teacher_outputs
    space = LabelSpace.of_tags(TAGS)
    teacher_dir = _teacher(tmp_path / "teacher", real_tokenizer, space)
    teacher = MODELS["token"].from_pretrained(teacher_dir).eval()
    data = task_data("token", _data(tmp_path, "token"), real_tokenizer, 48, DataOptions(cache_dir=str(tmp_path / "c")),
                     show_progress=False).labelled(space)
    outputs = teacher_outputs(teacher, teacher_dir, data, "token", real_tokenizer, tmp_path / "c", precision="no",
                              accelerator=Accelerator(cpu=True), show_progress=False)
    first = outputs.of(0)
    sent = pickle.dumps(outputs)
    assert len(sent) < first.nbytes * len(data) // 4  # the starts, not the values
    np.testing.assert_array_equal(pickle.loads(sent).of(0), first)


@pytest.mark.parametrize("labels", [2, 1])
def test_outputs_rebuilt_by_another_run_are_one_clear_error_where_they_are_mapped(tmp_path, real_tokenizer, labels):
    """Another run sharing the cache directory retrains the teacher where it was and rebuilds the
    outputs in place, after this run found them ready but before a process maps them (a DataLoader
    worker): outputs of the same size would be another teacher's, silently; of another size, numpy's
    bare ValueError."""
    import pickle
    from accelerate import Accelerator
    from tinybert.distillation.teacher_outputs import teacher_outputs
    from tinybert.errors import InputError
    teacher_dir = _teacher(tmp_path / "teacher", real_tokenizer, SENTIMENT)
    data = task_data("sequence", _data(tmp_path, "sequence"), real_tokenizer, 48,
                     DataOptions(cache_dir=str(tmp_path / "c")), show_progress=False).labelled(SENTIMENT)

    def outputs():
        teacher = MODELS["sequence"].from_pretrained(teacher_dir).eval()
        return teacher_outputs(teacher, teacher_dir, data, "sequence", real_tokenizer, tmp_path / "c", precision="no",
                               accelerator=Accelerator(cpu=True), show_progress=False)
    ours = outputs()
    sent = pickle.dumps(ours)  # to a worker, before the other run rebuilds
    retrained = LabelSpace("classification", ["neg", "pos"]) if labels == 2 else LabelSpace("regression", [])
    _teacher(teacher_dir, real_tokenizer, retrained, seed=7)
    outputs()  # the other run: rebuilt in place
    for reader in (ours, pickle.loads(sent)):
        with pytest.raises(InputError, match="rebuilt by another run"):
            reader.of(0)


def test_stage_2_holds_no_teacher_while_it_reads_every_output_from_the_cache(tmp_path, real_tokenizer, monkeypatch):
    """Its memory (on a GPU, the device's) goes to the student once the outputs are cached; with
    --no-teacher-cache the teacher runs at every step."""
    from tinybert.distillation import task as task_module
    teachers, real = [], task_module.PredictionDistiller

    def kept(student, teacher, *args, **kwargs):
        teachers.append(teacher)
        return real(student, teacher, *args, **kwargs)
    monkeypatch.setattr(task_module, "PredictionDistiller", kept)
    teacher, train = _teacher(tmp_path / "teacher", real_tokenizer, SENTIMENT), _data(tmp_path, "sequence", rows=8)
    _stage2(teacher, train, tmp_path / "cached")
    _stage2(teacher, train, tmp_path / "live", cached=False)
    assert teachers[0] is None and isinstance(teachers[1], torch.nn.Module)


def test_outputs_another_cache_of_the_teacher_holds_are_read_from_there_not_computed_again(tmp_path, real_tokenizer,
                                                                                             monkeypatch):
    """The original rows of an augmented file (here: its first 12 of 24 rows, and one row it lacks)
    take their outputs from the augmented file's cache; the teacher runs on the one row only."""
    teacher, augmented = _teacher(tmp_path / "teacher", real_tokenizer, SENTIMENT), _data(tmp_path, "sequence", rows=24)
    original = write(tmp_path / "original.txt", "".join(augmented.read_text().splitlines(keepends=True)[:12])
                     + "a brand new line\tpos\n")
    _stage2(teacher, augmented, tmp_path / "augmented", cache=tmp_path / "shared")
    teacher_rows, forward = [], MODELS["sequence"].forward

    def counted(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            teacher_rows.append(len(kwargs["input_ids"]))
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(MODELS["sequence"], "forward", counted)
    _stage2(teacher, original, tmp_path / "original", cache=tmp_path / "shared")
    assert teacher_rows == [1]
    monkeypatch.undo()
    _stage2(teacher, original, tmp_path / "alone", cache=tmp_path / "own")  # computed afresh

    def values(cache, source):
        (found,) = [path for path in _caches(tmp_path / cache)
                    if json.loads((path / "outputs.json").read_text())["sources"] == [str(source)]]
        return np.fromfile(found / VALUES_FILE, dtype=np.float32).reshape(-1, 2)
    reused, alone = values("shared", original), values("own", original)
    np.testing.assert_array_equal(reused[:12], values("shared", augmented)[:12])  # copied
    # the teacher's outputs on the same rows (in other batches: other padding, the confident head's rounding)
    np.testing.assert_allclose(reused, alone, atol=2e-3, rtol=0)
    assert np.ptp(alone) > 0.5
