import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer, BertForSequenceClassification, BertModel

from tinybert.distillation.task import DistillConfig, distill

import tinybert.distillation.general as general_module
from conftest import killed_after, tiny_bert_config, write
from tinybert.distillation.general import GeneralConfig, build_corpus_cache, general_distill
from tinybert.distillation.distillers import IntermediateLosses
from tinybert.errors import InputError
from tinybert.training import TrainingConfig, is_complete

TEXT = """The cat sat on the mat .
It was a sunny day and the children played in the park until dinner .

A new document starts here .
""" + " ".join(["word"] * 40) + "\n"


@pytest.fixture
def encoder_dir(tmp_path, real_tokenizer):
    """A bare 4-layer encoder without dropout (so runs can be compared weight for weight)."""
    torch.manual_seed(3)
    path = tmp_path / "encoder"
    BertModel(tiny_bert_config(num_hidden_layers=4, hidden_size=64, intermediate_size=128,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).save_pretrained(path)
    real_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def student_shape(tmp_path):
    return write(tmp_path / "student.json", json.dumps(
        {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}))


@pytest.fixture
def corpus(tmp_path):
    lines = [f"sentence number {i} talks about {'films' if i % 2 else 'music'} and {'cats ' * (i % 9)}."
             for i in range(300)]
    return write(tmp_path / "corpus.txt", "\n".join(lines) + "\n")


def test_corpus_cache_packs_lines_splits_long_ones_and_respects_documents(tmp_path, real_tokenizer):
    corpus = write(tmp_path / "c.txt", TEXT)
    cache = build_corpus_cache([corpus], real_tokenizer, 16, tmp_path / "cache", show_progress=False)
    examples = [" ".join(real_tokenizer.convert_ids_to_tokens(cache[i]["input_ids"])) for i in range(len(cache))]
    assert all(len(cache[i]["input_ids"]) <= 16 for i in range(len(cache)))
    assert examples[0] == "[CLS] the cat sat on the mat . [SEP]"  # the next line does not fit: new example
    # a line longer than the window is cut; its tail ends where the document ends (blank line)
    assert examples[1:3] == ["[CLS] it was a sunny day and the children played in the park until dinner [SEP]",
                             "[CLS] . [SEP]"]
    assert examples[3] == "[CLS] a new document starts here . [SEP]"
    words = sum(example.count("word") for example in examples)
    assert words == 40  # the long line is cut into windows, nothing lost
    again = build_corpus_cache([corpus], real_tokenizer, 16, tmp_path / "cache", show_progress=False)
    assert len(again) == len(cache)


def test_general_distillation_trains_and_feeds_task_distillation(tmp_path, encoder_dir, student_shape, corpus):
    config = GeneralConfig(training=TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-3, log_every=1,
                                                   checkpoint_every=1000), max_length=32)
    summary = general_distill(encoder_dir, [corpus], tmp_path / "general", student=str(student_shape),
                              config=config, show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "general" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])
    assert {"att", "hid", "emb"} <= records[0].keys()
    model = AutoModel.from_pretrained(tmp_path / "general")
    assert type(model).__name__ == "BertModel" and model.config.num_hidden_layers == 2
    assert (tmp_path / "general" / "distill_projections.safetensors").is_file()
    assert summary["steps"] > 0

    # the general student is where task distillation starts
    teacher = tmp_path / "teacher"
    BertForSequenceClassification.from_pretrained(encoder_dir, num_labels=2, id2label={0: "0", 1: "1"},
                                                  label2id={"0": 0, "1": 1}).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(encoder_dir).save_pretrained(teacher)
    train = write(tmp_path / "train.txt", "a fine film\t1\na poor film\t0\n" * 8)
    distill(teacher, str(tmp_path / "general"), train, tmp_path / "stage1",
            config=DistillConfig(training=TrainingConfig(epochs=1, batch_size=8), max_length=16),
            show_progress=False)
    stage1 = json.loads((tmp_path / "stage1" / "config.json").read_text())
    assert stage1["hidden_size"] == 32 and stage1["architectures"] == ["BertForSequenceClassification"]


def test_killed_general_run_resumes_to_the_same_weights(tmp_path, encoder_dir, student_shape, corpus):
    def config():
        return GeneralConfig(training=TrainingConfig(epochs=1, batch_size=8, learning_rate=1e-3, checkpoint_every=3),
                             max_length=32)
    general_distill(encoder_dir, [corpus], tmp_path / "straight", student=str(student_shape), config=config(),
                    show_progress=False)
    with killed_after(general_module, 7):
        general_distill(encoder_dir, [corpus], tmp_path / "resumed", student=str(student_shape), config=config(),
                        show_progress=False)
    assert not is_complete(tmp_path / "resumed")
    with pytest.raises(InputError, match="hidden 1.0 → 2.0"):  # its checkpoint resumes under its own losses only
        general_distill(encoder_dir, [corpus], tmp_path / "resumed", student=str(student_shape),
                        config=replace(config(), losses=IntermediateLosses(hidden=2.0)), show_progress=False)
    general_distill(encoder_dir, [corpus], tmp_path / "resumed", student=str(student_shape), config=config(),
                    show_progress=False)
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)


def _general_command(encoder_dir, corpus, student_shape, output, batch_size):
    return ["general", "--teacher", str(encoder_dir), "--corpus", str(corpus), "--student", str(student_shape),
            "--output", str(output), "--max-length", "32", "--batch-size", str(batch_size), "--epochs", "3",
            "--max-steps", "25", "--lr", "1e-3", "--seed", "5"]


WORDS = "the cat dog film music good bad day night house car tree book water fire".split()


def _even_corpus(path, lines):
    """Lines of 30 single-piece words: at --max-length 32 each line is one example of 30 tokens."""
    return write(path, "".join(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(30)) + "\n" for i in range(lines)))


@pytest.mark.parametrize("examples, accumulation, max_steps", [(88, 1, 25), (80, 3, 6)])  # 6: mid-epoch
def test_max_steps_is_exact_and_the_schedule_ends_there(tmp_path, encoder_dir, student_shape, examples, accumulation,
                                                        max_steps):
    """11 batches an epoch and --max-steps 25 ran 26 steps; 10 batches with accumulation 3 and
    --max-steps 4 ran 5 (the budget was turned into fractional epochs, rounded up). With accumulation
    the run stops in the middle of an epoch."""
    corpus = _even_corpus(tmp_path / "even.txt", examples)
    config = GeneralConfig(training=TrainingConfig(epochs=3, batch_size=8, learning_rate=1e-3, log_every=1,
                                                   gradient_accumulation_steps=accumulation, max_steps=max_steps,
                                                   checkpoint_every=1000), max_length=32)
    summary = general_distill(encoder_dir, [corpus], tmp_path / "general", student=str(student_shape), config=config,
                              show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "general" / "train_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == max_steps and [r["step"] for r in records] == list(range(1, max_steps + 1))
    assert records[-1]["lr"] == 0.0 < records[-2]["lr"]  # the linear decay reaches 0 at the last step, not after


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, encoder_dir, student_shape):
    # every example has 30 tokens, so the mean loss of the global batch equals the mean of the two
    # processes' means; 88 examples: 11 batches an epoch in either run, and --max-steps 25 is exact
    corpus = _even_corpus(tmp_path / "even.txt", 88)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "tinybert.cli",
                             *_general_command(encoder_dir, corpus, student_shape, tmp_path / "one", 8)],
                            capture_output=True, text=True, env=environment)
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29517", "-m", "tinybert.cli",
                             *_general_command(encoder_dir, corpus, student_shape, tmp_path / "two", 4)],
                            capture_output=True, text=True, env=environment)
    assert double.returncode == 0, double.stderr[-3000:]
    one = load_file(tmp_path / "one" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model.safetensors")
    for name, tensor in one.items():
        if name.endswith("key.bias"):
            continue  # its exact gradient is zero (softmax ignores it): Adam follows rounding noise
        # the same up to float rounding in the summation order (gloo all-reduce vs one batch)
        difference = (two[name] - tensor).norm() / tensor.norm().clamp_min(1e-12)
        assert difference < 1e-4, (name, float(difference))
    for run in ("one", "two"):
        assert json.loads((tmp_path / run / "training_state.json").read_text())["steps"] == 25


DOCUMENT_WORDS = "apple river music winter garden silver forest castle engine yellow window summer".split()


@pytest.fixture
def documents(tmp_path):
    """Twelve documents of eight lines, each line naming its document."""
    text = "\n".join("\n".join(f"the {word} line {i} is here ." for i in range(8)) + "\n"
                     for word in DOCUMENT_WORDS)
    return write(tmp_path / "documents.txt", text)


def _seen_examples(monkeypatch, tokenizer, run):
    """The examples each step trained on, as (epoch, document words) in order; ``run`` is called
    with the training function to use (it may stop the run)."""
    real = general_module.run_training
    seen = []

    def recording(**kwargs):
        compute = kwargs["compute_losses"]

        def compute_and_record(module, batch):
            for ids in batch["input_ids"].tolist():
                words = tokenizer.decode(ids, skip_special_tokens=True).split()
                seen.append(next(word for word in words if word in DOCUMENT_WORDS) + " " + words[3])
            return compute(module, batch)
        return real(**{**kwargs, "compute_losses": compute_and_record})

    monkeypatch.setattr(general_module, "run_training", recording)
    run()
    monkeypatch.setattr(general_module, "run_training", real)
    return seen


def test_each_epoch_is_a_new_seeded_shuffle_across_documents_and_resumes_exactly(
        tmp_path, encoder_dir, student_shape, documents, monkeypatch, real_tokenizer):
    def config(seed=5, checkpoint_every=1000):
        return GeneralConfig(training=TrainingConfig(epochs=2, batch_size=8, learning_rate=1e-3, seed=seed,
                                                     checkpoint_every=checkpoint_every), max_length=12)

    def train(output, **settings):
        return lambda: general_distill(encoder_dir, [documents], tmp_path / output, student=str(student_shape),
                                       config=config(**settings), show_progress=False)

    first = _seen_examples(monkeypatch, real_tokenizer, train("a"))
    per_epoch = len(first) // 2
    epoch_one, epoch_two = first[:per_epoch], first[per_epoch:]
    assert per_epoch == 96 and sorted(epoch_one) == sorted(epoch_two)  # every example once per epoch
    assert len({example.split()[0] for example in epoch_one[:8]}) >= 5  # the first batch spans documents
    assert epoch_one != epoch_two  # a new order every epoch
    assert _seen_examples(monkeypatch, real_tokenizer, train("b")) == first  # the same seed, the same orders
    assert _seen_examples(monkeypatch, real_tokenizer, train("c", seed=6)) != first

    # killed in the second epoch, after a checkpoint at step 16 (batch 4 of epoch 2): it resumes there
    with killed_after(general_module, 19):
        general_distill(encoder_dir, [documents], tmp_path / "d", student=str(student_shape),
                        config=config(checkpoint_every=16), show_progress=False)
    resumed = _seen_examples(monkeypatch, real_tokenizer, train("d", checkpoint_every=16))
    assert resumed == first[16 * 8:]
