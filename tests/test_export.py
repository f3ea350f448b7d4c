import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from conftest import tiny_bert_config, write
from tinybert.inference.export import INT8_FILE, export_onnx
from tinybert.inference.runners import ONNX_FILE, OnnxClassifier
from tinybert.inference.predict import predict_file

LABELS = {"num_labels": 3, "id2label": {0: "neg", 1: "neu", 2: "pos"}, "label2id": {"neg": 0, "neu": 1, "pos": 2}}


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, real_tokenizer):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("classifier")
    config = tiny_bert_config(hidden_size=64, intermediate_size=128, **LABELS)
    BertForSequenceClassification(config).save_pretrained(path)
    real_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dev_file(tmp_path_factory):
    words = ["good", "bad", "film", "plot", "dull", "warm", "the", "a", "really", "acting"]
    rows = "".join(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 20)) + f"\t{['neg', 'neu', 'pos'][i % 3]}\n"
                   for i in range(120))
    return write(tmp_path_factory.mktemp("data") / "dev.tsv", "sentence\tlabel\n" + rows)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, classifier_dir, dev_file):
    output = tmp_path_factory.mktemp("export")
    return output, export_onnx(classifier_dir, output, int8=True, data=dev_file, max_length=32, show_progress=False)


def test_fp32_matches_pytorch_at_any_batch_and_length(exported, classifier_dir, real_tokenizer):
    output, results = exported
    assert results["fp32_parity_passed"] and results["fp32_max_abs_logit_diff"] <= 1e-3
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    session = OnnxClassifier(output / ONNX_FILE)
    # batch and length unlike the export's sample, with padding inside the batch
    texts = ["good", "a really dull film with bad acting and a plot", "warm", "the the the"]
    batch = real_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = model(**batch).logits.numpy()
    np.testing.assert_allclose(session(**{k: v.numpy() for k, v in batch.items()}).logits.numpy(), expected, atol=1e-4)


def test_int8_is_smaller_and_within_one_point(exported):
    output, results = exported
    assert (output / INT8_FILE).stat().st_size < 0.5 * (output / ONNX_FILE).stat().st_size
    assert results["int8_metric"] == "accuracy"
    assert abs(results["int8_metric_drop_points"]) == pytest.approx(
        100 * abs(results["pytorch_metric_value"] - results["int8_metric_value"]))
    assert results["int8_parity_passed"] == (results["int8_metric_drop_points"] <= 1.0)
    assert json.loads((output / "export.json").read_text()) == results


def test_predict_gives_the_same_labels_from_pytorch_and_onnx(tmp_path, exported, classifier_dir):
    output, _ = exported
    texts = write(tmp_path / "new.txt", "good warm film\na dull plot\nthe acting\n")
    predict_file(classifier_dir, texts, tmp_path / "torch.jsonl", show_progress=False)
    predict_file(output, texts, tmp_path / "onnx.jsonl", show_progress=False)
    from_torch = [json.loads(line) for line in (tmp_path / "torch.jsonl").read_text().splitlines()]
    from_onnx = [json.loads(line) for line in (tmp_path / "onnx.jsonl").read_text().splitlines()]
    assert [r["text"] for r in from_torch] == ["good warm film", "a dull plot", "the acting"]
    assert [r["label"] for r in from_torch] == [r["label"] for r in from_onnx]
    for a, b in zip(from_torch, from_onnx):
        assert set(a["probabilities"]) == {"neg", "neu", "pos"}
        assert sum(a["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)
        assert a["label"] == max(a["probabilities"], key=a["probabilities"].get)


def test_predict_cli_writes_tsv_and_ignores_labels(tmp_path, exported, dev_file, tinybert_cli):
    output, _ = exported
    result = tinybert_cli("predict", "--model", output / INT8_FILE, "--input", dev_file, "--output", tmp_path / "p.tsv")
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "p.tsv").read_text().splitlines()
    assert lines[0] == "text\tlabel\tp_neg\tp_neu\tp_pos" and len(lines) == 121
    assert all(line.split("\t")[1] in ("neg", "neu", "pos") for line in lines[1:])


def test_export_cli_reports_and_refuses_a_bare_encoder(tmp_path, tiny_model_dir, tinybert_cli):
    result = tinybert_cli("export", "--model", tiny_model_dir, "--output", tmp_path / "out")
    assert result.returncode == 2 and "no task head" in result.stderr and "Traceback" not in result.stderr
