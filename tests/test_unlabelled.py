"""Distilling on unlabelled text: neither stage's loss reads a label, so training files may lack
them (texts without a label column, words without tags, questions without answers)."""

import json

import pytest
import torch
from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification

from conftest import tiny_bert_config, write
from test_tasks import CONLL, CONTEXT, QUESTIONS, TAGS, squad_document
from tinybert.data import DataOptions
from tinybert.data.tagging import read_sentences
from tinybert.data.tasks import task_data
from tinybert.distillation.task import DistillConfig, distill
from tinybert.training import TrainingConfig

SHAPE = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}


def _teacher(path, kind, tokenizer):
    torch.manual_seed(1)
    config = tiny_bert_config(num_hidden_layers=4, hidden_size=64, intermediate_size=128)
    if kind == "sequence":
        model = BertForSequenceClassification(tiny_bert_config(
            num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_labels=2, id2label={0: "neg", 1: "pos"},
            label2id={"neg": 0, "pos": 1}))
    elif kind == "token":
        model = BertForTokenClassification(tiny_bert_config(
            num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_labels=len(TAGS),
            id2label=dict(enumerate(TAGS)), label2id={tag: i for i, tag in enumerate(TAGS)}))
    else:
        model = BertForQuestionAnswering(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _losses(run, part):
    return [record[part] for record in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())
            if part in record]


def test_both_stages_distil_a_file_with_a_text_column_and_no_label_column(tmp_path, real_tokenizer, tinybert_cli):
    teacher = _teacher(tmp_path / "teacher", "sequence", real_tokenizer)
    texts = write(tmp_path / "texts.tsv", "text\n" + "".join(
        f"{'a great and warm film' if i % 2 else 'a dull , tired mess'} {'really ' * (i % 5)}\n" for i in range(32)))
    dev = write(tmp_path / "dev.tsv", "text\tlabel\n" + "".join(
        f"{'a warm film' if i % 2 else 'a tired mess'}\t{'pos' if i % 2 else 'neg'}\n" for i in range(8)))
    student = write(tmp_path / "student.json", json.dumps(SHAPE))
    common = ["--teacher", teacher, "--train", texts, "--batch-size", "8", "--log-every", "1", "--max-length", "32"]
    first = tinybert_cli("distill", "--stage", "intermediate", "--student", student, "--output", tmp_path / "stage1",
                         "--epochs", "2", *common)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "on 0 original, 0 augmented, 32 unlabeled" in first.stderr
    second = tinybert_cli("distill", "--stage", "prediction", "--student", tmp_path / "stage1", "--eval", dev,
                          "--output", tmp_path / "stage2", "--epochs", "2", *common)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "on 0 original, 0 augmented, 32 unlabeled" in second.stderr
    for run, part in ((tmp_path / "stage1", "att"), (tmp_path / "stage2", "pred")):
        losses = _losses(run, part)
        assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])  # learnt from the teacher alone
    summary = json.loads((tmp_path / "stage2" / "training_state.json").read_text())
    assert [record["step"] for record in summary["history"]] == [4, 8]  # the dev set, with its labels


@pytest.mark.parametrize("kind", ["token", "qa"])
def test_words_or_questions_with_contexts_are_enough_to_distil_a_tagger_or_a_qa_model(tmp_path, real_tokenizer,
                                                                                      kind):
    teacher = _teacher(tmp_path / "teacher", kind, real_tokenizer)
    if kind == "token":  # bare words, one per line, as a CoNLL file without its columns
        dev = write(tmp_path / "dev.txt", CONLL)
        train = write(tmp_path / "words.txt", "".join("\n".join(s.words) + "\n\n" for s in read_sentences(dev)) * 2)
    else:  # questions and their contexts, no answers
        dev = write(tmp_path / "dev.json", json.dumps(squad_document()))
        train = write(tmp_path / "questions.jsonl", "".join(json.dumps({"question": q, "context": CONTEXT}) + "\n"
                                                            for q, _ in QUESTIONS))
    cache = task_data(kind, train, real_tokenizer, 64, DataOptions(), tmp_path / "cache", labels="optional")
    assert cache.origins() == {"original": 0, "augmented": 0, "unlabeled": len(cache)}  # 8 sentences, or windows
    training = dict(epochs=1, batch_size=4, learning_rate=1e-3, log_every=1)
    distill(teacher, "unused", train, tmp_path / "stage1", show_progress=False,
            config=DistillConfig(stage="intermediate", init_from_teacher=True, layers=1, max_length=64,
                                 training=TrainingConfig(**training, schedule="constant", warmup_ratio=0.0)))
    summary = distill(teacher, str(tmp_path / "stage1"), train, tmp_path / "stage2", eval_path=dev,
                      show_progress=False, config=DistillConfig(stage="prediction", max_length=64,
                                                                training=TrainingConfig(**training)))
    # every word's first piece (every window) counted in the loss: it is no zero from an empty mask
    assert all(loss > 0 for loss in _losses(tmp_path / "stage2", "pred")) and "f1" in summary["best"]


def test_unlabelled_files_are_read_without_a_label_column(tmp_path, real_tokenizer):
    # --label-column names the labelled data's column: text given as unlabelled need not have it,
    # and a row without a label is no bad row there
    options = DataOptions(label_column="sentiment")
    files = [write(tmp_path / "texts.tsv", "text\na warm film\na tired mess\n"),
             write(tmp_path / "texts.csv", "text\na warm film\na tired mess\n"),
             write(tmp_path / "texts.jsonl", '{"text": "a warm film", "label": "pos"}\n{"text": "a tired mess"}\n')]
    for path in files:
        cache = task_data("sequence", path, real_tokenizer, 32, options, tmp_path / "cache", show_progress=False,
                          limit=False, labels="ignored")
        assert cache.origins() == {"original": 0, "augmented": 0, "unlabeled": 2}, path


def test_plan_reads_a_training_file_without_labels(tmp_path, real_tokenizer, tinybert_cli):
    teacher = _teacher(tmp_path / "teacher", "sequence", real_tokenizer)
    texts = write(tmp_path / "texts.tsv", "text\n" + "a warm film\n" * 4)
    student = write(tmp_path / "student.json", json.dumps(SHAPE))
    result = tinybert_cli("distill", "--plan", "--teacher", teacher, "--student", student, "--train", texts,
                          "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "layers: teacher 4, student 2" in result.stdout, result.stdout


def test_plan_reads_the_training_file_as_the_run_does(tmp_path, real_tokenizer, tinybert_cli):
    teacher = _teacher(tmp_path / "teacher", "token", real_tokenizer)
    student = write(tmp_path / "student.json", json.dumps(SHAPE))
    words = write(tmp_path / "words.txt", "".join("\n".join(s.words) + "\n\n"
                                                  for s in read_sentences(write(tmp_path / "dev.txt", CONLL))))
    texts = write(tmp_path / "texts.tsv", "sentence\tlabel\na warm film\tpos\na dull mess\tneg\n")
    common = ["--teacher", teacher, "--student", student, "--output", tmp_path / "out"]
    planned = tinybert_cli("distill", "--plan", "--train", words, *common)  # bare words: a tagger's sentences
    assert planned.returncode == 0 and "layers: teacher 4, student 2" in planned.stdout, planned.stderr[-2000:]
    # texts for a tagger: the plan says what the run says
    planned, run = (tinybert_cli("distill", *flag, "--train", texts, *common) for flag in (["--plan"], []))
    assert planned.returncode == run.returncode == 2
    assert "the teacher was fine-tuned for a token task, the data is a sequence task" in planned.stderr
    assert planned.stderr.splitlines()[-2:] == run.stderr.splitlines()[-2:]
