import json
import shlex
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from huggingface_hub import ModelCard
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import tinybert.finetune as finetune_module
from conftest import shared_dataset, write
from tinybert.evaluation.measure import evaluate
from tinybert.finetune import FinetuneConfig, finetune
from tinybert.data import DataOptions
from tinybert.resources import demo_teacher_dir
from tinybert.cli import parse
from tinybert.settings import values_of
from tinybert.training import TrainingConfig, is_complete


def _tiny_config(**training):
    settings = dict(epochs=2, batch_size=8, learning_rate=1e-3, checkpoint_every=3, log_every=1)
    settings.update(training)
    return FinetuneConfig(training=TrainingConfig(**settings), max_length=32)


@pytest.mark.slow
def test_real_finetune_of_minilm_on_sst2_beats_chance(tmp_path):
    output = tmp_path / "teacher"
    # the first 300 of SST-2's 872 dev rows: evaluated after every epoch and once more at the end
    dev = write(tmp_path / "dev.tsv", "".join(shared_dataset("sst2/dev.tsv").read_text().splitlines(True)[:301]))
    config = FinetuneConfig(training=TrainingConfig(epochs=3, batch_size=16, learning_rate=1e-4), max_length=64)
    summary = finetune(demo_teacher_dir(), shared_dataset("sst2/train_1k.tsv"), output, eval_path=dev, config=config,
                       data_options=DataOptions(max_examples=400), show_progress=False)
    losses = [r["loss"] for r in map(json.loads, (output / "train_log.jsonl").read_text().splitlines()) if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # the loss went down
    assert summary["best"]["accuracy"] > 0.65  # chance is ~0.5 on SST-2 dev

    # a plain save_pretrained directory: transformers alone loads it and gives the same answer
    model = AutoModelForSequenceClassification.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert model.config.id2label == {0: "0", 1: "1"}
    with torch.inference_mode():
        logits = model(**tokenizer(["a triumph , warm and funny", "dull , lifeless and boring"],
                                   return_tensors="pt", padding=True)).logits
    assert logits.argmax(-1).tolist() == [1, 0]
    assert not list(output.glob("*.bin")) and (output / "model.safetensors").is_file()

    results = evaluate(output, dev, max_length=64, show_progress=False)
    assert results["accuracy"] == pytest.approx(summary["best"]["accuracy"])


def test_regression_finetune_stores_problem_type_and_reports_pearson(tmp_path, tiny_model_dir):
    rows = "".join(f"{'good ' * (i % 5)}film {i}\tnice\t{i % 5}.5\n" for i in range(40))
    train = write(tmp_path / "train.tsv", "sentence1\tsentence2\tscore\n" + rows)
    summary = finetune(tiny_model_dir, train, tmp_path / "out", eval_path=train, config=_tiny_config(),
                       show_progress=False)
    assert summary["metric"] == "pearson"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["num_labels"] == 1 if "num_labels" in config \
        else config["problem_type"] == "regression"
    results = evaluate(tmp_path / "out", train, latency=False, show_progress=False)
    assert {"pearson", "spearman"} <= results.keys() and "accuracy" not in results


def test_show_progress_false_shows_no_training_bar(tmp_path, tiny_model_dir, capfd):
    finetune(tiny_model_dir, _string_label_data(tmp_path), tmp_path / "out", config=_tiny_config(epochs=1),
             show_progress=False)
    assert "fine-tuning" not in capfd.readouterr().err


def _string_label_data(tmp_path):
    rows = "".join(f"{'great fun' if i % 2 else 'awful mess'} number {i}\t{'pos' if i % 2 else 'neg'}\n"
                   for i in range(48))
    return write(tmp_path / "train.txt", rows)


def test_killed_finetune_resumes_to_the_same_weights(tmp_path, tiny_model_dir, monkeypatch):
    train = _string_label_data(tmp_path)
    finetune(tiny_model_dir, train, tmp_path / "straight", config=_tiny_config(), show_progress=False)

    real_run_training = finetune_module.run_training

    def run_training_killed_after(steps):
        def run(**kwargs):
            calls = {"n": 0}
            compute = kwargs["compute_losses"]

            def compute_then_maybe_die(module, batch):
                calls["n"] += 1
                if calls["n"] > steps:
                    raise KeyboardInterrupt
                return compute(module, batch)
            return real_run_training(**{**kwargs, "compute_losses": compute_then_maybe_die})
        return run

    monkeypatch.setattr(finetune_module, "run_training", run_training_killed_after(7))
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_model_dir, train, tmp_path / "resumed", config=_tiny_config(), show_progress=False)
    assert (tmp_path / "resumed" / "checkpoint").is_dir() and not is_complete(tmp_path / "resumed")
    monkeypatch.setattr(finetune_module, "run_training", real_run_training)
    finetune(tiny_model_dir, train, tmp_path / "resumed", config=_tiny_config(), show_progress=False)

    assert is_complete(tmp_path / "resumed") and not (tmp_path / "resumed" / "checkpoint").exists()
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)
    config = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # nothing logged twice after the resume


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tinybert.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_finetune_then_evaluate_json(tmp_path, tiny_model_dir, tinybert_cli):
    train = _string_label_data(tmp_path)
    argv = ["finetune", "--model", tiny_model_dir, "--train", train, "--eval", train, "--output", tmp_path / "m",
            "--epochs", "1", "--batch-size", "8", "--max-length", "32"]
    done = tinybert_cli(*argv)
    assert done.returncode == 0, done.stderr
    # the model card: the Hub's metadata with the best dev metric, and the command that made the model
    card = ModelCard.load(tmp_path / "m" / "README.md")
    best = json.loads((tmp_path / "m" / "training_state.json").read_text())["best"]
    assert ("dev", "accuracy", best["accuracy"]) in [(r.dataset_split, r.metric_type, r.metric_value)
                                                     for r in card.data.eval_results]
    # a local folder is no Hub model to link to: the page names it, the metadata does not
    assert card.data.base_model is None and card.data.pipeline_tag == "text-classification"
    assert f"Base model: `{tiny_model_dir}`" in card.text
    size = (tmp_path / "m" / "model.safetensors").stat().st_size / 1e6
    assert f"- size (MB): {size:,.1f}" in card.text  # what it weighs, beside its parameters
    command = shlex.split(card.text.split("```bash\n")[1].split("\n")[0])
    assert command[0] == "tinybert" and values_of(parse(command[1:])[1]) == values_of(parse(list(map(str, argv)))[1])
    done = tinybert_cli("evaluate", "--model", tmp_path / "m", "--data", train, "--json", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    for key in ("accuracy", "f1", "mcc", "params", "size_mb", "latency_ms_batch1", "examples_per_s_batch32"):
        assert key in results
    assert "accuracy" in done.stdout


HUB_CACHE = "/home/me/.cache/huggingface/hub/models--google-bert--bert-base-uncased/snapshots/86b5e09344"


@pytest.mark.parametrize("base, linked", [(HUB_CACHE, "google-bert/bert-base-uncased"),
                                          (HUB_CACHE + "/", "google-bert/bert-base-uncased"),
                                          ("google-bert/bert-base-uncased", None), ("runs/teacher", None),
                                          ("/models/bert-base", None), ("runs/pipeline/teacher", None),
                                          ("./bert/base", None), ("bert-base", None)])
def test_the_cards_metadata_links_only_a_hub_model_and_names_no_folder_as_a_dataset(tmp_path, base, linked):
    from tinybert.models.card import write_card
    record = {"stage": "finetune", "task": "sequence", "labels": ["neg", "pos"], "max_length": 32, "base_model": base,
              "dev": {"data": "/home/me/data/sst2/dev.tsv", "metric": "accuracy", "accuracy": 0.75}}
    write_card(tmp_path, record, {"test": {"accuracy": 0.5}, "test_data": "/home/me/data/sst2/test.tsv"})
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == linked
    assert [(r.dataset_type, r.dataset_name, r.dataset_split) for r in card.data.eval_results] == [
        ("local", "dev.tsv", "dev"), ("local", "test.tsv", "test")]


def test_cli_bad_input_exits_2_without_traceback(tmp_path, tiny_model_dir, tinybert_cli):
    bad = write(tmp_path / "bad.tsv", "sentence\tlabel\nfine\t1\nno label here\n")
    done = _cli("finetune", "--model", tiny_model_dir, "--train", bad, "--output", tmp_path / "o")  # a real process
    assert done.returncode == 2
    assert "bad.tsv" in done.stderr and "line 3" in done.stderr and "--skip-bad-lines" in done.stderr
    assert "Traceback" not in done.stderr
    done = tinybert_cli("evaluate", "--model", tmp_path / "missing", "--data", bad)
    assert done.returncode == 2 and "model directory not found" in done.stderr and "Traceback" not in done.stderr


def test_unknown_label_at_evaluation(tmp_path, tiny_model_dir, tinybert_cli):
    train = _string_label_data(tmp_path)
    finetune(tiny_model_dir, train, tmp_path / "m", config=_tiny_config(epochs=1), show_progress=False)
    other = write(tmp_path / "other.txt", "fine\tpos\nhmm\tneutral\n")
    done = tinybert_cli("evaluate", "--model", tmp_path / "m", "--data", other)
    assert done.returncode == 2
    assert "other.txt, line 2: unknown label 'neutral'" in done.stderr and "Traceback" not in done.stderr
