import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, BertForSequenceClassification, BertModel

from conftest import shared_dataset, tiny_bert_config, write
from tinybert.data import LabelSpace
from tinybert.errors import InputError
from tinybert.models.files import PROJECTIONS_FILE
from tinybert.models.legacy import convert
from tinybert.models.loading import check_model_dir, label_space_of, load_classifier, load_tokenizer
from tinybert.models.students import build_student


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYBERT_CACHE", str(tmp_path / "cache"))


def _reference_config(config) -> dict:
    """What the reference code writes: BERT's fields, no model_type, no architectures."""
    values = {k: v for k, v in config.to_dict().items()
              if k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                       "type_vocab_size", "initializer_range", "layer_norm_eps")}
    return values


def write_official_general_tinybert(path, vocab_source, config_name="config.json", gamma_beta=False, fit_size=64):
    """Huawei's General_TinyBERT layout: bert.* keys, fit_dense, MLM head, vocab.txt only."""
    torch.manual_seed(4)
    config = tiny_bert_config()
    encoder = BertModel(config, add_pooling_layer=True)
    state = {f"bert.{k}": v for k, v in encoder.state_dict().items()}
    if gamma_beta:
        state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                 for k, v in state.items()}
    state["fit_dense.weight"] = torch.randn(fit_size, config.hidden_size)
    state["fit_dense.bias"] = torch.randn(fit_size)
    state["cls.predictions.bias"] = torch.zeros(config.vocab_size)
    path.mkdir()
    torch.save(state, path / "pytorch_model.bin")
    (path / config_name).write_text(json.dumps(_reference_config(config)))
    shutil.copy(vocab_source / "vocab.txt", path / "vocab.txt")
    return encoder, state


def write_fork_task_output(path, names=("step_10_pytorch_model.bin", "epoch_2_pytorch_model.bin")):
    """The fork's task-distillation output: a classifier's state_dict under its own file names,
    config without model_type, and no vocab.txt."""
    torch.manual_seed(5)
    config = tiny_bert_config(num_labels=2)
    model = BertForSequenceClassification(config)
    path.mkdir()
    for number, name in enumerate(names):
        state = {k: v + number for k, v in model.state_dict().items()}  # later files differ
        torch.save(state, path / name)
    (path / "config.json").write_text(json.dumps(_reference_config(config)))
    return model, state


@pytest.fixture(scope="module")
def vocab_dir():
    from tinybert.resources import demo_teacher_dir
    return demo_teacher_dir()


@pytest.mark.parametrize("config_name,gamma_beta", [("config.json", False), ("bert_config.json", True)])
def test_official_general_tinybert_loads_as_student_and_as_teacher(tmp_path, vocab_dir, config_name, gamma_beta):
    encoder, state = write_official_general_tinybert(tmp_path / "General_TinyBERT", vocab_dir, config_name, gamma_beta)
    resolved = check_model_dir(tmp_path / "General_TinyBERT")
    assert resolved != tmp_path / "General_TinyBERT" and (resolved / "model.safetensors").is_file()
    teacher = AutoModel.from_pretrained(resolved)  # as a general-distillation teacher: a bare encoder
    for name, tensor in encoder.state_dict().items():
        torch.testing.assert_close(teacher.state_dict()[name], tensor)
    assert label_space_of(tmp_path / "General_TinyBERT") is None
    assert load_tokenizer(tmp_path / "General_TinyBERT")("hello world")["input_ids"][:2] == [101, 7592]
    projection = load_file(resolved / PROJECTIONS_FILE)  # fit_dense kept as the hidden projection
    torch.testing.assert_close(projection["hidden.weight"], state["fit_dense.weight"])

    task_teacher = BertForSequenceClassification(tiny_bert_config(hidden_size=64, intermediate_size=128,
                                                                  num_labels=2))
    student = build_student(str(tmp_path / "General_TinyBERT"), task_teacher, LabelSpace("classification", ["0", "1"]))
    torch.testing.assert_close(student.bert.encoder.layer[1].output.dense.weight,
                               encoder.encoder.layer[1].output.dense.weight)


def test_fork_outputs_load_with_the_latest_weights_and_the_teachers_tokenizer(tmp_path, vocab_dir):
    model, latest = write_fork_task_output(tmp_path / "fork_out")
    teacher_like = load_classifier(tmp_path / "fork_out")
    assert teacher_like.config.id2label == {0: "0", 1: "1"}
    chosen = load_file(check_model_dir(tmp_path / "fork_out") / "model.safetensors")
    step_10 = torch.load(tmp_path / "fork_out" / "step_10_pytorch_model.bin", weights_only=True)
    torch.testing.assert_close(chosen["classifier.weight"], step_10["classifier.weight"])  # the highest N
    with pytest.raises(InputError, match="cannot load a tokenizer"):
        load_tokenizer(tmp_path / "fork_out")
    converted = convert(tmp_path / "fork_out", tmp_path / "clean", tokenizer_from=vocab_dir)
    assert (converted / "tokenizer.json").is_file()


def test_numbered_weights_without_prefix(tmp_path):
    write_fork_task_output(tmp_path / "out", names=("3_pytorch_model.bin", "12_pytorch_model.bin"))
    chosen = load_file(check_model_dir(tmp_path / "out") / "model.safetensors")
    twelve = torch.load(tmp_path / "out" / "12_pytorch_model.bin", weights_only=True)
    torch.testing.assert_close(chosen["classifier.bias"], twelve["classifier.bias"])


class NotJustWeights:
    def __init__(self):
        self.note = "arbitrary object"


def test_a_pickle_that_needs_more_than_weights_is_refused(tmp_path):
    _, state = write_fork_task_output(tmp_path / "bad", names=("pytorch_model.bin",))
    torch.save({"state": state, "extra": NotJustWeights()}, tmp_path / "bad" / "pytorch_model.bin")
    with pytest.raises(InputError, match="needs full unpickling") as caught:
        check_model_dir(tmp_path / "bad")
    assert "pytorch_model.bin" in str(caught.value)


def test_converted_directory_loads_with_transformers_alone_and_gives_the_same_logits(tmp_path, vocab_dir):
    model, _ = write_fork_task_output(tmp_path / "fork", names=("pytorch_model.bin",))
    shutil.copy(vocab_dir / "vocab.txt", tmp_path / "fork" / "vocab.txt")
    convert(tmp_path / "fork", tmp_path / "clean")
    done = subprocess.run([sys.executable, "-c", (
        "import sys, torch, transformers\n"
        "m = transformers.AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()\n"
        "t = transformers.AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "print(m(**t(['a good film'], return_tensors='pt')).logits.tolist())"), str(tmp_path / "clean")],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    model.eval()
    ids = load_tokenizer(tmp_path / "clean")(["a good film"], return_tensors="pt")
    expected = model(**ids).logits
    torch.testing.assert_close(torch.tensor(json.loads(done.stdout)), expected, atol=1e-5, rtol=1e-5)
    config = json.loads((tmp_path / "clean" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForSequenceClassification"]


def test_forks_two_stage_command_lines_match_the_tinybert_spelling(tmp_path, vocab_dir, tinybert_cli):
    data = tmp_path / "lisennlp"
    data.mkdir()
    source = shared_dataset("lisennlp")
    (data / "train.txt").write_text("".join((source / "train.txt").read_text(encoding="utf-8").splitlines(True)[:48]),
                                    encoding="utf-8")
    (data / "eval.txt").write_text("".join((source / "eval.txt").read_text(encoding="utf-8").splitlines(True)[:24]),
                                   encoding="utf-8")
    torch.manual_seed(6)
    teacher = tmp_path / "teacher"
    BertForSequenceClassification(tiny_bert_config(hidden_size=64, intermediate_size=128, num_labels=2,
                                                   id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})
                                  ).save_pretrained(teacher)
    load_tokenizer(vocab_dir).save_pretrained(teacher)
    shape = write(tmp_path / "student.json", json.dumps({"num_hidden_layers": 2, "hidden_size": 32,
                                                         "intermediate_size": 64, "num_attention_heads": 4}))

    def run(*args):
        done = tinybert_cli("distill", *args)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    common = ("--epochs", "1")
    fork1 = run("--teacher_model", teacher, "--student_model", shape, "--data_dir", data, "--output_dir",
                tmp_path / "fork1", "--max_seq_length", 32, "--train_batch_size", 8, "--learning_rate", "1e-3",
                "--num_train_epochs", 1, "--do_lower_case")
    assert "--teacher_model is the reference code's spelling of --teacher" in fork1.stderr
    run("--stage", "intermediate", "--teacher", teacher, "--student", shape, "--train", data / "train.txt",
        "--output", tmp_path / "ours1", "--max-length", 32, "--batch-size", 8, "--lr", "1e-3", *common)
    run("--pred_distill", "--teacher_model", teacher, "--student_model", tmp_path / "fork1", "--data_dir", data,
        "--output_dir", tmp_path / "fork2", "--max_seq_length", 32, "--train_batch_size", 8,
        "--learning_rate", "1e-3", "--num_train_epochs", 1, "--num_labels", 2)
    run("--stage", "prediction", "--teacher", teacher, "--student", tmp_path / "ours1", "--train",
        data / "train.txt", "--eval", data / "eval.txt", "--output", tmp_path / "ours2", "--max-length", 32,
        "--batch-size", 8, "--lr", "1e-3", *common)
    assert (tmp_path / "fork2" / "model.safetensors").read_bytes() == (tmp_path / "ours2" / "model.safetensors").read_bytes()
    fork_state = json.loads((tmp_path / "fork2" / "training_state.json").read_text())
    ours_state = json.loads((tmp_path / "ours2" / "training_state.json").read_text())
    assert fork_state["best"] == ours_state["best"]  # --data_dir's eval.txt was the dev set


@pytest.mark.parametrize("output", ["here", "a file", "a folder of the user's", "the input"])
def test_convert_never_replaces_what_is_not_a_conversion(tmp_path, vocab_dir, monkeypatch, capsys, output):
    from tinybert.cli import main
    write_fork_task_output(tmp_path / "fork", names=("pytorch_model.bin",))
    shutil.copy(vocab_dir / "vocab.txt", tmp_path / "fork" / "vocab.txt")
    monkeypatch.chdir(tmp_path)
    target = {"here": tmp_path, "a file": tmp_path / "notes.txt", "a folder of the user's": tmp_path / "mine",
              "the input": tmp_path / "fork"}[output]
    if output == "a file":
        target.write_text("keep me")
    elif output == "a folder of the user's":  # a model of the user's: config.json and files of its own
        target.mkdir()
        (target / "config.json").write_text("{}")
        (target / "keep.txt").write_text("keep me")
    code = main(["convert", "--input", str(tmp_path / "fork"), "--output", "." if output == "here" else str(target)])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error and error.startswith("error: "), error
    assert (tmp_path / "fork" / "pytorch_model.bin").is_file()
    if output in ("a file", "a folder of the user's"):
        assert "keep me" in (target.read_text() if target.is_file() else (target / "keep.txt").read_text())
    convert(tmp_path / "fork", tmp_path / "clean")
    convert(tmp_path / "fork", tmp_path / "clean")  # an earlier conversion is replaced
    assert (tmp_path / "clean" / "config.json").is_file()
