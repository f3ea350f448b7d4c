"""Every supported encoder family, as teacher and student: what the attention loss captures, students
built in the teacher's family, and every command end to end on tiny random models."""

import json

import numpy as np
import pytest
import torch
from transformers import AttentionInterface, AutoConfig, AutoModel, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from conftest import write
from families import FAMILIES, family_config, save_family_model
from tinybert.data import DataOptions
from tinybert.data.labels import LabelSpace
from tinybert.distillation.attention import captured, record_attention
from tinybert.distillation.general import GeneralConfig, general_distill
from tinybert.distillation.task import DistillConfig, distill
from tinybert.evaluation.measure import evaluate
from tinybert.finetune import FinetuneConfig, finetune
from tinybert.inference.export import export_onnx
from tinybert.inference.predict import predict_file
from tinybert.models.families import attention_modules, layers_of
from tinybert.models.pruning import PruningOptions
from tinybert.models.students import build_student
from tinybert.training import TrainingConfig

SENTIMENT = LabelSpace("classification", ["neg", "pos"])
SMALL_STUDENT = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}


def _batch(length: int = 9):
    torch.manual_seed(3)
    ids = torch.randint(1000, 2000, (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length - 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


_SPIED: dict[int, torch.Tensor] = {}
_SPIED_STATES: dict[int, tuple[torch.Tensor, ...]] = {}


def _spy(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Keeps QKᵀ·scaling, and the queries, keys and values, as the family hands them to its
    attention function (after rotary embeddings), then runs SDPA."""
    kwargs.pop("output_attentions", None)
    _SPIED_STATES[len(_SPIED)] = (query, key, value)
    _SPIED[len(_SPIED)] = torch.matmul(query, key.transpose(2, 3)) * scaling
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


AttentionInterface.register("tinybert_test_spy", _spy)
ALL_MASK_ATTENTION_FUNCTIONS.register("tinybert_test_spy", sdpa_mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_scores_are_what_each_familys_softmax_receives(family, monkeypatch):
    """Equal to the scores each family hands its softmax, with the pairs the layer attends: those
    its softmax weighs (ModernBERT's layers 1 and 3 here are local: keys beyond the window are left
    out, as padded keys are)."""
    model = AutoModel.from_config(family_config(family)).eval()
    batch = _batch()
    with torch.no_grad():
        if family == "deberta-v2":  # its own attention: spy on what its softmax receives
            softmax, inputs = torch.nn.functional.softmax, []
            monkeypatch.setattr(torch.nn.functional, "softmax",
                                lambda scores, *a, **k: inputs.append(scores) or softmax(scores, *a, **k))
            reference = model(**batch, output_attentions=True)
            monkeypatch.undo()
            expected, weights = [inputs[1], inputs[3]], [reference.attentions[1], reference.attentions[3]]
        else:
            model.set_attn_implementation("eager")
            eager = model(**batch, output_attentions=True)
            weights = [eager.attentions[1], eager.attentions[3]]
            _SPIED.clear()
            model.set_attn_implementation("tinybert_test_spy")
            reference = model(**batch)
            expected = [_SPIED[1], _SPIED[3]]
        layers = record_attention(model, [3, 1])
        ours = model(**batch, output_attentions=True)
    records = captured(ours, layers)
    assert sorted(records) == [1, 3]
    real = batch["attention_mask"].bool()
    for layer, target, attended in zip((1, 3), expected, weights):
        scores, pairs = records[layer]
        assert scores.shape == (2, 4, 9, 9)
        # the real queries' pairs: the layer attends those its softmax gives more than 0
        queries = real[:, None, :, None].expand_as(attended)
        attends, left_out = (attended > 0) & queries, (attended == 0) & queries
        assert torch.equal(pairs.expand_as(attended)[queries], attends[queries]) and left_out.any()
        torch.testing.assert_close(scores[attends], target[attends], atol=1e-6, rtol=1e-5)
        if family == "modernbert":  # a local layer: in the example without padding, exactly the keys beyond half its window
            distance = (torch.arange(9)[:, None] - torch.arange(9)[None, :]).abs()
            assert torch.equal(left_out[0], (distance > model.config.local_attention // 2).expand(4, 9, 9))
    # recording changes nothing the model computes
    torch.testing.assert_close(ours.last_hidden_state[real], reference.last_hidden_state[real], atol=1e-5, rtol=1e-5)


def test_the_attention_loss_of_a_modernbert_local_layer_is_the_mean_over_the_pairs_its_window_holds():
    """Each layer's loss is the mean squared difference of the scores over the pairs both layers
    attend (real queries; real keys within a local layer's window), computed here from the scores
    the family hands its attention and the pairs its eager softmax weighs: a local layer with 20
    tokens and a window of 8 weighs as much as a global one, not about half as much."""
    from tinybert.distillation.distillers import IntermediateDistiller, IntermediateLosses
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(AutoModel.from_config(family_config("modernbert")).eval())
    batch, scores, attended = _batch(length=20), [], []
    with torch.no_grad():
        for model in models:
            model.set_attn_implementation("eager")
            attended.append([weights > 0 for weights in model(**batch, output_attentions=True).attentions])
            _SPIED.clear()
            model.set_attn_implementation("tinybert_test_spy")
            model(**batch)
            scores.append(dict(_SPIED))
    real_queries = batch["attention_mask"].bool()[:, None, :, None]
    expected = 0.0
    for layer in range(4):
        pairs = attended[0][layer] & attended[1][layer] & real_queries
        expected += (scores[0][layer] - scores[1][layer]).square()[pairs].mean().item()
    assert not attended[1][1][0].all()  # layer 2 is local: its window leaves pairs out of the 20 tokens
    distiller = IntermediateDistiller(*models, [1, 2, 3, 4], IntermediateLosses(hidden=0.0, embedding=0.0)).eval()
    with torch.no_grad():
        assert distiller(batch)["att"].item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_relations_record_the_queries_keys_and_values_the_layer_attends_with(family):
    """Each of them as the family hands it to its attention (ModernBERT's after rotary embeddings;
    DeBERTa's content projections), per head, so that the relations made of them are the layer's."""
    model = AutoModel.from_config(family_config(family)).eval()
    batch = _batch()
    with torch.no_grad():
        if family == "deberta-v2":  # its own attention: its projections' outputs, split into heads
            projected = {}  # the first call of each: on the layer's input (later ones project positions)
            attention = attention_modules(model)[1]

            def keep(name):
                def hook(module, inputs, output):
                    projected.setdefault(name, output)
                return hook
            hooks = [getattr(attention, name).register_forward_hook(keep(name))
                     for name in ("query_proj", "key_proj", "value_proj")]
            model(**batch)
            for hook in hooks:
                hook.remove()
            expected = [projected[name].view(2, 9, 4, 16).transpose(1, 2)
                        for name in ("query_proj", "key_proj", "value_proj")]
        else:
            _SPIED.clear()
            model.set_attn_implementation("tinybert_test_spy")
            model(**batch)
            expected = _SPIED_STATES[1]
        layers = record_attention(model, [1], "relations")
        recorded = captured(model(**batch, output_attentions=True), layers)[1]
    assert len(recorded) == 3
    for ours, theirs in zip(recorded, expected):
        assert ours.shape == (2, 4, 9, 16)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(expected[0], expected[1]) and not torch.allclose(expected[1], expected[2])


@pytest.mark.parametrize("family", FAMILIES)
def test_init_from_teacher_is_the_teachers_family_with_the_mapped_layers(family):
    torch.manual_seed(0)
    teacher = family_config(family, SENTIMENT)
    from tinybert.models.loading import TASK_MODELS
    teacher = TASK_MODELS["sequence"].from_config(teacher).eval()
    whole = build_student("x", teacher, SENTIMENT, init_from_teacher=True).eval()
    batch = _batch()
    with torch.no_grad():  # every layer copied: the teacher's function exactly
        torch.testing.assert_close(whole(**batch).logits, teacher(**batch).logits)
    student = build_student("x", teacher, SENTIMENT, init_from_teacher=True, layer_map=[2, 4])
    assert student.config.model_type == teacher.config.model_type and student.config.num_hidden_layers == 2
    for student_layer, teacher_layer in zip(layers_of(student), [layers_of(teacher)[1], layers_of(teacher)[3]]):
        copied = teacher_layer.state_dict()
        for name, value in student_layer.state_dict().items():
            if family == "modernbert" and name.startswith("attn_norm"):
                continue  # the first layer has no norm before attention; its copy keeps none
            torch.testing.assert_close(value, copied[name])
    if family == "modernbert":  # each copied layer keeps its local or global attention
        assert student.config.layer_types == [teacher.config.layer_types[1], teacher.config.layer_types[3]]


def test_modernberts_last_layer_is_compared_before_its_final_norm_as_every_other_layer():
    """transformers gives ModernBERT's last hidden state after its final norm, every other layer's
    before it: a 3-layer copy of a 4-layer teacher's first three layers (its last layer mapped to
    teacher layer 3, whose output is unnormalised) computes exactly what they compute, so every loss is 0."""
    from tinybert.distillation.distillers import IntermediateDistiller, IntermediateLosses
    from tinybert.models.loading import TASK_MODELS
    torch.manual_seed(0)
    teacher = TASK_MODELS["sequence"].from_config(family_config("modernbert", SENTIMENT)).eval()
    student = build_student("x", teacher, SENTIMENT, init_from_teacher=True, layer_map=[1, 2, 3]).eval()
    distiller = IntermediateDistiller(student, teacher, [1, 2, 3], IntermediateLosses()).eval()
    with torch.no_grad():
        for projection in (distiller.hidden_projection, distiller.embedding_projection):
            projection.weight.copy_(torch.eye(64))
            projection.bias.zero_()
        losses = distiller(_batch(length=20))
    assert losses["hid"].item() == pytest.approx(0.0, abs=1e-10)
    assert losses["att"].item() == pytest.approx(0.0, abs=1e-10) and losses["emb"].item() == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_student_of_other_sizes_stays_in_the_teachers_family(family):
    teacher = AutoModel.from_config(family_config(family, num_hidden_layers=6))
    student = build_student("tinybert-4l-312", teacher, None)
    config = student.config
    assert config.model_type == family and config.hidden_size == 312 and config.num_hidden_layers == 4
    assert len(attention_modules(student)) == 4
    if family == "deberta-v2":
        assert config.relative_attention and config.position_buckets == 16 and config.pooler_hidden_size == 312
    if family == "modernbert":  # each layer attends as the teacher layer it learns from (6 → 4: 2, 3, 5, 6)
        assert config.layer_types == [teacher.config.layer_types[layer - 1] for layer in (2, 3, 5, 6)]
    if family in ("electra", "deberta-v2"):  # narrower embeddings than layers stay; as wide as the layers, they follow
        narrow = AutoModel.from_config(family_config(family, num_hidden_layers=6, embedding_size=32))
        assert build_student("tinybert-4l-312", narrow, None).config.embedding_size == 32
        wide = AutoModel.from_config(family_config(family, num_hidden_layers=6, embedding_size=64))
        student = build_student("tinybert-4l-312", wide, None)
        assert student.config.embedding_size == 312 and student.get_input_embeddings().weight.shape[1] == 312


def _training(**settings):
    return TrainingConfig(**{"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "log_every": 1,
                             "checkpoint_every": 1000, "schedule": "constant", "warmup_ratio": 0.0, **settings})


@pytest.fixture(scope="module")
def sentiment_rows(tmp_path_factory):
    rows = "".join(f"{'a great and warm film' if i % 2 else 'a dull , tired mess'} {'really ' * (i % 7)}\t"
                   f"{'pos' if i % 2 else 'neg'}\n" for i in range(32))
    return write(tmp_path_factory.mktemp("data") / "train.txt", rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_command_on_a_teacher_of_each_family(tmp_path, family, sentiment_rows, real_tokenizer):
    """finetune → general → stage 1 (from sizes, and pruned from the teacher's layers to half its width
    and its data's tokens) → stage 2 → evaluate → export (fp32 parity 1e-4) → predict, on sequence
    classification."""
    encoder = tmp_path / "encoder"
    AutoModel.from_config(family_config(family)).save_pretrained(encoder)
    real_tokenizer.save_pretrained(encoder)
    teacher = tmp_path / "teacher"
    finetune(encoder, sentiment_rows, teacher, show_progress=False,
             config=FinetuneConfig(training=_training(), max_length=32))
    corpus = write(tmp_path / "corpus.txt", "a plain sentence of text .\nanother line , longer than that one .\n" * 8)
    shape = write(tmp_path / "student.json", json.dumps(SMALL_STUDENT))
    general = general_distill(encoder, [corpus], tmp_path / "general", student=str(shape), show_progress=False,
                              config=GeneralConfig(training=_training(batch_size=4, max_steps=2), max_length=16))
    assert general["steps"] == 2 and AutoConfig.from_pretrained(tmp_path / "general").model_type == family

    stage1 = DistillConfig(stage="intermediate", training=_training(), max_length=32)
    distill(teacher, str(shape), sentiment_rows, tmp_path / "from-sizes", show_progress=False, config=stage1)
    # half the width; ELECTRA's 32-wide embeddings would leave a 32-wide student without their projection
    half = 48 if family == "electra" else 32
    distill(teacher, "unused", sentiment_rows, tmp_path / "stage1", show_progress=False,
            config=DistillConfig(stage="intermediate", init_from_teacher=True, layers=2, training=_training(),
                                 max_length=32, pruning=PruningOptions(hidden_size=half, prune_vocab=True)))
    for stage1_dir in ("from-sizes", "stage1"):
        losses = [json.loads(line) for line in (tmp_path / stage1_dir / "train_log.jsonl").read_text().splitlines()]
        assert all(np.isfinite(record["att"]) and record["att"] >= 0 for record in losses)
    summary = distill(teacher, str(tmp_path / "stage1"), sentiment_rows, tmp_path / "student", eval_path=sentiment_rows,
                      show_progress=False, config=DistillConfig(stage="prediction", training=_training(), max_length=32))
    assert "accuracy" in summary["best"]
    student_config = AutoConfig.from_pretrained(tmp_path / "student")
    assert student_config.model_type == family and student_config.hidden_size == half
    assert student_config.vocab_size < 2500  # of 30,522: the fallback characters (~1,900) and the rows' tokens
    assert len(AutoTokenizer.from_pretrained(tmp_path / "student")) == student_config.vocab_size

    options = DataOptions(cache_dir=str(tmp_path / "cache"))
    figures = evaluate(tmp_path / "student", sentiment_rows, max_length=32, latency=False, show_progress=False,
                       data_options=options)
    assert 0 <= figures["accuracy"] <= 1
    exported = export_onnx(tmp_path / "student", tmp_path / "onnx", data=sentiment_rows, max_length=32,
                           latency=False, show_progress=False, data_options=options)
    assert exported["fp32_max_abs_logit_diff"] <= 1e-4
    predict_file(tmp_path / "onnx", sentiment_rows, tmp_path / "predictions.tsv", max_length=32, show_progress=False)
    assert len((tmp_path / "predictions.tsv").read_text().splitlines()) == 1 + 32  # a header, then each row


@pytest.mark.parametrize("family", ["bert", "deberta-v2", "modernbert"])
@pytest.mark.parametrize("task", ["token", "qa"])
def test_tagging_and_question_answering_teachers_of_other_families(tmp_path, family, task, real_tokenizer):
    """Stage 1 from the teacher's layers → stage 2 → evaluate → export (fp32 parity 1e-4) → predict."""
    from test_tasks import CONLL, TAGS, squad_document
    train = write(tmp_path / "train.txt", CONLL) if task == "token" else \
        write(tmp_path / "train.json", json.dumps(squad_document()))
    space = LabelSpace.of_tags(TAGS) if task == "token" else LabelSpace("qa", [])
    teacher = save_family_model(tmp_path / "teacher", family, real_tokenizer, space)
    distill(teacher, "unused", train, tmp_path / "stage1", show_progress=False,
            config=DistillConfig(stage="intermediate", init_from_teacher=True, layers=2,
                                 training=_training(batch_size=4), max_length=64))
    metric = "f1"
    summary = distill(teacher, str(tmp_path / "stage1"), train, tmp_path / "student", eval_path=train,
                      show_progress=False, config=DistillConfig(stage="prediction", training=_training(batch_size=4),
                                                                max_length=64))
    assert np.isfinite(summary["best"][metric])
    options = DataOptions(cache_dir=str(tmp_path / "cache"))
    figures = evaluate(tmp_path / "student", train, max_length=64, latency=False, show_progress=False,
                       data_options=options)
    assert 0 <= figures[metric] <= 1
    exported = export_onnx(tmp_path / "student", tmp_path / "onnx", data=train, max_length=64, latency=False,
                           show_progress=False, data_options=options)
    assert exported["fp32_max_abs_logit_diff"] <= 1e-4
    assert predict_file(tmp_path / "onnx", train, tmp_path / "predictions.jsonl", max_length=64,
                        show_progress=False) > 0


@pytest.mark.parametrize("command", ["distill", "general", "pipeline"])
def test_an_unsupported_family_is_one_message_before_any_training(tmp_path, real_tokenizer, sentiment_rows,
                                                                  tinybert_cli, command):
    import yaml
    from transformers import AlbertConfig, AlbertForSequenceClassification
    teacher = tmp_path / "albert"
    torch.manual_seed(0)
    AlbertForSequenceClassification(AlbertConfig(vocab_size=30522, embedding_size=16, hidden_size=32,
                                                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                                 **SENTIMENT.config_fields())).save_pretrained(teacher)
    real_tokenizer.save_pretrained(teacher)
    output = tmp_path / "out"
    arguments = {
        "distill": ["--stage", "intermediate", "--teacher", teacher, "--init-from-teacher", "--train", sentiment_rows,
                    "--output", output, "--max-length", "32"],
        "general": ["--teacher", teacher, "--corpus", sentiment_rows, "--output", output, "--max-length", "32"],
        # the pipeline would fine-tune the teacher first: it stops before that
        "pipeline": [write(tmp_path / "pipeline.yaml", yaml.safe_dump({
            "run_dir": str(output), "data": {"train": str(sentiment_rows), "dev": str(sentiment_rows)},
            "finetune": {"model": str(teacher), "epochs": 1}, "augment": {"run": False}}))]}[command]
    done = tinybert_cli(command, *arguments)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "the 'albert' encoder family is not supported" in done.stderr
    assert not output.exists() or not [path for path in output.rglob("*") if path.is_file()]  # nothing read or written


def test_the_pipeline_runs_a_deberta_teacher_end_to_end(tmp_path, real_tokenizer, sentiment_rows, tinybert_cli):
    import yaml
    encoder = tmp_path / "encoder"
    AutoModel.from_config(family_config("deberta-v2")).save_pretrained(encoder)
    real_tokenizer.save_pretrained(encoder)
    quick = {"epochs": 1, "batch_size": 16, "lr": 1e-3, "max_length": 32}
    config = write(tmp_path / "pipeline.yaml", yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "data": {"train": str(sentiment_rows), "dev": str(sentiment_rows)},
        "finetune": {"model": str(encoder), **quick}, "augment": {"run": False},
        # the student reads shorter windows than its teacher
        "intermediate": {"init_from_teacher": True, "layers": 2, **quick, "max_length": 24},
        "prediction": {**quick, "max_length": 24}, "baseline": {"epochs": 1}, "evaluate": {"no_latency": True},
        "export": {"int8": False, "no_latency": True, "max_length": 32}, "report": {"run": False}}))
    done = tinybert_cli("pipeline", config)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["evaluation"]) == {"teacher", "student", "baseline"}
    # every model on the same windows (retention compares like with like), the longest any was trained on
    assert {figures["max_length"] for figures in results["evaluation"].values()} == {32}
    assert results["export"]["fp32_max_abs_logit_diff"] <= 1e-4
    assert AutoConfig.from_pretrained(tmp_path / "run" / "student").model_type == "deberta-v2"
