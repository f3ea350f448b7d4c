"""Compiled steps: static shapes, when compiling is on, and compiled losses equal to eager ones.

The compiled runs use the smallest models that still have every part of a step (a one-layer
teacher and student): compiling with inductor on a CPU takes seconds per graph."""

import json
import logging

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from conftest import write
from tinybert.compiling import COMPILE_MIN_STEPS, StaticShapes, decide, length_buckets
from tinybert.data import EncodedData, train_loader
from tinybert.distillation.task import DistillConfig, distill
from tinybert.errors import InputError
from tinybert.training import TrainingConfig

LABELS = {"num_labels": 2, "id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
ROWS, LENGTH = 4, 48


def test_length_buckets_double_up_to_the_max_length():
    assert length_buckets(64) == (32, 64)
    assert length_buckets(128) == (32, 64, 128)
    assert length_buckets(384) == (32, 64, 128, 256, 384)
    assert length_buckets(16) == (16,)
    shapes = StaticShapes(length_buckets(384), rows=8)
    assert [shapes.width(n) for n in (1, 32, 33, 200, 384)] == [32, 32, 64, 256, 384]


def test_compiling_is_on_by_default_only_for_long_runs_on_a_gpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert decide("auto", cuda, COMPILE_MIN_STEPS) and not decide("auto", cuda, COMPILE_MIN_STEPS - 1)
    assert not decide("auto", cpu, 10 ** 6)
    assert decide("always", cpu, 1) and not decide("never", cuda, 10 ** 6)


def test_compiled_runs_get_whole_batches_of_bucketed_lengths(real_tokenizer):
    lengths = [3, 9, 17, 40, 5, 33, 2, 12, 8, 30, 6]
    data = EncodedData([{"input_ids": [101] * n, "labels": 0} for n in lengths], lengths)
    shapes = StaticShapes(length_buckets(64), rows=4)
    batches = list(train_loader(data, real_tokenizer, batch_size=4, seed=3, shapes=shapes))
    assert len(batches) == 2  # 11 rows: the short last batch is left out
    assert all(batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] in (32, 64) for batch in batches)
    with pytest.raises(InputError, match="whole batches of 16, and the data has 11 examples"):
        train_loader(data, real_tokenizer, batch_size=16, shapes=shapes)
    filled, real = shapes.fill_rows({"input_ids": torch.arange(6).view(2, 3)})
    assert real == 2 and filled["input_ids"].tolist() == [[0, 1, 2], [3, 4, 5], [0, 1, 2], [0, 1, 2]]


def _teacher_and_student(tmp_path, real_tokenizer):
    torch.manual_seed(0)
    # no dropout: eager and compiled code draw different random numbers
    teacher = BertForSequenceClassification(BertConfig(
        vocab_size=30522, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **LABELS))
    teacher.save_pretrained(tmp_path / "teacher")
    real_tokenizer.save_pretrained(tmp_path / "teacher")
    student = write(tmp_path / "student.json", json.dumps({"num_hidden_layers": 1, "hidden_size": 8,
                                                           "intermediate_size": 16, "num_attention_heads": 2}))
    return tmp_path / "teacher", str(student)


@pytest.mark.parametrize("stage", ["intermediate", "prediction"])
def test_compiled_steps_give_the_eager_losses_on_the_same_batches(tmp_path, real_tokenizer, caplog, stage):
    """The same two batches per epoch (8 rows, batches of 4: none left out) through eager and
    compiled steps: the same losses at every step, and in stage 2 the same dev accuracy from a
    compiled evaluation. Rows 0 and 5 are 36 tokens long, the others under 12: with seed 9 each
    epoch has a batch padded to 48 tokens and one padded to 32, the two buckets under 48."""
    teacher, student = _teacher_and_student(tmp_path, real_tokenizer)
    rows = write(tmp_path / "train.txt", "".join(
        f"{'a fine warm film' if i % 2 else 'a dull mess'} {'so ' * (30 if i in (0, 5) else i % 4)}\t"
        f"{'pos' if i % 2 else 'neg'}\n" for i in range(8)))
    runs = {}
    for setting in ("never", "always"):
        training = TrainingConfig(epochs=2, batch_size=ROWS, learning_rate=1e-3, log_every=1, compile=setting,
                                  schedule="constant", warmup_ratio=0.0, seed=9)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tinybert"):
            runs[setting] = distill(teacher, student, rows, tmp_path / setting, show_progress=False,
                                    eval_path=rows if stage == "prediction" else None,
                                    config=DistillConfig(stage=stage, training=training, max_length=LENGTH))
    for width in (32, LENGTH):
        assert f"compiled the step for batches of {ROWS} × {width}" in caplog.text
    assert "compiling took" in caplog.text and "for 2 shape(s)" in caplog.text
    logs = {setting: [json.loads(line) for line in (tmp_path / setting / "train_log.jsonl").read_text().splitlines()
                      if "loss" in line] for setting in runs}
    assert len(logs["always"]) == len(logs["never"]) == 4
    for eager, compiled in zip(logs["never"], logs["always"]):
        for part in ("loss", "att", "hid", "emb", "pred"):
            if part in eager:
                assert compiled[part] == pytest.approx(eager[part], abs=1e-4), (eager["step"], part)
    if stage == "prediction":
        assert runs["always"]["best"]["accuracy"] == runs["never"]["best"]["accuracy"]


@pytest.mark.parametrize("family", ["bert", "deberta-v2", "modernbert"])
def test_each_distillation_step_is_one_graph_without_breaks(family):
    """The first step used to install transformers' output hooks inside the traced region (under
    a lock dynamo cannot trace): the step broke into fragments, recompiled as it went."""
    from families import family_config
    from tinybert.data.labels import LabelSpace
    from tinybert.distillation.distillers import IntermediateDistiller, IntermediateLosses, PredictionDistiller
    from tinybert.models.loading import TASK_MODELS
    space = LabelSpace("classification", ["neg", "pos"])
    torch.manual_seed(0)
    teacher = TASK_MODELS["sequence"].from_config(family_config(family, space, num_hidden_layers=2))
    student = TASK_MODELS["sequence"].from_config(family_config(family, space, num_hidden_layers=1, hidden_size=32,
                                                                intermediate_size=64))
    batch = {"input_ids": torch.randint(1000, 2000, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long),
             "token_type_ids": torch.zeros(2, 8, dtype=torch.long)}
    for distiller in (IntermediateDistiller(student, teacher, [2], IntermediateLosses()),
                      PredictionDistiller(student, teacher)):
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(distiller.train())(batch)
        assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
