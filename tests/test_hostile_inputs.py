"""Hostile input through every command's reader: each case ends in one message naming the file,
exit code 2, no traceback and nothing written under the output path (an empty lock file beside
a cache that was not built is no output)."""

import json
import random

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification

from conftest import tiny_bert_config, write
from tinybert.cli import main

random.seed(14)
RANDOM_BYTES = bytes(random.randrange(256) for _ in range(5000))
LONG_TEXT = ("word " * 2_100_000)[:10_000_000]  # a 10 MB line

# name → bytes of the file
TASK_FILES = {
    "random bytes": RANDOM_BYTES,
    "latin-1": "sentence\tlabel\ncafé au lait\t1\n".encode("latin-1"),
    "utf-16": "sentence\tlabel\ngood\t1\n".encode("utf-16"),
    "empty": b"",
    "blank lines only": b"\n  \n\t\n",
    "header only": b"sentence\tlabel\n",
    "mixed column counts": b"sentence\tlabel\ngood film\t1\nbad\t0\textra\nfine\n",
    "no label column": b"sentence\tauthor\ngood film\tme\n",
    "a 10 MB line without its label": b"sentence\tlabel\n" + LONG_TEXT.encode() + b"\n",
    "NaN score": b"sentence1\tsentence2\tscore\na\tb\t1.5\nc\td\tnan\ne\tf\t2.0\n",
    "csv with an open quote": b'text,label\n"unterminated,1\n',
    "jsonl of garbage": b'{"text": "ok", "label": 1}\n[1, 2\n',
    "fork format, four fields": b"a\tb\tc\td\ne\tf\tg\th\n",
}
CORPORA = {"random bytes": RANDOM_BYTES, "latin-1": "café\n".encode("latin-1"), "blank lines only": b"\n\n \n\t\n",
           "empty": b""}
VECTOR_FILES = {"random bytes": RANDOM_BYTES, "empty": b"", "ragged": b"cat 0.1 0.2 0.3\ndog 0.1 0.2\n",
                "words only": b"cat dog\nmouse horse\n", "not numbers": b"cat 0.1 x 0.3\ndog 0.1 0.2 0.3\n"}
CONFIGS = {"random bytes": RANDOM_BYTES, "a list": b"- a\n- b\n", "unknown section": b"finetuning:\n  epochs: 1\n",
           "bad YAML": b"finetune:\n  epochs: [\n", "wrong type": b"finetune:\n  epochs: many\n",
           "no training data": b"run_dir: RUN\n"}
STUDENT_SIZES = {"a list": b"[4, 312]", "a number": b"5", "no layers": b'{"num_hidden_layers": 0}',
                 "a size in words": b'{"hidden_size": "312"}',
                 "heads not dividing the width": b'{"hidden_size": 30, "num_attention_heads": 4}',
                 "heads not dividing the teacher's width": b'{"num_attention_heads": 5}'}
DISTILL_FLAGS = {"--layers 0": ["--layers", "0"], "--layers -2": ["--layers", "-2", "--init-from-teacher"],
                 "--relation-heads 0": ["--attention-loss", "relations", "--relation-heads", "0"],
                 "--relation-heads -4": ["--attention-loss", "relations", "--relation-heads", "-4"]}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, real_tokenizer):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("classifier")
    BertForSequenceClassification(tiny_bert_config(num_labels=2, id2label={0: "0", 1: "1"},
                                                   label2id={"0": 0, "1": 1})).save_pretrained(path)
    real_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    rows = np.random.default_rng(0).normal(size=(6, 4))
    words = ["film", "movie", "good", "great", "bad", "awful"]
    return write(tmp_path_factory.mktemp("vectors") / "v.txt",
                 "".join(f"{w} " + " ".join(f"{x:.4f}" for x in row) + "\n" for w, row in zip(words, rows)))


def _fails_cleanly(capsys, argv, path, output):
    code = main([str(part) for part in argv])
    error = capsys.readouterr().err
    assert code == 2, error[-2000:]
    assert "Traceback" not in error and error.count("error: ") == 1 and str(path) in error, error[-2000:]
    assert not [item for item in output.rglob("*") if item.is_file() and item.suffix != ".lock"] \
        if output.exists() else True


def _file(tmp_path, name, content, suffix=".tsv"):
    path = tmp_path / (name.replace(" ", "_").replace(",", "") + suffix)
    path.write_bytes(content)
    return path


def _suffix(name):
    return ".csv" if name.startswith("csv") else ".jsonl" if name.startswith("jsonl") else ".tsv"


@pytest.mark.parametrize("name", list(TASK_FILES))
@pytest.mark.parametrize("command", ["finetune", "distill", "evaluate", "export", "predict", "augment"])
def test_hostile_task_files(tmp_path, capsys, tiny_model_dir, classifier, vectors, name, command):
    if command in ("predict", "augment") and name in ("header only", "no label column", "NaN score") or \
            command == "distill" and name == "no label column":
        pytest.skip("valid input where labels are not read (or, distilling, not needed)")
    path = _file(tmp_path, name, TASK_FILES[name], _suffix(name))
    output = tmp_path / "out"
    argv = {"finetune": ["finetune", "--model", tiny_model_dir, "--train", path, "--output", output],
            "distill": ["distill", "--teacher", classifier, "--student", classifier, "--train", path,
                        "--output", output],
            "evaluate": ["evaluate", "--model", classifier, "--data", path, "--json", output / "r.json",
                         "--cache-dir", output / "cache"],
            "export": ["export", "--model", classifier, "--data", path, "--output", output],
            "predict": ["predict", "--model", classifier, "--input", path, "--output", output / "p.tsv"],
            "augment": ["augment", "--input", path, "--word-vectors", vectors, "--output", output / "a.tsv"]}[command]
    _fails_cleanly(capsys, argv, path, output)


@pytest.mark.parametrize("name", list(CORPORA))
def test_hostile_corpora(tmp_path, capsys, tiny_model_dir, name):
    path = _file(tmp_path, name, CORPORA[name], ".txt")
    _fails_cleanly(capsys, ["general", "--teacher", tiny_model_dir, "--corpus", path, "--output", tmp_path / "out",
                            "--student", write(tmp_path / "s.json", json.dumps(
                                {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64,
                                 "num_attention_heads": 4}))], path, tmp_path / "out")


@pytest.mark.parametrize("name", list(VECTOR_FILES))
def test_hostile_word_vector_files(tmp_path, capsys, name):
    path = _file(tmp_path, name, VECTOR_FILES[name], ".txt")
    data = write(tmp_path / "in.tsv", "sentence\tlabel\na good film\t1\n")
    _fails_cleanly(capsys, ["augment", "--input", data, "--word-vectors", path, "--output", tmp_path / "out" / "a.tsv"],
                   path, tmp_path / "out")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hostile_pipeline_configs(tmp_path, capsys, name):
    path = _file(tmp_path, name, CONFIGS[name].replace(b"RUN", str(tmp_path / "out").encode()), ".yaml")
    _fails_cleanly(capsys, ["pipeline", path], path, tmp_path / "out")


@pytest.mark.parametrize("name", list(STUDENT_SIZES))
def test_hostile_student_sizes(tmp_path, capsys, classifier, name):
    sizes = _file(tmp_path, name, STUDENT_SIZES[name], ".json")
    data = write(tmp_path / "in.tsv", "sentence\tlabel\na good film\t1\n")
    _fails_cleanly(capsys, ["distill", "--teacher", classifier, "--student", sizes, "--train", data,
                            "--output", tmp_path / "out"], sizes, tmp_path / "out")


@pytest.mark.parametrize("name", list(DISTILL_FLAGS))
def test_counts_below_one_are_refused_before_anything_is_read(tmp_path, capsys, classifier, name):
    data = write(tmp_path / "in.tsv", "sentence\tlabel\na good film\t1\n")
    code = main(["distill", "--teacher", str(classifier), "--student", "tinybert-4l-312", "--train", str(data),
                 "--output", str(tmp_path / "out"), *DISTILL_FLAGS[name]])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error and error.startswith(f"error: {name} is no "), error[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting, message", [("layers: 0", "intermediate.layers 0 is no layer count"),
                                              ("relation_heads: -4", "intermediate.relation_heads -4 is no number")])
def test_a_pipeline_refuses_counts_below_one_before_its_first_stage(tmp_path, capsys, tiny_model_dir, setting, message):
    data = write(tmp_path / "in.tsv", "sentence\tlabel\na good film\t1\na bad film\t0\n")
    config = write(tmp_path / "run.yaml", f"run_dir: {tmp_path / 'out'}\ndata:\n  train: {data}\n  dev: {data}\n"
                                          f"finetune:\n  model: {tiny_model_dir}\nintermediate:\n  {setting}\n")
    code = main(["pipeline", str(config)])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error and f"{config}, line 8: {message}" in error, error[-2000:]
    assert not (tmp_path / "out").exists()  # the teacher was not fine-tuned first


def test_labels_unseen_in_training_are_named_with_their_line(tmp_path, capsys, classifier):
    path = write(tmp_path / "dev.tsv", "sentence\tlabel\ngood\t1\nso-so\tneutral\n")
    _fails_cleanly(capsys, ["evaluate", "--model", classifier, "--data", path, "--json", tmp_path / "out" / "r.json"],
                   path, tmp_path / "out")


def test_a_10_mb_line_with_its_label_is_truncated_not_refused(tmp_path, caplog, classifier):
    path = write(tmp_path / "dev.tsv", "sentence\tlabel\n" + LONG_TEXT + "\t1\nshort\t0\n")
    assert main(["evaluate", "--model", str(classifier), "--data", str(path), "--no-latency",
                 "--cache-dir", str(tmp_path / "cache"), "--max-length", "32"]) == 0
    assert "1 of 2 examples are longer than 32 tokens" in caplog.text


MODEL_CONFIGS = {"no model_type": b'{"hidden_size": 8}', "an unknown model_type": b'{"model_type": "nonesuch"}',
                 "cut short": b'{"model_type": \n', "random bytes": RANDOM_BYTES, "null": b"null",
                 "a size in words": b'{"model_type": "bert", "hidden_size": "big"}',
                 "labels as a list": b'{"model_type": "bert", "id2label": ["neg", "pos"]}'}


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "distill", "finetune"])
def test_hostile_model_configs(tmp_path, capsys, classifier, name, command):
    """A model directory whose config.json transformers cannot read was a ValueError traceback."""
    model = tmp_path / "model"
    model.mkdir()
    for item in classifier.iterdir():
        (model / item.name).write_bytes(item.read_bytes())
    config = _file(model, "config", MODEL_CONFIGS[name], ".json")
    data = write(tmp_path / "in.tsv", "sentence\tlabel\na good film\t1\n")
    output = tmp_path / "out"
    argv = {"evaluate": ["evaluate", "--model", model, "--data", data],
            "predict": ["predict", "--model", model, "--input", data, "--output", output / "p.jsonl"],
            "export": ["export", "--model", model, "--output", output],
            "distill": ["distill", "--teacher", model, "--train", data, "--output", output],
            "finetune": ["finetune", "--model", model, "--train", data, "--output", output]}[command]
    _fails_cleanly(capsys, argv, config, output)


@pytest.mark.parametrize("content", [b"null", b"[1, 2]", b'\xff\xfe{"a": 1}'])
def test_a_reference_code_config_that_is_no_json_object_is_one_message(tmp_path, capsys, content):
    """Beside the reference code's pytorch_model.bin a config.json is read to tell a checkpoint to
    convert: one that is no JSON object, or no UTF-8, was a TypeError or UnicodeDecodeError traceback."""
    model = tmp_path / "model"
    model.mkdir()
    config = _file(model, "config", content, ".json")
    (model / "pytorch_model.bin").write_bytes(b"")
    data = write(tmp_path / "in.tsv", "sentence\tlabel\na good film\t1\n")
    _fails_cleanly(capsys, ["evaluate", "--model", model, "--data", data], config, tmp_path / "out")
