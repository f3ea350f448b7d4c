import json
import shlex
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from conftest import killed_after, tiny_bert_config, write
from tinybert.cli import parse
from tinybert.distillation import task as task_module
from tinybert.distillation.task import DistillConfig, distill, plan
from tinybert.distillation.distillers import IntermediateLosses
from tinybert.models.files import PROJECTIONS_FILE
from tinybert.data import read_task_file
from tinybert.errors import InputError
from tinybert.settings import values_of
from tinybert.training import TrainingConfig

LABELS = {"num_labels": 2, "id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}


@pytest.fixture
def teacher_dir(tmp_path, real_tokenizer):
    """A 4-layer, 64-wide classifier standing in for a fine-tuned teacher."""
    torch.manual_seed(1)
    path = tmp_path / "teacher"
    config = tiny_bert_config(num_hidden_layers=4, hidden_size=64, intermediate_size=128, **LABELS)
    BertForSequenceClassification(config).save_pretrained(path)
    real_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def train_file(tmp_path):
    rows = "".join(f"{'a great and warm film' if i % 2 else 'a dull , tired mess'} {'really ' * (i % 7)}\t"
                   f"{'pos' if i % 2 else 'neg'}\n" for i in range(64))
    return write(tmp_path / "train.txt", rows)


@pytest.fixture
def student_shape(tmp_path):
    return write(tmp_path / "student.json", json.dumps(
        {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}))


def _tokenizer(model_dir):
    from tinybert.models.loading import load_tokenizer
    return load_tokenizer(model_dir)


def _config(stage, **training):
    settings = dict(epochs=4, batch_size=16, learning_rate=1e-3, log_every=1, checkpoint_every=1000,
                    schedule="constant", warmup_ratio=0.0)
    settings.update(training)
    return DistillConfig(stage=stage, training=TrainingConfig(**settings), max_length=32)


def _losses(run_dir, key):
    records = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r]


def test_two_stages_train_and_write_plain_models(tmp_path, teacher_dir, train_file, student_shape):
    stage1 = tmp_path / "stage1"
    distill(teacher_dir, str(student_shape), train_file, stage1, config=_config("intermediate"),
            show_progress=False)
    for part in ("loss", "att", "hid", "emb"):
        values = _losses(stage1, part)
        assert sum(values[-3:]) < sum(values[:3]), part  # each loss goes down

    # projections live beside the model, never inside its weights
    weights = load_file(stage1 / "model.safetensors")
    assert not any("projection" in name for name in weights)
    projections = load_file(stage1 / PROJECTIONS_FILE)
    assert projections["hidden.weight"].shape == (64, 32) and projections["embedding.weight"].shape == (64, 32)
    config = json.loads((stage1 / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["id2label"] == {"0": "neg", "1": "pos"}
    assert "tinybert" not in json.dumps(config)

    stage2 = tmp_path / "stage2"
    summary = distill(teacher_dir, str(stage1), train_file, stage2, eval_path=train_file,
                      config=_config("prediction"), show_progress=False)
    predictions = _losses(stage2, "pred")
    assert sum(predictions[-3:]) < sum(predictions[:3])
    assert summary["best"] is not None and "accuracy" in summary["best"]
    model = AutoModelForSequenceClassification.from_pretrained(stage2)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32


def test_each_stages_recorded_command_reads_back_to_its_settings(tmp_path, teacher_dir, train_file, student_shape,
                                                                tinybert_cli):
    common = ["--teacher", teacher_dir, "--train", train_file, "--max-length", "32", "--batch-size", "16"]
    stage1 = ["distill", "--student", student_shape, "--output", tmp_path / "stage1", "--epochs", "1", *common]
    stage2 = ["distill", "--stage", "prediction", "--student", tmp_path / "stage1", "--eval", train_file, "--output",
              tmp_path / "stage2", "--hard-label-weight", "0.5", "--report-to", "none", *common]
    for argv, output in ((stage1, "stage1"), (stage2, "stage2")):
        argv = [str(word) for word in argv]
        done = tinybert_cli(*argv)
        assert done.returncode == 0, done.stderr[-2000:]
        command = shlex.split(json.loads((tmp_path / output / "tinybert.json").read_text())["command"])
        # stage 2's own schedule (3 epochs, lr 3e-5, linear) and its stage, not stage 1's defaults
        assert command[:2] == ["tinybert", "distill"] and values_of(parse(command[1:])[1]) == values_of(parse(argv)[1])


def test_a_stage_2_checkpoint_resumes_only_with_its_loss_weights(tmp_path, teacher_dir, train_file, student_shape):
    distill(teacher_dir, str(student_shape), train_file, tmp_path / "stage1", config=_config("intermediate", epochs=1),
            show_progress=False)
    config = _config("prediction", epochs=1, checkpoint_every=2)
    with killed_after(task_module, 3):
        distill(teacher_dir, str(tmp_path / "stage1"), train_file, tmp_path / "stage2", config=config,
                show_progress=False)
    for changed, message in (({"hard_label_weight": 0.5}, "hard_label_weight 0.0 → 0.5"),
                             ({"temperature": 2.0}, "temperature 1.0 → 2.0")):
        with pytest.raises(InputError, match=message):
            distill(teacher_dir, str(tmp_path / "stage1"), train_file, tmp_path / "stage2",
                    config=replace(config, **changed), show_progress=False)
    distill(teacher_dir, str(tmp_path / "stage1"), train_file, tmp_path / "stage2", config=config, show_progress=False)


def test_a_stage_1_checkpoint_resumes_only_with_its_loss_weights(tmp_path, teacher_dir, train_file, student_shape):
    config = _config("intermediate", epochs=1, checkpoint_every=2)
    with killed_after(task_module, 3):
        distill(teacher_dir, str(student_shape), train_file, tmp_path / "stage1", config=config, show_progress=False)
    changed = replace(config, losses=IntermediateLosses(hidden=2.0))
    with pytest.raises(InputError, match="hidden 1.0 → 2.0"):
        distill(teacher_dir, str(student_shape), train_file, tmp_path / "stage1", config=changed, show_progress=False)


def test_init_from_teacher_copies_mapped_layers(tmp_path, teacher_dir, train_file):
    from tinybert.distillation.start import prepare_student
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    config = DistillConfig(init_from_teacher=True, layers=2)
    start = prepare_student(teacher_dir, "tinybert-4l-312", read_task_file(train_file), config, _tokenizer(teacher_dir))
    student, layer_map = start.student, start.layer_map
    assert layer_map == [2, 4] and student.config.hidden_size == 64
    torch.testing.assert_close(student.bert.encoder.layer[1].output.dense.weight,
                               teacher.bert.encoder.layer[3].output.dense.weight)
    torch.testing.assert_close(student.bert.embeddings.word_embeddings.weight,
                               teacher.bert.embeddings.word_embeddings.weight)
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight)


def test_stage1_loss_is_zero_when_the_student_is_the_teacher(tmp_path, teacher_dir, train_file):
    from tinybert.distillation.start import prepare_student
    from tinybert.distillation.distillers import IntermediateDistiller
    config = DistillConfig(init_from_teacher=True)  # all 4 layers, mapped 1:1
    start = prepare_student(teacher_dir, "x", read_task_file(train_file), config, _tokenizer(teacher_dir))
    teacher, student, layer_map = start.teacher, start.student, start.layer_map
    distiller = IntermediateDistiller(student, teacher, layer_map, IntermediateLosses())
    with torch.no_grad():
        for projection in (distiller.hidden_projection, distiller.embedding_projection):
            projection.weight.copy_(torch.eye(64))
            projection.bias.zero_()
    student.eval()
    batch = {"input_ids": torch.tensor([[101, 2307, 2143, 102, 0]]), "token_type_ids": torch.zeros(1, 5, dtype=torch.long),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0]])}
    losses = distiller(batch)
    assert losses["loss"].item() == pytest.approx(0.0, abs=1e-8)


def test_head_count_mismatch_is_a_clear_error(tmp_path, teacher_dir, train_file):
    shape = write(tmp_path / "s.json", json.dumps({"num_hidden_layers": 2, "hidden_size": 32,
                                                   "intermediate_size": 64, "num_attention_heads": 2}))
    with pytest.raises(InputError, match="equal head counts: the student has 2, the teacher 4") as error:
        distill(teacher_dir, str(shape), train_file, tmp_path / "out", config=_config("intermediate"),
                show_progress=False)
    assert "--attention-loss relations" in str(error.value)


def test_relations_teach_a_student_with_half_the_heads_through_both_stages(tmp_path, teacher_dir, train_file):
    shape = write(tmp_path / "s.json", json.dumps({"num_hidden_layers": 2, "hidden_size": 32,
                                                   "intermediate_size": 64, "num_attention_heads": 2}))
    config = _config("intermediate")
    # the relations alone, so that their loss is what training lowers
    config.losses = IntermediateLosses(attention_loss="relations", relation_heads=4, hidden=0.0, embedding=0.0)
    distill(teacher_dir, str(shape), train_file, tmp_path / "stage1", config=config, show_progress=False)
    relations = _losses(tmp_path / "stage1", "att")
    assert relations[0] > 0 and sum(relations[-3:]) < sum(relations[:3])
    distill(teacher_dir, str(tmp_path / "stage1"), train_file, tmp_path / "stage2", config=_config("prediction"),
            show_progress=False)
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "stage2").config.num_attention_heads == 2


def test_relation_heads_must_divide_both_attention_widths(tmp_path, teacher_dir, train_file, student_shape):
    config = _config("intermediate")
    config.losses = IntermediateLosses(attention_loss="relations", relation_heads=5)
    with pytest.raises(InputError, match="5 relation heads do not divide the student's 32 and the teacher's 64"):
        distill(teacher_dir, str(student_shape), train_file, tmp_path / "out", config=config, show_progress=False)


def test_relation_loss_is_zero_for_a_student_that_copies_the_teacher(teacher_dir, train_file):
    from tinybert.distillation.start import prepare_student
    from tinybert.distillation.distillers import IntermediateDistiller
    start = prepare_student(teacher_dir, "x", read_task_file(train_file), DistillConfig(init_from_teacher=True),
                            _tokenizer(teacher_dir))
    teacher, student, layer_map = start.teacher, start.student, start.layer_map
    assert layer_map == [1, 2, 3, 4]
    losses = IntermediateLosses(attention_loss="relations", relation_heads=4, hidden=0.0, embedding=0.0)
    distiller = IntermediateDistiller(student, teacher, layer_map, losses).eval()
    batch = {"input_ids": torch.tensor([[101, 2307, 2143, 102, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0]])}
    assert distiller(batch)["att"].item() == pytest.approx(0.0, abs=1e-7)


def test_the_bert_attention_loss_is_the_mse_of_eager_attentions_scores(teacher_dir, train_file, monkeypatch):
    """The score loss through the capture equals the loss of the scores eager attention computes."""
    import transformers.models.bert.modeling_bert as bert
    from tinybert.distillation.distillers import IntermediateDistiller
    from tinybert.distillation.losses import attention_loss
    from tinybert.distillation.start import prepare_student
    start = prepare_student(teacher_dir, "tinybert-4l-312", read_task_file(train_file), DistillConfig(layers=2),
                            _tokenizer(teacher_dir))
    teacher, layer_map = start.teacher, start.layer_map
    student = BertForSequenceClassification(tiny_bert_config(**LABELS)).eval()  # 4 heads like the teacher
    batch = {"input_ids": torch.tensor([[101, 2307, 2143, 1012, 102], [101, 2307, 102, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    eager_scores, original = [], bert.eager_attention_forward

    def spy(module, query, key, value, attention_mask, scaling=None, **kwargs):
        eager_scores.append(torch.matmul(query, key.transpose(2, 3)) * scaling)
        return original(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    monkeypatch.setattr(bert, "eager_attention_forward", spy)
    with torch.no_grad():
        for model in (teacher, student):
            model.set_attn_implementation("eager")
            model(**batch)
    teacher_scores, student_scores = eager_scores[:4], eager_scores[4:]
    expected = sum(attention_loss(student_scores[m], teacher_scores[t - 1], batch["attention_mask"])
                   for m, t in enumerate(layer_map))
    with torch.no_grad():
        ours = IntermediateDistiller(student, teacher, layer_map, IntermediateLosses()).eval()(batch)["att"]
    assert ours.item() == pytest.approx(expected.item(), abs=1e-6)


def test_the_bert_attention_loss_equals_the_one_before_other_families_were_supported():
    """Pinned: the code before the encoder families (commit f70dd16, its own score capture) gave
    0.001591339474543929 for these seeded models and batch."""
    from tinybert.distillation.distillers import IntermediateDistiller
    torch.manual_seed(1)
    teacher = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=4, hidden_size=64,
                                                             intermediate_size=128, **LABELS)).eval()
    torch.manual_seed(2)
    student = BertForSequenceClassification(tiny_bert_config(**LABELS)).eval()
    batch = {"input_ids": torch.tensor([[101, 2307, 2143, 1012, 102], [101, 2307, 102, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    with torch.no_grad():
        loss = IntermediateDistiller(student, teacher, [2, 4], IntermediateLosses()).eval()(batch)["att"]
    assert loss.item() == pytest.approx(0.001591339474543929, abs=1e-6)


def test_plan_reports_mapping_shapes_and_sizes(teacher_dir, train_file, student_shape):
    result = plan(teacher_dir, str(student_shape), read_task_file(train_file), DistillConfig())
    assert result.layer_map == [2, 4]
    assert result.projections == {"W_h (hidden)": [32, 64], "W_e (embeddings)": [32, 64]}
    assert result.teacher_params > result.student_params
    text = result.describe()
    assert "student 1 ← teacher 2" in text and "expected speed-up" in text
    assert "attention loss: MSE of pre-softmax scores, 4 heads" in text


def test_cli_plan_and_bad_layer_map(teacher_dir, train_file, tinybert_cli):
    base = ["distill", "--stage", "intermediate", "--teacher", teacher_dir, "--train", train_file, "--output", "unused",
            "--plan"]
    done = tinybert_cli(*base)
    assert done.returncode == 0, done.stderr
    assert "student 4 ← teacher 4" in done.stdout and "312" in done.stdout  # default preset, 4 layers
    done = tinybert_cli(*base, "--layer-map", "1,2,3")
    assert done.returncode == 2 and "has 3 entries but the student has 4 layers" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_layer_maps_length_gives_a_teacher_copys_layer_count(teacher_dir, train_file, tinybert_cli):
    """--init-from-teacher --layer-map 2,4 without --layers: a 2-layer student of layers 2 and 4."""
    from tinybert.distillation.start import prepare_student
    config = DistillConfig(init_from_teacher=True, layer_map="2,4")
    start = prepare_student(teacher_dir, "unused", read_task_file(train_file), config, _tokenizer(teacher_dir))
    student, layer_map = start.student, start.layer_map
    assert layer_map == [2, 4] and student.config.num_hidden_layers == 2
    done = tinybert_cli("distill", "--teacher", teacher_dir, "--train", train_file, "--output", "unused", "--plan",
                        "--init-from-teacher", "--layer-map", "2,4")
    assert done.returncode == 0, done.stderr
    assert "layers: teacher 4, student 2" in done.stdout and "student 2 ← teacher 4" in done.stdout


@pytest.mark.parametrize("student", ["sizes", "layers", "layer map"])
def test_a_student_deeper_than_its_teacher_is_one_message_and_nothing_written(tmp_path, real_tokenizer, train_file,
                                                                              tinybert_cli, student):
    teacher = tmp_path / "teacher"
    BertForSequenceClassification(tiny_bert_config(**LABELS)).save_pretrained(teacher)  # 2 layers
    real_tokenizer.save_pretrained(teacher)
    shape = write(tmp_path / "deep.json", json.dumps({"num_hidden_layers": 3, "hidden_size": 32,
                                                      "intermediate_size": 64, "num_attention_heads": 4}))
    flags = {"sizes": ["--student", shape], "layers": ["--init-from-teacher", "--layers", "3"],
             "layer map": ["--init-from-teacher", "--layer-map", "1,1,2"]}[student]
    output = tmp_path / "out"
    done = tinybert_cli("distill", "--teacher", teacher, "--train", train_file, "--output", output,
                        "--max-length", "32", *flags)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("error:") == 1
    assert "a 3-layer student of a 2-layer teacher" in done.stderr
    assert not output.exists()


@pytest.mark.parametrize("task", ["classification", "regression", "token", "qa"])
def test_gold_labels_change_stage_twos_loss_only_on_labelled_original_rows(task):
    """--hard-label-weight 0.5: an original row's loss is ½ soft + ½ cross-entropy against its gold
    label (MSE for a score, per first piece for tags, start and end for answers); an augmented
    variant's and unlabelled text's loss is the soft loss alone, as with weight 0."""
    import torch.nn.functional as F
    from transformers import BertForQuestionAnswering, BertForTokenClassification
    from tinybert.data.labels import AUGMENTED, ORIGINAL, UNLABELLED
    from tinybert.distillation.distillers import PredictionDistiller
    torch.manual_seed(0)
    kind = {"classification": BertForSequenceClassification, "regression": BertForSequenceClassification,
            "token": BertForTokenClassification, "qa": BertForQuestionAnswering}[task]
    labels = {"regression": 1, "qa": 2}.get(task, 3)
    teacher, student = (kind(tiny_bert_config(num_labels=labels)).eval() for _ in range(2))
    ids = torch.tensor([[101, 2307, 2143, 2001, 102], [101, 2204, 2143, 102, 0], [101, 6659, 2143, 2001, 102]])
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long(),
             "origin": torch.tensor([ORIGINAL, AUGMENTED, UNLABELLED])}
    if task == "qa":
        batch.update(start_positions=torch.tensor([1, 2, 0]), end_positions=torch.tensor([2, 2, 0]))
    elif task == "token":  # tags on first pieces (-100 elsewhere); unlabelled text's words: -1
        batch["labels"] = torch.tensor([[-100, 2, 0, 1, -100], [-100, 1, 1, -100, -100], [-100, -1, -1, -1, -100]])
    else:
        batch["labels"] = torch.tensor([2.5, 1.0, -100.0]) if task == "regression" else torch.tensor([2, 1, -100])

    def loss(weight, rows):
        distiller = PredictionDistiller(student, teacher, regression=task == "regression",
                                        task="sequence" if task in ("classification", "regression") else task,
                                        hard_label_weight=weight).eval()
        with torch.no_grad():
            return distiller({key: value[rows] for key, value in batch.items()})["loss"].item()

    def gold(row):  # the cross-entropy (or squared error) against the gold label, computed here
        inputs = {key: batch[key][[row]] for key in ("input_ids", "attention_mask")}
        with torch.no_grad():
            output = student(**inputs)
        if task == "qa":
            return sum(F.cross_entropy(logits, batch[key][[row]]) for logits, key in
                       ((output.start_logits, "start_positions"), (output.end_logits, "end_positions"))).item() / 2
        if task == "token":
            return F.cross_entropy(output.logits[0], batch["labels"][row]).item()
        if task == "regression":
            return (output.logits.view(-1) - batch["labels"][row]).square().item()
        return F.cross_entropy(output.logits, batch["labels"][[row]]).item()

    soft = [loss(0.0, [row]) for row in range(3)]
    mixed = [loss(0.5, [row]) for row in range(3)]
    assert mixed[0] == pytest.approx(0.5 * soft[0] + 0.5 * gold(0), rel=1e-5) and mixed[0] != pytest.approx(soft[0])
    assert mixed[1:] == soft[1:]  # the augmented variant and the unlabelled text: unchanged
    # in one batch, each row counts as alone (tags: each by its number of words)
    counted = [3, 2, 3] if task == "token" else [1, 1, 1]
    assert loss(0.5, [0, 1, 2]) == pytest.approx(sum(n * value for n, value in zip(counted, mixed)) / sum(counted),
                                                 rel=1e-5)
