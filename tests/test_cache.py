"""The on-disk token cache of task data, and the orders examples are read in."""

import copy
import logging
import multiprocessing
import os
import re
import sys
import time
import traceback

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification
from transformers.trainer_pt_utils import get_length_grouped_indices

import tinybert.data.cache as cache_module
from conftest import tiny_bert_config, write
from tinybert.data import DataOptions, EpochSampler, LabelSpace, encode, read_task_file, task_cache, train_loader
from tinybert.data.corpus import build_corpus_cache
from tinybert.data.labels import ORIGINAL
from tinybert.data.tasks import task_data
from tinybert.errors import InputError

ROWS = "".join(f"{'a fine film' if i % 3 else 'a dull , tired and overlong mess of a film'} {'really ' * (i % 7)}\t"
               f"{'pos' if i % 3 else 'neg'}\n" for i in range(50))


def _cache(path, tokenizer, tmp_path, **options):
    return task_cache(path, tokenizer, 16, DataOptions(**options), tmp_path / "cache", show_progress=False)


@pytest.mark.parametrize("text", [ROWS, "sentence1\tsentence2\tlabel\n" + "".join(
    f"a man {'runs ' * (i % 12)}\ta person moves\t{'entailment' if i % 2 else 'not_entailment'}\n" for i in range(30))])
def test_cached_examples_equal_the_in_memory_encoding(tmp_path, real_tokenizer, text):
    path = write(tmp_path / "train.tsv", text)
    data = read_task_file(path)
    space = LabelSpace.infer(data)
    expected = encode(data, real_tokenizer, 16, space, show_progress=False)
    texts = [(e.text_a, e.text_b) if e.text_b else e.text_a for e in data.examples]
    reference = real_tokenizer(texts, truncation=True, max_length=16)  # what transformers itself gives
    assert [f["input_ids"] for f in expected.features] == reference["input_ids"]
    assert [f["token_type_ids"] for f in expected.features] == reference["token_type_ids"]
    cache = _cache(path, real_tokenizer, tmp_path)
    assert LabelSpace.infer(cache) == space and cache.has_pairs == data.has_pairs
    labelled = cache.labelled(space)
    # beside its label, each cached example says where the label comes from: here, an original row
    original = [{**f, "origin": ORIGINAL} for f in expected.features]
    assert [labelled[i] for i in range(len(labelled))] == original
    assert cache.lengths.tolist() == expected.lengths
    assert cache.meta["truncated"] == expected.truncated > 0  # long rows are cut to 16 tokens and counted
    first = cache.first(5).labelled(space)
    assert len(first) == 5 and [first[i] for i in range(5)] == original[:5]


def test_a_changed_file_of_the_same_size_rebuilds_the_cache(tmp_path, real_tokenizer):
    path = write(tmp_path / "train.tsv", "sentence\tlabel\ngood film\tpos\nawful one\tneg\n")
    before = _cache(path, real_tokenizer, tmp_path)
    stat = os.stat(path)
    write(path, "sentence\tlabel\nawful film\tneg\ngood one\tpos\n")  # same size, other content
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same modification time
    assert os.path.getsize(path) == stat.st_size
    after = _cache(path, real_tokenizer, tmp_path)
    space = LabelSpace("classification", ["neg", "pos"])
    assert before.directory == after.directory  # rebuilt in place, not beside the old one
    assert real_tokenizer.decode(after[0]["input_ids"], skip_special_tokens=True) == "awful film"
    assert after.labelled(space)[0]["labels"] == 0
    built = (after.directory / "input_ids.bin").stat().st_mtime_ns
    assert _cache(path, real_tokenizer, tmp_path).directory == after.directory
    assert (after.directory / "input_ids.bin").stat().st_mtime_ns == built  # unchanged inputs: reused as it is


def test_bad_lines_and_unknown_labels_name_their_line(tmp_path, real_tokenizer):
    path = write(tmp_path / "train.tsv", "sentence\tlabel\ngood film\tpos\nno label here\nbad film\tneg\n")
    with pytest.raises(InputError, match="1 malformed line"):
        _cache(path, real_tokenizer, tmp_path)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]  # nothing half-built: only the lock file
    cache = _cache(path, real_tokenizer, tmp_path, skip_bad_lines=True)
    assert len(cache) == 2
    with pytest.raises(InputError, match=r"train.tsv, line 4: unknown label 'neg'"):
        cache.labelled(LabelSpace("classification", ["pos", "other"]))


@pytest.mark.parametrize("size, batch_size", [(7, 2), (300, 8), (5000, 32)])
def test_length_grouped_order_is_the_transformers_one(size, batch_size):
    lengths = np.random.default_rng(size).integers(1, 40, size)
    sampler = EpochSampler(size, batch_size, seed=3, lengths=lengths)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        expected = get_length_grouped_indices(lengths.tolist(), batch_size,
                                              generator=torch.Generator().manual_seed(3 + epoch))
        assert list(sampler) == expected


def test_training_batches_from_the_cache_are_padded_per_batch(tmp_path, real_tokenizer):
    path = write(tmp_path / "train.tsv", "".join(" ".join(["word"] * n) + f"\t{n % 2}\n" for n in list(range(1, 14)) * 6))
    cache = _cache(path, real_tokenizer, tmp_path)
    loader = train_loader(cache.labelled(LabelSpace.infer(cache)), real_tokenizer, batch_size=8, seed=1)
    widths = [batch["input_ids"].shape[1] for batch in loader]
    assert max(widths) == 15 and min(widths) < 8  # never padded to max length
    assert sum(len(batch["labels"]) for batch in loader) == len(cache)


def test_padding_gives_what_transformers_collator_gives(real_tokenizer):
    from transformers import DataCollatorWithPadding
    from tinybert.compiling import StaticShapes
    from tinybert.data.batching import PadToLongest
    rng = np.random.default_rng(0)
    for trial in range(20):
        features = [{"input_ids": rng.integers(0, 30000, n).tolist(), "token_type_ids": rng.integers(0, 2, n).tolist(),
                     "labels": float(rng.random()) if trial % 2 else int(rng.integers(0, 3))}
                    for n in rng.integers(1, 20, int(rng.integers(1, 9)))]
        longest = max(len(f["input_ids"]) for f in features)
        for shapes in (None, StaticShapes((8, 16, 24), rows=8)):  # compiled steps: the next bucket up
            width = shapes.width(longest) if shapes else None
            expected = DataCollatorWithPadding(real_tokenizer, padding="max_length" if shapes else True,
                                               max_length=width)(features)
            assert expected["input_ids"].shape[1] == (next(b for b in (8, 16, 24) if b >= longest) if shapes
                                                      else longest)
            padded = PadToLongest(real_tokenizer, shapes)(features)
            assert padded.keys() == expected.keys()
            for key in expected:
                assert padded[key].dtype == expected[key].dtype and torch.equal(padded[key], expected[key]), key


def _build_in_another_process(path, tokenizer, cache_dir, log):
    """A process of its own (forked: no imports to pay) that builds or reads the cache."""
    def run():
        with open(log, "w") as sys.stderr:
            try:
                task_data("sequence", path, tokenizer, 128, DataOptions(cache_dir=str(cache_dir)), show_progress=False)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
        os._exit(0)
    process = multiprocessing.get_context("fork").Process(target=run)
    process.start()
    return process


def test_two_processes_building_one_cache_at_once_build_it_once(tmp_path, real_tokenizer, monkeypatch, tinybert_cli):
    """Two runs at once used to share one staging folder: one deleted the other's, which failed
    (FileNotFoundError), and the cache could be left stamped but empty."""
    path = write(tmp_path / "train.tsv", ROWS)
    model = tmp_path / "model"
    BertForSequenceClassification(tiny_bert_config(num_labels=2, id2label={0: "neg", 1: "pos"},
                                                   label2id={"neg": 0, "pos": 1})).save_pretrained(model)
    real_tokenizer.save_pretrained(model)
    builds = tmp_path / "builds.txt"
    real_build = cache_module._build

    def slow_counted_build(*args, **kwargs):
        with open(builds, "a") as counter:
            counter.write("built\n")
        time.sleep(1.0)  # both processes are inside their build at once, unless one waits for the other
        return real_build(*args, **kwargs)
    monkeypatch.setattr(cache_module, "_build", slow_counted_build)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    processes = [_build_in_another_process(path, real_tokenizer, tmp_path / "cache", log) for log in logs]
    for process, log in zip(processes, logs):
        process.join(60)
        assert process.exitcode == 0, log.read_text()[-3000:]
    assert builds.read_text() == "built\n"
    # a third run reads what the first built: nothing is tokenised again
    result = tinybert_cli("evaluate", "--model", model, "--data", path, "--cache-dir", tmp_path / "cache",
                          "--no-latency")
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"examples +50\n", result.stdout) and "tokenised" not in result.stderr
    assert builds.read_text() == "built\n"


@pytest.mark.parametrize("damage", ["cut short", "deleted"])
@pytest.mark.parametrize("kind", ["token cache", "corpus cache"])
def test_a_cache_with_a_file_cut_short_or_missing_is_rebuilt_and_says_so(tmp_path, real_tokenizer, caplog, kind,
                                                                          damage):
    path = write(tmp_path / "train.tsv", ROWS)
    if kind == "token cache":
        def build():
            cache = _cache(path, real_tokenizer, tmp_path)
            return cache.directory / "input_ids.bin", [cache[i]["input_ids"] for i in range(len(cache))]
    else:
        def build():
            cache = build_corpus_cache([path], real_tokenizer, 16, tmp_path / "corpus", show_progress=False)
            return cache.tokens_path, [cache[i]["input_ids"] for i in range(len(cache))]
    victim, examples = build()
    size = victim.stat().st_size
    if damage == "deleted":
        victim.unlink()
    else:
        os.truncate(victim, size // 2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tinybert"):
        rebuilt, again = build()
    problem = "is missing" if damage == "deleted" else f"has {size // 2:,} bytes, {size:,} when built"
    assert f"fails its integrity check ({victim.name} {problem}): rebuilding it" in caplog.text
    assert rebuilt.stat().st_size == size and again == examples


def test_left_and_right_truncation_get_caches_of_their_own(tmp_path, real_tokenizer):
    """The cache's key left out the tokenizer's truncation side: a tokenizer that cuts long texts
    on the left read the cache of one that cuts them on the right."""
    words = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
    path = write(tmp_path / "train.tsv", f"{words} seventeen eighteen\t1\nshort\t0\n")
    left = copy.deepcopy(real_tokenizer)
    left.truncation_side = "left"
    kept = {side: real_tokenizer.decode(_cache(path, tokenizer, tmp_path)[0]["input_ids"], skip_special_tokens=True)
            for side, tokenizer in (("right", real_tokenizer), ("left", left))}
    assert kept == {"right": "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
                    "left": "five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
                            "seventeen eighteen"}


def test_a_staged_directory_is_readable_as_any_other_and_spares_the_users_folders(tmp_path):
    """Staging folders were made by mkdtemp, private to the user (0700), and became the cache or
    converted model itself; stale-folder clean-up took any sibling named TARGET.old-*."""
    from tinybert.artifacts import staged_directory
    target = tmp_path / "clean"
    (tmp_path / "clean.old-2024").mkdir()  # the user's own
    previous = os.umask(0o022)
    try:
        with staged_directory(target) as staging:
            (staging / "weights.bin").write_bytes(b"x")
    finally:
        os.umask(previous)
    assert (target / "weights.bin").read_bytes() == b"x"
    assert target.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "clean.old-2024").is_dir()


def test_a_reader_whose_cache_another_run_rebuilt_stops_instead_of_reading_its_rows(tmp_path, real_tokenizer):
    path = write(tmp_path / "train.tsv", ROWS)
    reader = _cache(path, real_tokenizer, tmp_path)  # opens its files at its first row (in each loader worker)
    path.write_text(ROWS.replace("fine", "great"))  # edited, and read by another run: rebuilt where it was
    other = _cache(path, real_tokenizer, tmp_path)
    assert other.directory == reader.directory
    with pytest.raises(InputError, match="rebuilt by another run from other inputs"):
        reader[0]
    old = _cache(write(tmp_path / "old.tsv", ROWS), real_tokenizer, tmp_path)
    assert other[1]["input_ids"] != old[1]["input_ids"]  # what the reader would have read as its row: the new text


def test_files_read_with_and_without_skipping_bad_lines_get_caches_of_their_own(tmp_path, real_tokenizer):
    path = write(tmp_path / "train.tsv", ROWS)
    strict, lenient = _cache(path, real_tokenizer, tmp_path), _cache(path, real_tokenizer, tmp_path, skip_bad_lines=True)
    assert strict.directory != lenient.directory
    assert strict[0] == lenient[0]  # both still readable: neither replaced the other


def test_a_cache_no_longer_used_closes_its_files(tmp_path, real_tokenizer):
    import gc
    path = write(tmp_path / "train.tsv", ROWS)
    _cache(path, real_tokenizer, tmp_path)[0]  # built, then read once more below
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):  # e.g. one distillation after another in a notebook
        cache = _cache(path, real_tokenizer, tmp_path)
        view = cache.first(10)
        assert view[0] == cache[0]
        del cache, view
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before


def test_caches_read_before_go_to_a_process_started_afresh(tmp_path, real_tokenizer):
    """DataLoader workers under spawn (macOS's default) get the dataset pickled: open files stay behind."""
    import pickle
    path = write(tmp_path / "train.tsv", ROWS)
    cache = _cache(path, real_tokenizer, tmp_path)
    corpus = build_corpus_cache([path], real_tokenizer, 16, tmp_path / "corpus", show_progress=False)
    for dataset in (cache, corpus):
        first = dataset[0]  # opens its files here
        assert pickle.loads(pickle.dumps(dataset))[0] == first
