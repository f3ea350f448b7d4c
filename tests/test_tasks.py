"""Token classification (NER) and extractive QA: reading, sub-word labels, doc-stride windows,
metrics against hand-computed cases, augmentation that keeps labels aligned, and every command
end to end on tiny models."""

import copy
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertForTokenClassification

from conftest import tiny_bert_config, write
from tinybert.augment import AugmentConfig, augment_file
from tinybert.cli import main
from tinybert.data import DataOptions
from tinybert.data.labels import LabelSpace
from tinybert.data.squad import AnswerFinder, Question, read_questions, windows
from tinybert.data.batching import IGNORED_LABEL as IGNORED
from tinybert.data.tagging import read_sentences, tag_pieces
from tinybert.data.tasks import detect_task, task_data
from tinybert.distillation.task import DistillConfig, distill
from tinybert.errors import InputError
from tinybert.evaluation.measure import evaluate
from tinybert.inference.export import export_onnx
from tinybert.finetune import FinetuneConfig, finetune
from tinybert.evaluation.metrics import TagMetrics, normalize_answer, squad_scores
from tinybert.evaluation.spans import entities
from tinybert.inference.predict import predict_file
from tinybert.resources import demo_teacher_dir, demo_word_vectors
from tinybert.training import TrainingConfig

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
to TO B-VP O
boycott VB I-VP O
British JJ B-NP B-MISC
lamb NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
unflinchingly RB B-ADVP O
visited VBD B-VP O
Brussels NNP B-NP B-LOC
. . O O

"""
TAGS = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER"]
CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region "
           "in France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, "
           "under their leader Rollo, agreed to swear fealty to King Charles III of West Francia. Through "
           "generations of assimilation and mixing with the native Frankish and Roman-Gaulish populations, their "
           "descendants would gradually merge with the Carolingian-based cultures of West Francia.")
QUESTIONS = [("In what country is Normandy located?", "France"),
             ("Who was the Norse leader?", "Rollo"),
             ("What culture did the descendants merge with?", "Carolingian-based cultures"),
             ("From which countries did the Norse originate?", "Denmark, Iceland and Norway")]


def squad_document(questions=QUESTIONS, context=CONTEXT, repeat: int = 1) -> dict:
    qas = [{"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
           for i, (q, a) in enumerate(questions * repeat)]
    return {"version": "1.1", "data": [{"title": "Normans", "paragraphs": [{"context": context, "qas": qas}]}]}


@pytest.fixture
def conll_file(tmp_path):
    return write(tmp_path / "train.txt", CONLL)


@pytest.fixture
def squad_file(tmp_path):
    return write(tmp_path / "train.json", json.dumps(squad_document()))


def test_the_task_is_read_from_the_file(tmp_path, conll_file, squad_file):
    options = DataOptions()
    assert detect_task(conll_file, options) == "token"
    assert detect_task(squad_file, options) == "qa"
    assert detect_task(write(tmp_path / "t.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n'), options) == "token"
    assert detect_task(write(tmp_path / "t.json", '{"tokens": ["a"], "tags": ["O"]}\n'), options) == "token"
    tagged_word = '{"tokens": ["the", "paragraphs"], "tags": ["O", "O"]}\n'
    assert detect_task(write(tmp_path / "p.json", tagged_word), options) == "token"
    assert detect_task(write(tmp_path / "q.jsonl", '{"question": "q?", "context": "c"}\n'), options) == "qa"
    assert detect_task(write(tmp_path / "s.tsv", "sentence\tlabel\nB-PER film\t1\n"), options) == "sequence"
    assert detect_task(write(tmp_path / "plain.txt", "a good film\t1\n"), options) == "sequence"
    assert detect_task(conll_file, DataOptions(task="sequence")) == "sequence"


def test_texts_without_a_label_column_and_a_blank_line_are_no_tagging_file(tmp_path):
    # one text a line, no spaces in them (Chinese), a blank line among them: texts, unless a tagger reads them
    texts = write(tmp_path / "texts.txt", "这部电影很好看\n情节很无聊\n\n演员很出色\n")
    assert detect_task(texts, DataOptions()) == "sequence"
    assert detect_task(texts, DataOptions(), expected="sequence") == "sequence"
    # bare words in sentences: a tagger's unlabelled text
    words = write(tmp_path / "words.txt", "EU\nrejects\nGerman\ncall\n\nPeter\nBlackburn\n")
    assert detect_task(words, DataOptions(), expected="token") == "token"


def test_conll_sentences_skip_docstart_and_split_on_blank_lines(conll_file):
    sentences = list(read_sentences(conll_file))
    assert [s.words[:2] for s in sentences] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert sentences[1].tags == ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]
    assert [s.line for s in sentences] == [3, 13]


def test_a_words_tag_goes_on_its_first_piece_only(real_tokenizer):
    words = ["Peter", "unflinchingly", "visited", "Brussels"]
    encoded = tag_pieces(real_tokenizer, [words], [[4, 0, 0, 1]], 32)
    pieces = real_tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    assert pieces[:2] == ["[CLS]", "peter"] and pieces[-1] == "[SEP]"
    several = [len(real_tokenizer.tokenize(word)) for word in words]
    assert several[1] > 2  # the case the rule is for
    expected = [IGNORED]
    for tag, count in zip([4, 0, 0, 1], several):
        expected += [tag] + [IGNORED] * (count - 1)
    assert encoded["labels"][0] == expected + [IGNORED]


def test_doc_stride_windows_map_every_answer_back_exactly(real_tokenizer):
    questions = [Question(f"q{i}", q, CONTEXT, [{"text": a, "answer_start": CONTEXT.index(a)}])
                 for i, (q, a) in enumerate(QUESTIONS)]
    columns = windows(real_tokenizer, questions, max_length=48, stride=16)
    per_question = np.bincount(columns["example"])
    assert (per_question > 2).all()  # the context needs several windows
    found = set()
    for index, example in enumerate(columns["example"]):
        start, end = columns["start_positions"][index], columns["end_positions"][index]
        if start == 0:
            assert end == 0  # not in this window: [CLS]
            continue
        first, last = columns["offset_start"][index][start], columns["offset_end"][index][end]
        assert CONTEXT[first:last] == QUESTIONS[example][1]
        found.add(example)
    assert found == set(range(len(QUESTIONS)))
    # windows overlap by the stride: consecutive windows of a question share context characters
    starts = [min(s for s in columns["offset_start"][i] if s >= 0) for i in range(per_question[0])]
    ends = [max(columns["offset_end"][i]) for i in range(per_question[0])]
    assert all(starts[i + 1] < ends[i] for i in range(len(starts) - 1))


def test_the_best_span_over_windows_is_the_answer_text(real_tokenizer):
    questions = [Question("q", QUESTIONS[1][0], CONTEXT, [{"text": "Rollo", "answer_start": CONTEXT.index("Rollo")}])]
    columns = windows(real_tokenizer, questions, max_length=48, stride=16)
    width = max(len(ids) for ids in columns["input_ids"])
    finder = AnswerFinder()
    for index in range(len(columns["input_ids"])):
        starts, ends = np.zeros((1, width)), np.zeros((1, width))
        if columns["start_positions"][index]:
            starts[0, columns["start_positions"][index]] = 5.0
            ends[0, columns["end_positions"][index]] = 5.0
        pad = width - len(columns["offset_start"][index])
        finder.add(starts, ends, np.array([columns["offset_start"][index] + [-1] * pad]),
                   np.array([columns["offset_end"][index] + [-1] * pad]), np.array([0]))
    text, score, first = finder.answers([{"context": CONTEXT}])[0]
    assert (text, first, score) == ("Rollo", CONTEXT.index("Rollo"), 10.0)


def test_entity_metrics_match_a_hand_count():
    space = LabelSpace.of_tags(["O", "B-PER", "I-PER", "B-LOC", "B-ORG"])
    code = {name: i for i, name in enumerate(space.names)}
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    guess = [["B-PER", "I-PER", "O", "B-ORG"], ["I-PER", "O"]]  # one of 3 right; an I- alone is an entity (PER)
    metrics = TagMetrics(space)
    labels = torch.tensor([[IGNORED] + [code[t] for t in gold[0]], [IGNORED, code["B-ORG"], IGNORED, code["O"], IGNORED]])
    logits = np.zeros((2, 5, len(space.names)))
    for position, tag in zip([1, 2, 3, 4], guess[0]):
        logits[0, position, code[tag]] = 1
    for position, tag in zip([1, 3], guess[1]):
        logits[1, position, code[tag]] = 1
    metrics.add_batch({"logits": logits}, {"labels": labels})
    result = metrics.result()
    assert result["precision"] == pytest.approx(1 / 3)  # 3 predicted entities, 1 right
    assert result["recall"] == pytest.approx(1 / 3)  # 3 gold entities
    assert result["f1"] == pytest.approx(1 / 3)
    # strict IOB2: the lone I-PER is no entity, so 2 predicted, 1 right
    assert result["f1_strict"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))


def test_entity_f1_is_conllevals_with_strict_iob2_beside_it_and_predict_decodes_alike():
    """Entities were scored in seqeval's strict IOB2 mode only, unlike conlleval and run_ner,
    while predict decoded them the default way."""
    space = LabelSpace.of_tags(["O", "B-PER", "I-PER", "B-LOC"])
    code = {name: i for i, name in enumerate(space.names)}
    gold, guess = ["B-PER", "I-PER", "O", "B-LOC"], ["I-PER", "I-PER", "O", "B-LOC"]
    logits = np.zeros((1, 4, len(space.names)))
    logits[0, range(4), [code[tag] for tag in guess]] = 1
    metrics = TagMetrics(space)
    metrics.add_batch({"logits": logits}, {"labels": torch.tensor([[code[tag] for tag in gold]])})
    result = metrics.result()
    assert result["f1"] == 1.0 and result["f1_strict"] == pytest.approx(2 / 3)
    text = "Peter Blackburn in Brussels"
    words = [(0, 5), (6, 15), (16, 18), (19, 27)]
    assert [(e["type"], e["text"]) for e in entities(words, guess, [0.5] * 4, text)] == [
        ("PER", "Peter Blackburn"), ("LOC", "Brussels")]  # the entities the metric counted


def test_squad_scores_use_the_official_normalisation():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    predictions, references = ["the cat", "big cat", "dog", ""], [["Cat"], ["a cat", "big dog"], ["cat"], [""]]
    scores = squad_scores(predictions, references, unanswerable=True)
    # SQuAD 2.0: exact 1, 0, 0, 1 (no answer where there is none); f1 1, max(2/3, 1/2), 0, 1
    assert scores["exact_match"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)


def test_an_answer_that_normalises_to_nothing_has_f1_zero_as_squad_v1_scores_it():
    """F1 was 1 where prediction and reference both normalise to nothing; the official v1.1 script
    (which counts common tokens) gives 0, while exact match stays 1."""
    assert squad_scores(["The"], [["a"]]) == {"f1": 0.0, "exact_match": 1.0}
    assert squad_scores(["the cat", ""], [["Cat"], [""]]) == {"f1": 0.5, "exact_match": 1.0}


def test_ner_augmentation_replaces_only_words_tagged_o(tmp_path, conll_file):
    output = tmp_path / "aug.txt"
    augment_file(conll_file, output, word_vectors=demo_word_vectors(),
                 config=AugmentConfig(variants=4, probability=1.0), show_progress=False)
    original = list(read_sentences(conll_file))
    augmented = list(read_sentences(output))
    assert len(augmented) > len(original)
    changed = 0
    for sentence in augmented:
        source = next(s for s in original if s.tags == sentence.tags and len(s.words) == len(sentence.words)
                      and all(a == b for a, b, t in zip(s.words, sentence.words, s.tags) if t != "O"))
        assert all(a == b for a, b, t in zip(source.words, sentence.words, source.tags) if t != "O")
        changed += sentence.words != source.words
    assert changed  # O words did change
    assert output.read_text().split("\n")[0].split()[1:] == ["NNP", "B-NP", "B-ORG"]  # middle columns kept
    # each variant follows a `-DOCSTART- augmented` line; the token cache keeps the mark
    assert [s.words for s in augmented if not s.augmented] == [s.words for s in original]
    assert output.read_text().count("-DOCSTART- augmented\n") == len(augmented) - len(original)
    cache = task_data("token", output, AutoTokenizer.from_pretrained(demo_teacher_dir()), 32, DataOptions(),
                      tmp_path / "cache")
    assert cache.origins() == {"original": 2, "augmented": len(augmented) - 2, "unlabeled": 0}


def test_qa_augmentation_keeps_answers_and_questions(tmp_path, squad_file):
    output = tmp_path / "aug.json"
    augment_file(squad_file, output, word_vectors=demo_word_vectors(),
                 config=AugmentConfig(variants=3, probability=1.0), show_progress=False)
    questions = read_questions(output)
    assert len(questions) > len(QUESTIONS) and not any(q.problem for q in questions)
    asked = {q: a for q, a in QUESTIONS}
    for question in questions:
        answer = question.answers[0]
        assert question.context[answer["answer_start"]:][:len(answer["text"])] == asked[question.question]
    assert any(q.context != CONTEXT for q in questions)
    assert [q.id for q in questions if not q.augmented] == ["q0", "q1", "q2", "q3"]
    assert all("-aug" in q.id for q in questions if q.augmented)


@pytest.mark.parametrize("name, content, suffix", [
    ("conll without tags", "EU\nrejects\n\n", ".txt"),
    ("conll with a bad tag", "EU NNP B-ORG\nrejects VBZ X-ORG\n", ".txt"),
    ("tags jsonl of another length", '{"tokens": ["a", "b"], "tags": ["O"]}\n', ".jsonl"),
    ("squad not json", '{"data": [', ".json"),
    ("squad answer elsewhere", json.dumps({"data": [{"title": "t", "paragraphs": [
        {"context": "a b c", "qas": [{"id": "1", "question": "q?", "answers": [{"text": "b", "answer_start": 0}]}]}
    ]}]}), ".json"),
    ("squad without answers", json.dumps({"data": [{"title": "t", "paragraphs": [
        {"context": "a b c", "qas": [{"id": "1", "question": "q?", "answers": []}]}]}]}), ".json"),
    ("squad answers in columns", json.dumps({"data": [{"title": "t", "paragraphs": [
        {"context": "a b c", "qas": [{"id": "1", "question": "q?", "answers": {"text": ["b"], "answer_start": [2]}}]}
    ]}]}), ".json"),
    ("squad article not an object", json.dumps({"data": ["a b c"]}), ".json"),
    ("squad empty answer", json.dumps({"data": [{"title": "t", "paragraphs": [
        {"context": "a b c", "qas": [{"id": "1", "question": "q?", "answers": [{"text": "", "answer_start": 1}]}]}
    ]}]}), ".json"),
    ("squad jsonl not json", '{"question": "q?", "context": "a b", "answers": []}\n{"question": \n', ".jsonl"),
])
def test_bad_task_files_stop_with_one_message(tmp_path, capsys, tiny_model_dir, name, content, suffix):
    path = write(tmp_path / f"bad{suffix}", content)
    task = "qa" if name.startswith("squad") else "token"
    code = main(["finetune", "--model", str(tiny_model_dir), "--train", str(path), "--output", str(tmp_path / "out"),
                 "--task", task])
    error = capsys.readouterr().err
    assert code == 2, error[-2000:]
    assert "Traceback" not in error and error.count("error: ") == 1 and str(path) in error, error[-2000:]
    # nothing written but the empty lock file of the cache that was not built
    assert not (tmp_path / "out").exists() or not any(p.is_file() and p.suffix != ".lock"
                                                      for p in (tmp_path / "out").rglob("*"))


def _training(**settings):
    return TrainingConfig(**{"epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "seed": 0, **settings})


@pytest.mark.parametrize("task", ["token", "qa"])
def test_every_command_end_to_end_on_tiny_models(tmp_path, tiny_model_dir, conll_file, task):
    train = conll_file if task == "token" else write(tmp_path / "train.json", json.dumps(squad_document(repeat=2)))
    teacher = tmp_path / "teacher"
    summary = finetune(tiny_model_dir, train, teacher, eval_path=train, show_progress=False,
                       config=FinetuneConfig(training=_training(epochs=3), max_length=64))
    metric = "f1"
    assert metric in summary["best"] and (task != "qa" or "exact_match" in summary["best"])
    config = json.loads((teacher / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification" if task == "token" else "BertForQuestionAnswering"]

    intermediate, student = tmp_path / "stage1", tmp_path / "stage2"
    distill(teacher, "unused", train, intermediate, show_progress=False,
            config=DistillConfig(stage="intermediate", init_from_teacher=True, layers=1, training=_training(),
                                 max_length=64))
    result = distill(teacher, str(intermediate), train, student, eval_path=train, show_progress=False,
                     config=DistillConfig(stage="prediction", training=_training(), max_length=64))
    assert np.isfinite(result["best"][metric])

    figures = evaluate(student, train, max_length=64, latency=False, show_progress=False,
                       data_options=DataOptions(cache_dir=str(tmp_path / "cache")))
    assert 0 <= figures[metric] <= 1

    exported = export_onnx(student, tmp_path / "onnx", int8=True, data=train, max_length=64, show_progress=False,
                           data_options=DataOptions(cache_dir=str(tmp_path / "cache")))
    assert exported["fp32_parity_passed"] and exported["fp32_max_abs_logit_diff"] <= 1e-3
    assert exported["int8_metric"] == metric

    predictions = tmp_path / "predictions.jsonl"
    for model in (student, tmp_path / "onnx"):  # PyTorch and ONNX predict the same
        predict_file(model, train, predictions, max_length=64, show_progress=False)
        records = [json.loads(line) for line in predictions.read_text().splitlines()]
        if task == "token":
            assert [r["text"] for r in records] == [" ".join(s.words) for s in read_sentences(conll_file)]
            for record in records:
                for entity in record["entities"]:
                    assert record["text"][entity["start"]:entity["end"]] == entity["text"]
        else:
            assert len(records) == 2 * len(QUESTIONS)
            for record in records:
                assert record["answer"] == "" or CONTEXT[record["start"]:].startswith(record["answer"])
        spans = [[(e["type"], e["start"], e["end"]) for e in r["entities"]] if task == "token" else
                 (r["answer"], r["start"]) for r in records]
        if model == student:
            from_pytorch = spans
    assert spans == from_pytorch


def test_token_classifier_predicts_entities_with_character_offsets(tmp_path, real_tokenizer):
    """A tagger made to call every word B-PER: entities are single words at their exact offsets."""
    space = LabelSpace.of_tags(["O", "B-PER", "I-PER"])
    torch.manual_seed(0)
    model = BertForTokenClassification(tiny_bert_config(**space.config_fields()))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    model.save_pretrained(tmp_path / "tagger")
    real_tokenizer.save_pretrained(tmp_path / "tagger")
    texts = write(tmp_path / "in.txt", "Peter  Blackburn unflinchingly left\n")
    predict_file(tmp_path / "tagger", texts, tmp_path / "out.jsonl", show_progress=False)
    record = json.loads((tmp_path / "out.jsonl").read_text())
    assert [(e["type"], e["start"], e["end"], e["text"]) for e in record["entities"]] == [
        ("PER", 0, 5, "Peter"), ("PER", 7, 16, "Blackburn"), ("PER", 17, 30, "unflinchingly"), ("PER", 31, 35, "left")]
    # bare words one per line, sentences between blank lines (CoNLL without tags): one text per sentence
    words = write(tmp_path / "words.txt", "Peter\nBlackburn\n\nleft\n")
    predict_file(tmp_path / "tagger", words, tmp_path / "words.jsonl", show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "words.jsonl").read_text().splitlines()]
    assert [[(e["start"], e["end"], e["text"]) for e in r["entities"]] for r in records] == [
        [(0, 5, "Peter"), (6, 15, "Blackburn")], [(0, 4, "left")]]


def test_qa_cache_counts_questions_and_windows(tmp_path, real_tokenizer, squad_file):
    cache = task_data("qa", squad_file, real_tokenizer, 48, DataOptions(doc_stride=16, cache_dir=str(tmp_path)))
    assert cache.meta["questions"] == len(QUESTIONS) and len(cache) > len(QUESTIONS)
    assert [e["answers"] for e in cache.examples()] == [[a] for _, a in QUESTIONS]
    row = cache[0]
    assert {"input_ids", "start_positions", "end_positions", "offset_start", "offset_end", "example"} <= set(row)


def test_a_bad_line_leaves_its_whole_sentence_out(tmp_path):
    path = write(tmp_path / "t.txt", "EU B-ORG\nrejects\nGerman B-MISC\ncall O\n\nPeter B-PER\n")
    sentences = list(read_sentences(path))
    assert [(s.words, s.problem is None) for s in sentences] == [([], False), (["Peter"], True)]
    assert sentences[0].line == 2


def test_a_skipped_variant_leaves_its_mark_behind(tmp_path, real_tokenizer):
    # an augmented variant with a bad line, then an original sentence: the original is no variant
    path = write(tmp_path / "t.txt", "-DOCSTART- augmented\n\nEU B-ORG\nrejects\n\nPeter B-PER\nBlackburn I-PER\n\n")
    sentences = list(read_sentences(path))
    assert [(s.words, s.problem is None, s.augmented) for s in sentences] == [
        ([], False, False), (["Peter", "Blackburn"], True, False)]
    cache = task_data("token", path, real_tokenizer, 32, DataOptions(skip_bad_lines=True), tmp_path / "cache",
                      show_progress=False)
    assert cache.origins() == {"original": 1, "augmented": 0, "unlabeled": 0}


def test_tab_separated_conll_is_token_classification_and_iobes_is_refused(tmp_path):
    assert detect_task(write(tmp_path / "t.txt", "EU\tNNP\tB-ORG\nrejects\tVBZ\tO\n\n"), DataOptions()) == "token"
    sentence = next(read_sentences(write(tmp_path / "s.txt", "EU S-ORG\n\n")))
    assert "IOB2" in sentence.problem  # seqeval's strict IOB2 scoring cannot read S-/E- tags


def test_a_question_longer_than_the_window_is_cut_not_fatal(real_tokenizer):
    question = Question("q", "why " * 300 + "?", CONTEXT, [{"text": "Rollo", "answer_start": CONTEXT.index("Rollo")}])
    columns = windows(real_tokenizer, [question], max_length=64, stride=16)
    assert all(len(ids) <= 64 for ids in columns["input_ids"])
    hits = [i for i, start in enumerate(columns["start_positions"]) if start]
    assert hits and all(CONTEXT[columns["offset_start"][i][columns["start_positions"][i]]:
                                columns["offset_end"][i][columns["end_positions"][i]]] == "Rollo" for i in hits)


def test_no_span_in_any_window_gives_an_empty_answer_without_a_score():
    finder = AnswerFinder()
    finder.add(np.zeros((1, 4)), np.zeros((1, 4)), np.full((1, 4), -1), np.full((1, 4), -1), np.array([0]))
    assert finder.answers([{"context": "x"}]) == [("", None, -1)]


def test_span_loss_stays_finite_below_temperature_one():
    from tinybert.distillation.losses import span_soft_cross_entropy
    logits = torch.randn(2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert torch.isfinite(span_soft_cross_entropy(logits, logits.flip(-1), mask, temperature=0.5))


def test_stage_two_tag_loss_counts_only_each_words_first_piece(monkeypatch):
    import tinybert.distillation.distillers as distillers
    model = BertForTokenClassification(tiny_bert_config(num_labels=3)).eval()
    seen = {}
    monkeypatch.setattr(distillers, "token_soft_cross_entropy",
                        lambda student, teacher, mask, temperature, weights: seen.setdefault("mask", mask) * 0.0
                        + student.sum())
    labels = torch.tensor([[IGNORED, 1, IGNORED, 0, IGNORED, IGNORED]])
    batch = {"input_ids": torch.tensor([[101, 7592, 2088, 2003, 102, 0]]), "attention_mask": torch.tensor([[1] * 5 + [0]]),
             "labels": labels}
    distillers.PredictionDistiller(model, model, task="token")(batch)
    assert seen["mask"].tolist() == [[False, True, False, True, False, False]]


def test_qa_caches_of_other_strides_live_side_by_side(tmp_path, real_tokenizer, squad_file):
    first = task_data("qa", squad_file, real_tokenizer, 48, DataOptions(doc_stride=8, cache_dir=str(tmp_path)))
    second = task_data("qa", squad_file, real_tokenizer, 48, DataOptions(doc_stride=16, cache_dir=str(tmp_path)))
    assert first.directory != second.directory and len(first) < len(second)  # more shared, more windows


def test_augmentation_reads_only_the_first_examples_when_told(tmp_path, conll_file, squad_file):
    augment_file(conll_file, tmp_path / "t.txt", word_vectors=demo_word_vectors(), show_progress=False,
                 config=AugmentConfig(variants=2, probability=1.0), data_options=DataOptions(max_examples=1))
    assert {tuple(s.tags) for s in read_sentences(tmp_path / "t.txt")} == {tuple(next(read_sentences(conll_file)).tags)}
    augment_file(squad_file, tmp_path / "q.json", word_vectors=demo_word_vectors(), show_progress=False,
                 config=AugmentConfig(variants=2, probability=1.0), data_options=DataOptions(max_examples=2))
    assert {q.question for q in read_questions(tmp_path / "q.json")} == {q for q, _ in QUESTIONS[:2]}


def test_predict_ignores_the_answers_a_file_gives(tmp_path, real_tokenizer):
    from transformers import BertForQuestionAnswering
    torch.manual_seed(0)
    BertForQuestionAnswering(tiny_bert_config()).save_pretrained(tmp_path / "qa")
    real_tokenizer.save_pretrained(tmp_path / "qa")
    document = squad_document()
    document["data"][0]["paragraphs"][0]["qas"][0]["answers"] = [{"text": "nowhere", "answer_start": 3}]
    questions = write(tmp_path / "q.json", json.dumps(document))
    assert predict_file(tmp_path / "qa", questions, tmp_path / "a.jsonl", show_progress=False) == len(QUESTIONS)


def test_a_window_too_small_for_a_question_is_one_message(real_tokenizer):
    question = Question("q", "why?", CONTEXT, [{"text": "Rollo", "answer_start": CONTEXT.index("Rollo")}])
    with pytest.raises(InputError, match="no room for a question"):
        windows(real_tokenizer, [question], max_length=12, stride=4)


def test_question_answering_refuses_a_tokenizer_that_pads_on_the_left(tmp_path, real_tokenizer, squad_file):
    left = copy.deepcopy(real_tokenizer)
    left.padding_side = "left"
    question = Question("q", "why?", CONTEXT, [{"text": "Rollo", "answer_start": CONTEXT.index("Rollo")}])
    with pytest.raises(InputError, match="pads on the right"):
        windows(left, [question], max_length=64, stride=16)
    options = DataOptions(cache_dir=str(tmp_path))
    task_data("qa", squad_file, real_tokenizer, 48, options)  # a cache the left-padding tokenizer would share
    with pytest.raises(InputError, match="pads on the right"):
        task_data("qa", squad_file, left, 48, options)


def test_a_qa_model_distilled_at_384_is_evaluated_at_384_by_a_bare_evaluate(tmp_path, real_tokenizer, tinybert_cli):
    """evaluate, predict and export used 128-token windows unless --max-length was repeated."""
    from transformers import BertForQuestionAnswering
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    BertForQuestionAnswering(tiny_bert_config(max_position_embeddings=512)).save_pretrained(teacher)
    real_tokenizer.save_pretrained(teacher)
    train = write(tmp_path / "train.json", json.dumps(squad_document()))
    common = ["--teacher", teacher, "--train", train, "--epochs", "1", "--batch-size", "4"]
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    done = tinybert_cli("distill", "--stage", "intermediate", *common, "--init-from-teacher", "--layers", "1",
                        "--max-length", "384", "--output", stage1)
    assert done.returncode == 0, done.stderr[-3000:]
    done = tinybert_cli("distill", "--stage", "prediction", *common, "--student", stage1, "--output", stage2)
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads((stage1 / "tinybert.json").read_text())
    assert (first["stage"], first["max_length"], first["started_from"]) == ("intermediate", 384, str(teacher))
    record = json.loads((stage2 / "tinybert.json").read_text())
    assert {key: record[key] for key in ("stage", "task", "labels", "max_length", "doc_stride", "teacher",
                                         "started_from")} == {
        "stage": "prediction", "task": "qa", "labels": None, "max_length": 384, "doc_stride": 128,
        "teacher": str(teacher), "started_from": str(stage1)}  # stage 2 took stage 1's length
    assert [step["stage"] for step in record["recipe"]] == ["intermediate", "prediction"]

    bare = tinybert_cli("evaluate", "--model", stage2, "--data", train)
    assert bare.returncode == 0, bare.stderr[-3000:]
    figures = dict(line.split(None, 1) for line in bare.stdout.splitlines())
    assert (figures["max_length"], figures["doc_stride"]) == ("384", "128")
    assert figures["examples"] == figures["questions"] == str(len(QUESTIONS))  # one 384-token window each

    narrow = tinybert_cli("evaluate", "--model", stage2, "--data", train, "--max-length", "64", "--no-latency")
    figures = dict(line.split(None, 1) for line in narrow.stdout.splitlines())
    assert figures["max_length"] == "64" and int(figures["examples"]) > len(QUESTIONS)  # the flag wins
    assert "recorded doc stride 128 does not fit windows of 64 tokens: using 16" in narrow.stderr

    export_onnx(stage2, tmp_path / "onnx", show_progress=False)  # predict from the export reads the record too
    assert json.loads((tmp_path / "onnx" / "tinybert.json").read_text()) == record
    # a model with no record exported to the same place leaves no record of another model there
    export_onnx(teacher, tmp_path / "onnx", latency=False, show_progress=False)
    assert not (tmp_path / "onnx" / "tinybert.json").exists()


def test_stage_1_reads_questions_in_the_windows_the_qa_teacher_was_trained_on(tmp_path, real_tokenizer):
    from transformers import BertForQuestionAnswering
    from tinybert.models.loading import save_model_dir
    from tinybert.models.record import model_record
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    # a teacher fine-tuned on 96-token windows with a stride of 40 (not the distillation defaults, 384 and 128)
    save_model_dir(BertForQuestionAnswering(tiny_bert_config()), real_tokenizer, teacher,
                   model_record("finetune", LabelSpace("qa", []), 96, 40))
    train = write(tmp_path / "train.json", json.dumps(squad_document()))
    config = DistillConfig(stage="intermediate", init_from_teacher=True, layers=1,
                           training=TrainingConfig(epochs=1, batch_size=4))
    distill(teacher, "unused", train, tmp_path / "stage1", config=config, show_progress=False)
    record = json.loads((tmp_path / "stage1" / "tinybert.json").read_text())
    assert (record["max_length"], record["doc_stride"]) == (96, 40)
    wider = DistillConfig(**{**config.__dict__, "max_length": 128})
    distill(teacher, "unused", train, tmp_path / "wider", config=wider, show_progress=False)  # the flag wins
    assert json.loads((tmp_path / "wider" / "tinybert.json").read_text())["max_length"] == 128


def test_an_explicit_doc_stride_that_does_not_fit_is_refused_not_clamped(tmp_path, real_tokenizer, squad_file):
    with pytest.raises(InputError, match="--doc-stride 64 does not fit windows of 128 tokens"):
        task_data("qa", squad_file, real_tokenizer, 128, DataOptions(doc_stride=64, cache_dir=str(tmp_path)))
    assert task_data("qa", squad_file, real_tokenizer, 128, DataOptions(cache_dir=str(tmp_path))).meta[
        "inputs"]["doc_stride"] == 32  # the default: 128, or a quarter of a window too small for it


def test_a_doc_stride_means_nothing_outside_qa_and_is_not_refused(tmp_path, tiny_model_dir, real_tokenizer):
    """`evaluate --max-length 64 --doc-stride 32` on a classifier was refused for a stride that
    does not fit the windows, although a classifier has no windows."""
    from tinybert.models.record import reading_settings
    length, options = reading_settings({}, 64, DataOptions(doc_stride=32), "sequence")
    assert length == 64 and options.doc_stride == 32
    with pytest.raises(InputError, match="--doc-stride 32 does not fit windows of 64 tokens"):
        reading_settings({}, 64, DataOptions(doc_stride=32), "qa")


def test_ner_predict_puts_tags_on_their_words_with_a_tokenizer_that_pads_on_the_left(tmp_path, real_tokenizer):
    """Tags were read at the positions of the unpadded text: in a batch padded on the left, a
    shorter text's words took the tags of padding and of their neighbours."""
    space = LabelSpace.of_tags(["O", "B-PER", "I-PER", "B-LOC"])
    torch.manual_seed(0)
    model = BertForTokenClassification(tiny_bert_config(**space.config_fields()))
    with torch.no_grad():  # no position embeddings: a word's output does not depend on where padding puts it
        model.bert.embeddings.position_embeddings.weight.zero_()
    left = copy.deepcopy(real_tokenizer)
    left.padding_side = "left"
    texts = write(tmp_path / "in.txt", "Peter Blackburn visited Brussels on Monday with his friends\nEU rejects it\n")
    found = {}
    for side, tokenizer in (("right", real_tokenizer), ("left", left)):
        model.save_pretrained(tmp_path / side)
        tokenizer.save_pretrained(tmp_path / side)
        predict_file(tmp_path / side, texts, tmp_path / f"{side}.jsonl", batch_size=2, show_progress=False)
        found[side] = [[(e["type"], e["start"], e["end"], e["score"]) for e in json.loads(line)["entities"]]
                       for line in (tmp_path / f"{side}.jsonl").read_text().splitlines()]
    assert all(found["right"])  # entities in both texts, so misplaced tags would show
    assert [[entity[:3] for entity in row] for row in found["left"]] == [[e[:3] for e in row] for row in found["right"]]
    assert [e[3] for row in found["left"] for e in row] == pytest.approx([e[3] for row in found["right"] for e in row],
                                                                        abs=1e-5)
