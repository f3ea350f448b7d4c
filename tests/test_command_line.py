"""Command-line habits: a bare `tinybert` lists the commands, `-` is standard input or output,
and bash and zsh completion come from the same parser."""

import io
import shlex
import sys

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification

from conftest import tiny_bert_config, write
from tinybert.cli import COMMANDS, EXAMPLES, build_parser

LABELS = {"num_labels": 2, "id2label": {0: "rotten", 1: "fresh"}, "label2id": {"rotten": 0, "fresh": 1}}
REVIEW = "a gorgeous, witty, seductive movie."


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, real_tokenizer):
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("classifier")
    BertForSequenceClassification(tiny_bert_config(**LABELS)).save_pretrained(path)
    real_tokenizer.save_pretrained(path)
    return path


def _standard_input(monkeypatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8"))


def test_a_bare_tinybert_lists_every_command_with_an_example(tinybert_cli):
    result = tinybert_cli()
    assert result.returncode == 0
    for name, (_, _, _, help_text, _) in COMMANDS.items():
        assert f"  {name}  " in result.stdout and help_text in result.stdout
        assert f"$ {EXAMPLES[name]}" in result.stdout
    assert "--print-completion" in result.stdout


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_has_an_example_that_parses(command):
    assert command in EXAMPLES, f"add an example of `tinybert {command}` to tinybert.cli.EXAMPLES"
    words = shlex.split(EXAMPLES[command].split("|")[-1])
    assert words[:2] == ["tinybert", command]
    assert build_parser().parse_args(words[1:]).command == command


def test_predict_reads_standard_input_and_writes_standard_output(monkeypatch, classifier_dir, tinybert_cli):
    _standard_input(monkeypatch, REVIEW + "\n")
    result = tinybert_cli("predict", "--model", classifier_dir, "--input", "-")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header == "text\tlabel\tp_rotten\tp_fresh"
    text, label, *probabilities = row.split("\t")
    assert text == REVIEW and label in ("rotten", "fresh")
    assert sum(map(float, probabilities)) == pytest.approx(1.0, abs=1e-5)
    _standard_input(monkeypatch, REVIEW + "\nthe acting\n")
    assert len(tinybert_cli("predict", "--model", classifier_dir, "--input", "-", "--output", "-")
               .stdout.splitlines()) == 3


def test_standard_input_that_is_no_task_file_is_named_as_such(monkeypatch, classifier_dir, tinybert_cli):
    _standard_input(monkeypatch, '{"text": "fine"}\n{"words": "no text here"}\n')
    result = tinybert_cli("predict", "--model", classifier_dir, "--input", "-")
    assert result.returncode == 2 and "error: standard input: 1 malformed line(s) (lines 2)" in result.stderr
    assert "Traceback" not in result.stderr


def test_augment_writes_its_rows_to_standard_output(tmp_path, tinybert_cli):
    words = ["good", "great", "fine", "film", "movie", "picture", "plot", "story"]
    vectors = np.random.default_rng(0).normal(size=(len(words), 8))
    glove = write(tmp_path / "glove.txt", "".join(f"{w} " + " ".join(f"{x:.5f}" for x in v) + "\n"
                                                 for w, v in zip(words, vectors)))
    source = write(tmp_path / "train.tsv", "sentence\tlabel\na good film\tfresh\na fine story\trotten\n")
    result = tinybert_cli("augment", "--input", source, "--output", "-", "--word-vectors", glove,
                          "--variants", "2", "--probability", "1", "--candidates", "2")
    assert result.returncode == 0, result.stderr
    header, *rows = [line.split("\t") for line in result.stdout.splitlines()]  # rows only: the summary is on stderr
    assert header == ["sentence", "label", "augmented"]
    assert [row for row in rows if row[2] == "0"] == [["a good film", "fresh", "0"], ["a fine story", "rotten", "0"]]
    variants = [row for row in rows if row[2] == "1"]
    assert variants and all(row[0] not in ("a good film", "a fine story") for row in variants)
    assert "variants" in result.stderr
    assert sorted(tmp_path.iterdir()) == sorted([glove, source])  # no output file left behind


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_know_every_command_and_option(shell, tinybert_cli):
    result = tinybert_cli("--print-completion", shell)
    assert result.returncode == 0
    assert all(name in result.stdout for name in COMMANDS)
    assert "--init-from-teacher" in result.stdout and "--hard-label-weight" in result.stdout


def test_demo_writes_the_bundled_snippets_for_other_commands(tmp_path, tinybert_cli):
    result = tinybert_cli("demo", "--write-data", tmp_path / "data")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == ["dev.tsv", "test.tsv", "train.tsv"]
    assert (tmp_path / "data" / "train.tsv").read_text().startswith("sentence\tlabel\n")
    assert f"train: {tmp_path / 'data' / 'train.tsv'}" in result.stdout
