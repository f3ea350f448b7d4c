"""`tinybert cache list` and `clean`: what commands cached, listed with what made it, removed
unless a running command builds or reads it."""

import gc
import os
import time

import torch
from transformers import BertForSequenceClassification

from conftest import tiny_bert_config, write
from tinybert.data import DataOptions
from tinybert.data.tasks import task_data

LABELS = {"num_labels": 2, "id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}


def _rows(count):
    return "".join(f"{'a great and warm film' if i % 2 else 'a dull , tired mess'}\t{'pos' if i % 2 else 'neg'}\n"
                   for i in range(count))


def test_list_shows_what_a_distill_run_cached_and_clean_leaves_no_file(tmp_path, real_tokenizer, tinybert_cli):
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    BertForSequenceClassification(tiny_bert_config(**LABELS)).save_pretrained(teacher)
    real_tokenizer.save_pretrained(teacher)
    train, dev, cache = write(tmp_path / "train.txt", _rows(16)), write(tmp_path / "dev.txt", _rows(8)), tmp_path / "D"
    done = tinybert_cli("distill", "--stage", "prediction", "--teacher", teacher, "--student", "unused",
                        "--init-from-teacher", "--layers", "1", "--train", train, "--eval", dev, "--output",
                        tmp_path / "out", "--cache-dir", cache, "--max-length", "32", "--epochs", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    listed = tinybert_cli("cache", "list", "--cache-dir", cache)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["KIND", "SOURCE", "MODEL", "SIZE", "LAST", "USED", "IN", "USE", "PATH"]
    tokens = [line for line in lines if line.startswith("tokens (sequence)")]
    assert len(tokens) == 2 and any(str(train) in line for line in tokens) and any(str(dev) in line for line in tokens)
    assert all(str(teacher) in line and "seconds ago" in line for line in tokens)
    outputs = [line for line in lines if line.startswith("teacher outputs")]
    assert len(outputs) == 1 and str(train) in outputs[0] and str(teacher) in outputs[0]
    assert lines[-1].startswith(f"3 cache(s), ") and str(cache) in lines[-1]
    cleaned = tinybert_cli("cache", "clean", "--cache-dir", cache, "--yes")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "removed 3 cache(s)" in cleaned.stdout
    assert cache.is_dir() and not list(cache.rglob("*"))


def test_clean_keeps_what_a_command_reads_and_what_was_used_lately(tmp_path, real_tokenizer, tinybert_cli):
    cache = tmp_path / "D"
    options = DataOptions(cache_dir=str(cache))
    old, recent = (task_data("sequence", write(tmp_path / f"{name}.txt", _rows(8)), real_tokenizer, 32, options,
                             show_progress=False) for name in ("old", "recent"))
    week_ago = time.time() - 7 * 86400
    os.utime(old.directory / "meta.json", (week_ago, week_ago))
    del old
    gc.collect()
    assert tinybert_cli("cache", "clean", "--cache-dir", cache, "--older-than", "2", "--yes").returncode == 0
    assert sorted(path.name.split("-")[0] + path.suffix for path in cache.iterdir()) == ["recent", "recent.lock"]
    asked = tinybert_cli("cache", "clean", "--cache-dir", cache)  # no terminal to ask on
    assert asked.returncode == 2 and "add --yes" in asked.stderr and recent.directory.is_dir()
    kept = tinybert_cli("cache", "clean", "--cache-dir", cache, "--yes")  # this process still reads it
    assert kept.returncode == 0 and f"kept {recent.directory}: a running command uses it" in kept.stdout
    assert "yes" in tinybert_cli("cache", "list", "--cache-dir", cache).stdout.splitlines()[1].split()
    del recent
    gc.collect()
    assert tinybert_cli("cache", "clean", "--cache-dir", cache, "--yes").returncode == 0
    assert not list(cache.iterdir())
