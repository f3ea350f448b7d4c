"""The static-embedding student: distilled in stage 2, saved in model2vec's format, used by every command."""

import json

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification

from conftest import shared_dataset, tiny_bert_config, write
from tinybert.data import LabelSpace
from tinybert.models.loading import load_classifier

SENTIMENT = {"num_labels": 2, "id2label": {0: "negative", 1: "positive"},
             "label2id": {"negative": 0, "positive": 1}}


def _teacher(path, real_tokenizer, **labels):
    torch.manual_seed(3)
    BertForSequenceClassification(tiny_bert_config(num_hidden_layers=2, hidden_size=32, **labels)).save_pretrained(path)
    real_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def sentiment_files(tmp_path):
    def rows(count, offset):
        return "".join(f"{'a great and warm film' if i % 2 else 'a dull , tired mess'} {'really ' * (i % 5)}\t"
                       f"{'positive' if i % 2 else 'negative'}\n" for i in range(offset, offset + count))
    return write(tmp_path / "train.txt", rows(48, 0)), write(tmp_path / "dev.txt", rows(16, 48))


def _distill_static(tinybert_cli, teacher, train, dev, output, *extra):
    return tinybert_cli("distill", "--stage", "prediction", "--teacher", teacher, "--student", "static",
                        "--train", train, "--eval", dev, "--output", output, "--static-dims", "16", "--epochs", "2",
                        "--batch-size", "16", "--static-lr", "0.01", "--max-length", "32", *extra)


def test_a_static_student_predicts_as_model2vec_does_with_its_files(tmp_path, real_tokenizer, sentiment_files,
                                                                     tinybert_cli):
    train, dev = sentiment_files
    teacher = _teacher(tmp_path / "teacher", real_tokenizer, **SENTIMENT)
    result = _distill_static(tinybert_cli, teacher, train, dev, tmp_path / "static", "--prune-vocab")
    assert result.returncode == 0, result.stderr[-2000:]
    from model2vec import StaticModel
    from model2vec.inference import StaticModelPipeline
    texts = ["a great and warm film", "a dull , tired mess, really", "zebras!"]
    vectors = StaticModel.from_pretrained(tmp_path / "static").encode(texts)
    assert vectors.shape == (3, 16)
    pipeline = StaticModelPipeline.from_pretrained(tmp_path / "static")
    ours = load_classifier(tmp_path / "static").eval()
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(tmp_path / "static")
    assert len(tokenizer) < len(real_tokenizer)  # the pruned vocabulary
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = ours(**batch).logits.numpy()
    np.testing.assert_allclose(pipeline.predict_proba(texts), torch.softmax(torch.from_numpy(logits), -1).numpy(),
                               atol=1e-5)
    assert list(pipeline.predict(texts)) == [["negative", "positive"][i] for i in logits.argmax(-1)]
    card = (tmp_path / "static" / "README.md").read_text()
    assert "library_name: model2vec" in card and "static-embedding student" in card
    # it learnt at --static-lr, and the card's command, which reproduces it, does not claim an --lr
    recipe = json.loads((tmp_path / "static" / "tinybert.json").read_text())
    assert recipe["recipe"][-1]["learning_rate"] == 0.01 and "--static-lr 0.01" in recipe["command"]
    assert " --lr " not in recipe["command"]

    evaluated = tinybert_cli("evaluate", "--model", tmp_path / "static", "--data", dev, "--json", tmp_path / "e.json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    figures = json.loads((tmp_path / "e.json").read_text())
    assert 0 <= figures["accuracy"] <= 1 and figures["examples_per_s_batch32"] > 0
    predicted = tinybert_cli("predict", "--model", tmp_path / "static", "--input", write(tmp_path / "new.txt",
                                                                                           "a great film\n"),
                             "--output", tmp_path / "out.tsv")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert (tmp_path / "out.tsv").read_text().splitlines()[-1].split("\t")[1] in ("negative", "positive")
    exported = tinybert_cli("export", "--model", tmp_path / "static", "--output", tmp_path / "onnx", "--data", dev,
                            "--int8")
    assert exported.returncode == 0, exported.stderr[-2000:]
    report = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert report["fp32_parity_passed"] and report["int8_parity_passed"]


def test_a_regression_teacher_distils_into_a_static_student_on_sts_b(tmp_path, real_tokenizer, tinybert_cli):
    train, dev = shared_dataset("stsb/train.tsv"), shared_dataset("stsb/dev.tsv")
    teacher = _teacher(tmp_path / "teacher", real_tokenizer,
                       **LabelSpace("regression").config_fields())
    result = _distill_static(tinybert_cli, teacher, train, dev, tmp_path / "static", "--max-examples", "64")
    assert result.returncode == 0, result.stderr[-2000:]
    from model2vec.inference import StaticModelPipeline
    scores = StaticModelPipeline.from_pretrained(tmp_path / "static").predict(["A man is playing a guitar."])
    assert np.isfinite(scores).all()
    state = json.loads((tmp_path / "static" / "training_state.json").read_text())
    assert "pearson" in state["best"]


@pytest.mark.parametrize("arguments, message", [
    (["--stage", "intermediate"], "--student static trains in stage 2 alone"),
    (["--stage", "prediction", "--layers", "2"], "--layers shapes a transformer student"),
    (["--stage", "prediction", "--static-dims", "64"], "--static-dims 64 is not between 1 and the teacher's width 32"),
])
def test_what_a_static_student_cannot_be_is_refused_before_any_data_is_read(tmp_path, real_tokenizer, sentiment_files,
                                                                           tinybert_cli, arguments, message):
    train, _ = sentiment_files
    teacher = _teacher(tmp_path / "teacher", real_tokenizer, **SENTIMENT)
    result = tinybert_cli("distill", "--teacher", teacher, "--student", "static", "--train", train,
                          "--output", tmp_path / "out", *arguments)
    assert result.returncode == 2 and message in result.stderr and not (tmp_path / "out").exists()


def test_a_model2vec_model_not_made_by_tinybert_is_one_message(tmp_path, tinybert_cli, sentiment_files):
    from model2vec import StaticModel
    train, dev = sentiment_files
    vectors = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    from tokenizers import Tokenizer, models, pre_tokenizers
    core = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "great": 2, "film": 3}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    StaticModel(vectors, core).save_pretrained(tmp_path / "plain")
    result = tinybert_cli("evaluate", "--model", tmp_path / "plain", "--data", dev)
    assert result.returncode == 2 and "a model2vec model without a task head made by tinybert" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model2vec_directory_is_known_by_its_tensors_and_a_broken_weights_file_is_none(tmp_path):
    from model2vec import StaticModel
    from tokenizers import Tokenizer, models
    from tinybert.models.static import read_config
    core = Tokenizer(models.WordLevel({"[UNK]": 0, "film": 1}, unk_token="[UNK]"))
    StaticModel(np.ones((2, 4), np.float32), core, weights=np.ones(2, np.float32)).save_pretrained(tmp_path / "m2v")
    assert read_config(tmp_path / "m2v") is not None  # no model_type; "embeddings" and "weights"
    (tmp_path / "pointer").mkdir()
    write(tmp_path / "pointer" / "config.json", json.dumps({"normalize": False}))
    write(tmp_path / "pointer" / "model.safetensors", "version https://git-lfs.github.com/spec/v1\n")
    assert read_config(tmp_path / "pointer") is None


def test_plan_refuses_a_static_student(tmp_path, real_tokenizer, sentiment_files, tinybert_cli):
    train, _ = sentiment_files
    teacher = _teacher(tmp_path / "teacher", real_tokenizer, **SENTIMENT)
    result = tinybert_cli("distill", "--stage", "prediction", "--teacher", teacher, "--student", "static",
                          "--train", train, "--output", tmp_path / "out", "--plan", "--static-dims", "16")
    assert result.returncode == 2 and "--plan describes a transformer student" in result.stderr
