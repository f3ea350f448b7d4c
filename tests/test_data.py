import json
import logging

import pytest

from conftest import shared_dataset, write
from tinybert.data import LabelSpace, encode, eval_loader, read_task_file, train_loader
from tinybert.errors import InputError


# ---------------------------------------------------------------------------------- formats

def test_fork_format_single_and_pairs(tmp_path):
    single = read_task_file(write(tmp_path / "a.txt", "good film\t1\nbad film\t0\n"))
    assert single.format == "fork"
    assert [(e.text_a, e.text_b, e.label) for e in single.examples] == [("good film", None, "1"), ("bad film", None, "0")]
    pairs = read_task_file(write(tmp_path / "b.txt", "a cat\ta dog\t0\nx\ty\t1\n"))
    assert [(e.text_a, e.text_b, e.label) for e in pairs.examples] == [("a cat", "a dog", "0"), ("x", "y", "1")]
    assert pairs.has_pairs and not single.has_pairs


def test_glue_tsv_picks_columns_by_name(tmp_path):
    path = write(tmp_path / "rte.tsv", "idx\tsentence1\tsentence2\tlabel\n0\tA man runs.\tA person moves.\tentailment\n")
    data = read_task_file(path)
    assert (data.text_column, data.pair_column, data.label_column) == ("sentence1", "sentence2", "label")
    assert (data.examples[0].text_a, data.examples[0].text_b, data.examples[0].label) == \
        ("A man runs.", "A person moves.", "entailment")


def test_question_sentence_header_makes_pairs(tmp_path):
    data = read_task_file(write(tmp_path / "qnli.tsv", "question\tsentence\tlabel\nwho?\tme.\tyes\n"))
    assert (data.text_column, data.pair_column) == ("question", "sentence")


def test_user_named_columns(tmp_path):
    path = write(tmp_path / "x.tsv", "review_text\tstars\tother\ngreat\t5\tz\nawful\t1\tz\n")
    data = read_task_file(path, text_column="review_text", label_column="stars")
    assert [(e.text_a, e.label) for e in data.examples] == [("great", "5"), ("awful", "1")]
    with pytest.raises(InputError, match="no column named 'nope'"):
        read_task_file(path, text_column="nope", label_column="stars")


def test_csv_with_quotes(tmp_path):
    path = write(tmp_path / "d.csv", 'text,label\n"hello, world",pos\n"she said ""no""",neg\n')
    data = read_task_file(path)
    assert data.format == "csv"
    assert [(e.text_a, e.label) for e in data.examples] == [("hello, world", "pos"), ('she said "no"', "neg")]


def test_jsonl(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "score": 4.5}, {"sentence1": "c", "sentence2": "d", "score": 0}]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data = read_task_file(path)
    assert [(e.text_a, e.text_b, e.label) for e in data.examples] == [("a", "b", "4.5"), ("c", "d", "0")]
    assert LabelSpace.infer(data).is_regression


def test_crlf_bom_and_trailing_blank_lines(tmp_path):
    path = write(tmp_path / "d.tsv", "\ufeffsentence\tlabel\r\nnice\t1\r\n\r\n\r\n")
    data = read_task_file(path)
    assert [(e.text_a, e.label) for e in data.examples] == [("nice", "1")]


# ----------------------------------------------------------------------------------- labels

def test_label_kinds():
    from tinybert.data import Example, TaskData

    def space(labels):
        return LabelSpace.infer(TaskData("f", [Example("t", None, v, i) for i, v in enumerate(labels)], "fork"))

    ints = space(["10", "2", "2", "0"])
    assert ints.kind == "classification" and ints.names == ["0", "2", "10"]
    assert space(["pos", "neg"]).names == ["neg", "pos"]
    assert space(["3.8", "5.000", "0"]).is_regression
    assert ints.config_fields()["id2label"] == {0: "0", 1: "2", 2: "10"}
    assert ints.encode(Example("t", None, "10", 1), "f") == 2
    with pytest.raises(InputError, match=r"f, line 7: unknown label '3'"):
        ints.encode(Example("t", None, "3", 7), "f")


# ------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    with pytest.raises(InputError, match="the file is empty"):
        read_task_file(write(tmp_path / "e.tsv", content))


def test_missing_label_column(tmp_path):
    with pytest.raises(InputError) as caught:
        read_task_file(write(tmp_path / "d.tsv", "sentence\tauthor\nhi\tme\n"))
    message = str(caught.value)
    assert "d.tsv, line 1: no label column among sentence, author" in message
    assert "--label-column" in message


def test_wrong_field_count_is_reported_with_line_numbers(tmp_path):
    path = write(tmp_path / "d.tsv", "sentence\tlabel\nok\t1\nbroken line without label\nalso\t0\textra\nfine\t0\n")
    with pytest.raises(InputError) as caught:
        read_task_file(path)
    message = str(caught.value)
    assert "2 malformed line(s) (lines 3, 4)" in message and "--skip-bad-lines" in message
    data = read_task_file(path, skip_bad_lines=True)
    assert [e.text_a for e in data.examples] == ["ok", "fine"]
    assert data.skipped_lines == [3, 4]


def test_non_utf8_names_line_and_fix(tmp_path):
    path = write(tmp_path / "d.tsv", "sentence\tlabel\nfine\t1\ncaf\xe9\t0\n", encoding="latin-1")
    with pytest.raises(InputError, match=r"d.tsv, line 3: not valid UTF-8 .*\n  fix: convert the file to UTF-8"):
        read_task_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_task_file(tmp_path / "nope.tsv")


def test_truncation_warns_once_and_counts_exactly(tmp_path, real_tokenizer, caplog):
    long = " ".join(["word"] * 50)
    exactly = " ".join(["word"] * 14)  # 14 + [CLS] + [SEP] = 16 tokens: at the limit, not cut
    data = read_task_file(write(tmp_path / "d.txt", f"{long}\t1\n{exactly}\t0\nshort\t0\n{long}\t1\n"))
    with caplog.at_level(logging.WARNING):
        encoded = encode(data, real_tokenizer, 16, LabelSpace.infer(data), show_progress=False)
    assert encoded.truncated == 2
    assert max(encoded.lengths) == 16
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 of 4 examples are longer than 16 tokens" in warnings[0].getMessage()


# ----------------------------------------------------------------------------- real data

@pytest.mark.parametrize("relative,count,kind,pairs,num_labels", [
    ("sst2/train.tsv", 67349, "classification", False, 2),
    ("sst2/dev.tsv", 872, "classification", False, 2),
    ("sst2/train_1k.tsv", 1000, "classification", False, 2),
    ("rte/train.tsv", 2490, "classification", True, 2),
    ("rte/dev.tsv", 277, "classification", True, 2),
    ("cola/train.tsv", 8551, "classification", False, 2),
    ("cola/dev_ood.tsv", 516, "classification", False, 2),
    ("stsb/train.tsv", 4249, "regression", True, 1),
    ("stsb/dev.tsv", 1500, "regression", True, 1),
    ("trec/train.tsv", 5452, "classification", False, 6),
    ("trec/test.tsv", 500, "classification", False, 6),
    ("lisennlp/eval.txt", 3000, "classification", False, 2),
])
def test_every_shared_dataset_loads(relative, count, kind, pairs, num_labels):
    data = read_task_file(shared_dataset(relative))
    space = LabelSpace.infer(data)
    assert (len(data), space.kind, data.has_pairs, space.num_labels) == (count, kind, pairs, num_labels)


def test_fork_chinese_file_reports_its_two_malformed_lines():
    path = shared_dataset("lisennlp/train.txt")
    with pytest.raises(InputError) as caught:
        read_task_file(path)
    assert "2 malformed line(s) (lines 9088, 9914)" in str(caught.value)
    data = read_task_file(path, skip_bad_lines=True)
    assert len(data) == 11296 - 2 and data.skipped_lines == [9088, 9914]
    assert LabelSpace.infer(data).names == ["0", "1"]


# ------------------------------------------------------------------------------ batching

def test_batches_are_length_grouped_and_dynamically_padded(tmp_path, real_tokenizer):
    lines = [" ".join(["word"] * n) + f"\t{n % 2}" for n in list(range(1, 60)) * 4]
    data = read_task_file(write(tmp_path / "d.txt", "\n".join(lines) + "\n"))
    encoded = encode(data, real_tokenizer, 128, LabelSpace.infer(data), show_progress=False)
    loader = train_loader(encoded, real_tokenizer, batch_size=8, seed=1)
    padded = real = 0
    seen = []
    for batch in loader:
        padded += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum())
        seen += batch["labels"].tolist()
    assert len(seen) == len(lines)
    assert real / padded > 0.85  # random batches of lengths 3..61 would be ~40% padding
    first_epoch = [b["input_ids"].shape for b in loader]
    loader.sampler.set_epoch(1)
    assert [b["input_ids"].shape for b in loader] != first_epoch  # reshuffled per epoch
    loader.sampler.set_epoch(0)
    assert [b["input_ids"].shape for b in loader] == first_epoch  # deterministic per epoch

    ordered, order = eval_loader(encoded, real_tokenizer, batch_size=16)
    widths = [b["input_ids"].shape[1] for b in ordered]
    assert widths == sorted(widths) and sorted(order) == list(range(len(lines)))
