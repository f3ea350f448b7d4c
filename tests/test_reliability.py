"""The defects a code review found (issue 14), each reproduced by a test that failed before its fix."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import (BertForMaskedLM, BertForSequenceClassification, BertModel, RobertaConfig,
                          RobertaForMaskedLM, RobertaTokenizerFast)

import tinybert.augment.algorithm as algorithm_module
import tinybert.finetune as finetune_module
from conftest import killed_after, shared_dataset, tiny_bert_config, write
from tinybert.augment import AugmentConfig, WordVectors, augment_file
from tinybert.distillation.task import DistillConfig, distill
from tinybert.distillation.distillers import IntermediateDistiller, IntermediateLosses, PredictionDistiller
from tinybert.errors import InputError
from tinybert.evaluation.measure import evaluate
from tinybert.finetune import FinetuneConfig, finetune
from tinybert.distillation.losses import attention_loss, hidden_loss
from tinybert.pipeline import load_config, run_pipeline
from tinybert.training import TrainingConfig, make_accelerator

ROWS = "".join(f"{'a great and warm film' if i % 2 else 'a dull , tired mess'} {'really ' * (i % 5)}\t"
               f"{'pos' if i % 2 else 'neg'}\n" for i in range(48))
SHAPE = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}


def _tiny_training(**settings):
    return TrainingConfig(**{"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "checkpoint_every": 3,
                             "log_every": 1, **settings})


def _classifier(path, tokenizer, **config):
    torch.manual_seed(1)
    BertForSequenceClassification(tiny_bert_config(**config)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# 1. Stale pipeline stages ------------------------------------------------------------------------

def test_pipeline_reruns_what_was_built_on_a_changed_general_student_or_teacher(tmp_path, tiny_model_dir,
                                                                                real_tokenizer, caplog):
    train = write(tmp_path / "train.txt", ROWS)
    teacher = _classifier(tmp_path / "teacher", real_tokenizer, num_labels=2, id2label={0: "neg", 1: "pos"},
                          label2id={"neg": 0, "pos": 1})
    corpus = write(tmp_path / "corpus.txt", "".join(f"line {i} of the corpus about films .\n" for i in range(64)))
    student = write(tmp_path / "student.json", json.dumps(SHAPE))
    config = write(tmp_path / "run.yaml", yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "data": {"train": str(train), "dev": str(train)},
        "general": {"run": True, "teacher": str(tiny_model_dir), "corpus": [str(corpus)], "student": str(student),
                    "max_length": 32, "batch_size": 8, "max_steps": 2},
        "finetune": {"teacher_dir": str(teacher)}, "augment": {"run": False},
        "intermediate": {"epochs": 1, "batch_size": 8, "max_length": 32}, "prediction": {"epochs": 1},
        "baseline": {"run": False}, "evaluate": {"no_latency": True, "max_length": 32},
        "export": {"run": False}, "report": {"run": False}}))

    def stages_run(*overrides):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tinybert"):
            run_pipeline(load_config(config, list(overrides)))
        return {name for name in ("general", "intermediate", "student", "evaluate")
                if f"stage {name}: already complete, skipped" not in caplog.text}

    stages_run()
    assert stages_run() == set()
    assert stages_run("general.lr=0.5") == {"general", "intermediate", "student", "evaluate"}
    # the external teacher's weights change, its config.json does not
    model = BertForSequenceClassification.from_pretrained(teacher)
    with torch.no_grad():
        model.classifier.weight.mul_(-1)
    model.save_pretrained(teacher)
    assert stages_run("general.lr=0.5") == {"intermediate", "student", "evaluate"}


# 2. Mixed precision in one process ---------------------------------------------------------------

def test_a_stage_may_use_another_mixed_precision_than_the_last(tmp_path, tiny_model_dir):
    train = write(tmp_path / "train.txt", ROWS)
    assert make_accelerator(TrainingConfig()).mixed_precision == "no"
    assert make_accelerator(TrainingConfig(mixed_precision="bf16")).mixed_precision == "bf16"
    finetune(tiny_model_dir, train, tmp_path / "teacher", config=FinetuneConfig(training=_tiny_training(),
             max_length=32), show_progress=False)
    distill(tmp_path / "teacher", str(write(tmp_path / "s.json", json.dumps(SHAPE))), train, tmp_path / "stage1",
            config=DistillConfig(training=_tiny_training(mixed_precision="bf16"), max_length=32), show_progress=False)
    assert (tmp_path / "stage1" / "model.safetensors").is_file()


# 3. transformers' default label names ------------------------------------------------------------

def test_default_label_names_are_the_data_s_class_indices(tmp_path, real_tokenizer):
    model = _classifier(tmp_path / "fresh", real_tokenizer, num_labels=2)  # LABEL_0, LABEL_1
    results = evaluate(model, shared_dataset("sst2/dev.tsv"), max_length=32, latency=False, show_progress=False)
    assert results["examples"] == 872 and 0 <= results["accuracy"] <= 1
    train = write(tmp_path / "train.txt", "".join(f"text {i}\t{i % 2}\n" for i in range(16)))
    distill(model, str(write(tmp_path / "s.json", json.dumps(SHAPE))), train, tmp_path / "student",
            config=DistillConfig(training=_tiny_training(), max_length=16), show_progress=False)
    named = _classifier(tmp_path / "named", real_tokenizer, num_labels=2, id2label={0: "neg", 1: "pos"},
                        label2id={"neg": 0, "pos": 1})
    with pytest.raises(InputError, match="unknown label '0'; the model knows neg, pos"):
        evaluate(named, train, max_length=16, latency=False, show_progress=False)


# 4. Half-precision checkpoints -------------------------------------------------------------------

def test_a_half_precision_checkpoint_is_trained_in_float32(tmp_path, real_tokenizer):
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).half().save_pretrained(tmp_path / "half")
    real_tokenizer.save_pretrained(tmp_path / "half")
    train = write(tmp_path / "train.txt", ROWS)
    finetune(tmp_path / "half", train, tmp_path / "out", config=FinetuneConfig(training=_tiny_training(),
             max_length=32), show_progress=False)
    assert {tensor.dtype for tensor in load_file(tmp_path / "out" / "model.safetensors").values()} == {torch.float32}


# 5. Metric names in distillation -----------------------------------------------------------------

@pytest.mark.parametrize("metric", ["f1", "mse", "acuracy"])
def test_distillation_refuses_a_metric_the_task_does_not_have_before_training(tmp_path, real_tokenizer, metric):
    teacher = _classifier(tmp_path / "teacher", real_tokenizer, num_labels=3, id2label={0: "a", 1: "b", 2: "c"},
                          label2id={"a": 0, "b": 1, "c": 2})
    train = write(tmp_path / "train.txt", "".join(f"text {i}\t{'abc'[i % 3]}\n" for i in range(12)))
    with pytest.raises(InputError, match=f"unknown metric '{metric}' for this task"):
        distill(teacher, str(teacher), train, tmp_path / "out", eval_path=train,
                config=DistillConfig(stage="prediction", metric=metric, training=_tiny_training()),
                show_progress=False)
    assert not (tmp_path / "out" / "train_log.jsonl").exists()


# 6. Masked LMs other than WordPiece --------------------------------------------------------------

SENTENCES = ["the film is a charming and often affecting journey", "an unflinchingly bleak and desperate story",
             "the acting and the music are all astounding", "a sometimes tedious film about friends"]


@pytest.fixture
def roberta_mlm(tmp_path):
    """A tiny RoBERTa masked LM with a byte-level BPE tokenizer trained here."""
    from tokenizers import ByteLevelBPETokenizer
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(SENTENCES * 20, vocab_size=400, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    raw = tmp_path / "raw"
    raw.mkdir()
    trainer.save_model(str(raw))
    tokenizer = RobertaTokenizerFast(vocab=str(raw / "vocab.json"), merges=str(raw / "merges.txt"))
    path = tmp_path / "roberta"
    torch.manual_seed(0)
    RobertaForMaskedLM(RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=130,
                                     pad_token_id=tokenizer.pad_token_id)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _augmented(tmp_path, mlm, name="out.tsv", **settings):
    source = write(tmp_path / "in.tsv", "sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(SENTENCES)))
    output = tmp_path / name
    augment_file(source, output, mlm_dir=mlm, config=AugmentConfig(**{"variants": 4, "candidates": 3, "probability": 0.9,
                                                                       **settings}), show_progress=False)
    return [line.split("\t") for line in output.read_text().splitlines()[1:]]


def test_a_byte_level_bpe_masked_lm_gives_whole_words(tmp_path, roberta_mlm):
    original, variants = None, 0
    for text, _, mark in _augmented(tmp_path, roberta_mlm):
        if mark == "0":  # a row of the input
            original = text.split(" ")
            continue
        variants += 1
        words = text.split(" ")  # one whole word for one word, never a piece or a byte-level marker
        assert len(words) == len(original) and all(word and "Ġ" not in word for word in words)
    assert variants > len(SENTENCES)


def test_a_padded_vocabulary_works(tmp_path, real_tokenizer):
    path = tmp_path / "padded"
    torch.manual_seed(0)
    BertForMaskedLM(tiny_bert_config(vocab_size=len(real_tokenizer) + 38)).save_pretrained(path)
    real_tokenizer.save_pretrained(path)
    rows = _augmented(tmp_path, path)
    assert len(rows) > len(SENTENCES)


def test_a_tokenizer_larger_than_the_model_is_a_clear_error(tmp_path, real_tokenizer):
    path = tmp_path / "small"
    BertForMaskedLM(tiny_bert_config(vocab_size=1000)).save_pretrained(path)
    real_tokenizer.save_pretrained(path)
    with pytest.raises(InputError, match="30,522 entries but the model's vocabulary has 1,000"):
        _augmented(tmp_path, path)


# 7. Word vectors ---------------------------------------------------------------------------------

def test_glove_tokens_with_spaces_and_blocked_neighbour_search(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    words = [",", "the", "at&t . com", "king", "queen", "man", "woman", ". . .", "apple", "pear"]
    vectors = rng.normal(size=(len(words), 6)).astype(np.float32)
    path = tmp_path / "glove.840B.txt"
    path.write_text("".join(f"{w} " + " ".join(f"{x:.6f}" for x in v) + "\n" for w, v in zip(words, vectors)))
    import tinybert.augment.vectors as vectors_module
    monkeypatch.setattr(vectors_module, "QUERY_BLOCK", 3)  # vocabulary rows compared at a time
    loaded = WordVectors.load(path)
    assert loaded.words == [w for w in words if " " not in w]
    kept = [words.index(w) for w in loaded.words]
    unit = vectors[kept] / np.linalg.norm(vectors[kept], axis=1, keepdims=True)
    np.testing.assert_allclose(loaded.unit.numpy(), unit, atol=1e-5)
    for i, word in enumerate(loaded.words):
        order = [loaded.words[j] for j in np.argsort(-(unit @ unit[i])) if j != i]
        assert loaded.neighbours([word], 3)[word] == order[:3]


# 8. Augmentation resume --------------------------------------------------------------------------

def test_augment_resume_notices_another_masked_lm(tmp_path, real_tokenizer, monkeypatch):
    models = []
    for seed in (0, 1):
        path = tmp_path / f"mlm{seed}"
        torch.manual_seed(seed)
        BertForMaskedLM(tiny_bert_config()).save_pretrained(path)
        real_tokenizer.save_pretrained(path)
        models.append(path)
    expected = _augmented(tmp_path, models[1], "straight.tsv", chunk_rows=2)
    real, calls = algorithm_module.Augmenter.word_candidates, {"n": 0}

    def dies_on_second_chunk(self, texts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, texts)
    monkeypatch.setattr(algorithm_module.Augmenter, "word_candidates", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        _augmented(tmp_path, models[0], "resumed.tsv", chunk_rows=2)
    monkeypatch.setattr(algorithm_module.Augmenter, "word_candidates", real)
    assert _augmented(tmp_path, models[1], "resumed.tsv", chunk_rows=2) == expected


def test_a_bad_line_late_in_the_file_stops_before_any_work(tmp_path, real_tokenizer, monkeypatch):
    source = write(tmp_path / "in.txt", "".join(f"text number {i}\t1\n" for i in range(40)) + "\t0\n")
    calls = {"n": 0}
    real = algorithm_module.Augmenter.word_candidates

    def counting(self, texts):
        calls["n"] += 1
        return real(self, texts)
    monkeypatch.setattr(algorithm_module.Augmenter, "word_candidates", counting)
    from tinybert.resources import demo_word_vectors
    with pytest.raises(InputError, match="line 41: the text is empty"):
        augment_file(source, tmp_path / "out.txt", word_vectors=demo_word_vectors(),
                     config=AugmentConfig(chunk_rows=8), show_progress=False)
    assert calls["n"] == 0 and not list(tmp_path.glob("out.txt*"))


# 9. Resuming with other settings -----------------------------------------------------------------

def test_a_checkpoint_is_not_resumed_with_other_settings(tmp_path, tiny_model_dir):
    train = write(tmp_path / "train.txt", ROWS)
    config = FinetuneConfig(training=_tiny_training(epochs=2), max_length=32)
    with killed_after(finetune_module, 4):
        finetune(tiny_model_dir, train, tmp_path / "out", config=config, show_progress=False)
    other = FinetuneConfig(training=_tiny_training(epochs=2, batch_size=16, learning_rate=5e-4), max_length=32)
    with pytest.raises(InputError, match="batch_size 8 → 16, learning_rate 0.001 → 0.0005") as caught:
        finetune(tiny_model_dir, train, tmp_path / "out", config=other, show_progress=False)
    assert "checkpoint" in caught.value.fix
    finetune(tiny_model_dir, train, tmp_path / "out", config=config, show_progress=False)  # the same settings resume


# 10. Smaller ones --------------------------------------------------------------------------------

def test_the_teacher_is_frozen_and_stage_2_trains_only_the_student(real_tokenizer):
    teacher = BertForSequenceClassification(tiny_bert_config(num_labels=2))
    student = BertForSequenceClassification(tiny_bert_config(num_labels=2, num_hidden_layers=1))
    for distiller in (IntermediateDistiller(student, teacher, [2], IntermediateLosses()),
                      PredictionDistiller(student, teacher)):
        assert not any(parameter.requires_grad for parameter in teacher.parameters())
    assert {id(p) for p in PredictionDistiller(student, teacher).parameters()} == {id(p) for p in student.parameters()}


def test_losses_compare_half_precision_students_with_the_teacher_in_float32():
    torch.manual_seed(0)
    teacher = torch.randn(2, 4, 5, 5) * 3
    student = (teacher + 0.01 * torch.randn_like(teacher)).bfloat16()
    mask = torch.ones(2, 5, dtype=torch.long)
    exact = attention_loss(student.float(), teacher, mask)
    assert attention_loss(student, teacher, mask).dtype == torch.float32
    assert attention_loss(student, teacher, mask) == pytest.approx(float(exact), rel=1e-6)
    hidden_teacher = torch.randn(2, 5, 8) * 3
    hidden_student = (hidden_teacher + 0.01 * torch.randn_like(hidden_teacher)).bfloat16()
    assert hidden_loss(hidden_student, hidden_teacher, mask) == pytest.approx(
        float(hidden_loss(hidden_student.float(), hidden_teacher, mask)), rel=1e-6)


def test_evaluation_shards_split_the_data_and_add_up(tmp_path, real_tokenizer):
    from tinybert.data import DataOptions, LabelSpace, task_cache
    from tinybert.evaluation.measure import evaluate_dataset, metrics_of_shard
    model = BertForSequenceClassification(tiny_bert_config(num_labels=2)).eval()
    data = write(tmp_path / "dev.txt", ROWS)
    space = LabelSpace("classification", ["neg", "pos"])
    dataset = task_cache(data, real_tokenizer, 32, DataOptions(), tmp_path / "cache", show_progress=False).labelled(space)
    whole = evaluate_dataset(model, dataset, real_tokenizer, space, batch_size=8, show_progress=False)
    parts = [metrics_of_shard(model, dataset, real_tokenizer, space, batch_size=8, show_progress=False,
                              shard=(index, 2)) for index in (0, 1)]
    assert sum(part.count for part in parts) == len(dataset) and all(part.count < len(dataset) for part in parts)
    parts[0].merge(parts[1])
    assert parts[0].result() == pytest.approx(whole)


def test_a_failure_on_the_main_process_stops_the_others(tmp_path, tiny_model_dir):
    bad = write(tmp_path / "bad.txt", ROWS + "no label on this line\n")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29531", "-m", "tinybert.cli", "finetune", "--model", str(tiny_model_dir), "--train",
                           str(bad), "--output", str(tmp_path / "out"), "--max-length", "32"],
                          capture_output=True, text=True, env=environment, timeout=240)
    # the message reaches the user whichever process the launcher stops first; neither process crashes
    # (torchrun's own report of a failed worker follows it)
    assert done.returncode != 0 and "1 malformed line(s) (lines 49)" in done.stderr
    assert "[rank0]: Traceback" not in done.stderr and "[rank1]: Traceback" not in done.stderr
