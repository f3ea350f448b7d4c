"""Width pruning: students cut from a fine-tuned teacher of every family, narrower than it."""

import json
import math

import pytest
import torch
from families import FAMILIES, family_config
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import write
from tinybert.distillation.task import DistillConfig
from tinybert.training import TrainingConfig

from tinybert.data import EncodedData, LabelSpace
from tinybert.errors import InputError
from tinybert.models.families import family_of, layers_of, layers_prefix, module_at
from tinybert.models.importance import measure_importance
from tinybert.models.loading import TASK_MODELS
from tinybert.models.pruning import PruningOptions, Selection, pruned_shape, select, selection_projection
from tinybert.models.students import build_student

SENTIMENT = LabelSpace("classification", ["negative", "positive"])


def _teacher(family: str, seed: int = 0):
    torch.manual_seed(seed)
    # ELECTRA's embeddings narrower than half its width: a half-width student keeps their projection
    narrower = {"embedding_size": 16} if family == "electra" else {}
    return TASK_MODELS["sequence"].from_config(family_config(family, SENTIMENT, **narrower)).eval()


def _rows(count: int = 12, seed: int = 0) -> EncodedData:
    generator = torch.Generator().manual_seed(seed)
    features = []
    for index in range(count):
        length = 5 + index % 7
        ids = [101, *torch.randint(1000, 5000, (length - 2,), generator=generator).tolist(), 102]
        features.append({"input_ids": ids, "token_type_ids": [0] * length})
    return EncodedData(features, [len(f["input_ids"]) for f in features])


def _batch():
    return {"input_ids": torch.tensor([[101, 2023, 3185, 2001, 2307, 102, 0], [101, 6659, 999, 102, 0, 0, 0]]),
            "attention_mask": torch.tensor([[1] * 6 + [0], [1] * 4 + [0] * 3])}


def _silence(teacher, layer: int, heads: list[int], neurons: list[int]) -> None:
    """Zeroes what the teacher's ``layer`` (1-based) reads of ``heads`` and ``neurons``: the
    teacher then computes what a student without them computes."""
    family = family_of(teacher)
    width = teacher.config.hidden_size // teacher.config.num_attention_heads
    block = layers_of(teacher)[layer - 1]
    with torch.no_grad():
        for head in heads:
            module_at(block, family.heads_out).weight[:, head * width:(head + 1) * width] = 0
        module_at(block, family.neurons_out).weight[:, neurons] = 0


def _mirror_channels(model, kept: list[int]) -> None:
    """Makes each other channel of ``model``'s residual stream a copy of a ``kept`` one: whatever
    writes to the hidden width writes the same to both, whatever reads it reads nothing from the
    copies. Every LayerNorm then sees over all channels the mean and variance of the kept ones, so
    a student keeping only those computes exactly what the model computes."""
    hidden, family = model.config.hidden_size, family_of(model)
    copies = [channel for channel in range(hidden) if channel not in kept]
    prefix = layers_prefix(model)
    with torch.no_grad():
        for name, module in model.named_modules():
            within = name[len(prefix):].split(".", 1)[-1] if name.startswith(prefix) else None
            reads_units = within in (family.heads_out, family.neurons_out)  # its inputs are heads or neurons
            writes_units = within in family.heads_in or within == family.neurons_in
            for kind, parameter in module.named_parameters(recurse=False):
                if isinstance(module, torch.nn.Embedding):
                    if parameter.shape[1] == hidden:
                        parameter[:, copies] = parameter[:, kept]
                    continue
                if parameter.shape[0] == hidden and not writes_units:
                    parameter[copies] = parameter[kept]
                if parameter.dim() == 2 and parameter.shape[1] == hidden and not reads_units:
                    parameter[:, copies] = 0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pruned_student_computes_what_its_teacher_computes_without_the_units_it_drops(family):
    """Every tensor that touches a kept channel, head or neuron is cut at the same units (the
    embeddings and every layer at the same channels; fused projections, ModernBERT's queries,
    keys and values in one and its gated feed-forward input, at each block): with the teacher's
    dropped channels copies of kept ones and its dropped heads and neurons silenced, the student's
    logits are the teacher's."""
    teacher = _teacher(family)
    config = teacher.config
    neurons = config.hidden_dim if family == "distilbert" else config.intermediate_size
    channels = list(range(0, config.hidden_size, 2))
    kept_heads, kept_neurons = [[0, 2], [1, 3]], [list(range(0, neurons, 2)), list(range(1, neurons, 2))]
    selection = Selection(layers=[2, 4], channels=channels, heads=kept_heads, neurons=kept_neurons)
    _mirror_channels(teacher, channels)
    student = build_student("x", teacher, SENTIMENT, init_from_teacher=True, selection=selection).eval()
    assert (student.config.hidden_size, student.config.num_attention_heads) == (32, 2)
    silenced = build_student("x", teacher, SENTIMENT, init_from_teacher=True, layer_map=[2, 4]).eval()
    for layer in (1, 2):
        _silence(silenced, layer, [h for h in range(config.num_attention_heads) if h not in kept_heads[layer - 1]],
                 [n for n in range(neurons) if n not in kept_neurons[layer - 1]])
    with torch.no_grad():
        torch.testing.assert_close(student(**_batch()).logits, silenced(**_batch()).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_half_width_students_keep_the_same_channels_everywhere(family):
    teacher = _teacher(family)
    shape = pruned_shape(teacher.config, PruningOptions(hidden_size=32))
    assert shape == {"hidden_size": 32, "num_attention_heads": 2,
                     "intermediate_size": (teacher.config.hidden_dim if family == "distilbert" else 128) // 2}
    importance = measure_importance(teacher, _rows(), _tokenizer_stub(), [2, 4], show_progress=False)
    selection = select(importance, [2, 4], shape)
    student = build_student("x", teacher, SENTIMENT, init_from_teacher=True, selection=selection).eval()
    assert student.config.hidden_size == 32
    words = student.get_input_embeddings().weight
    teacher_words = teacher.get_input_embeddings().weight
    if words.shape[1] == 32:  # ELECTRA's narrower embeddings stay as they are; their projection is cut
        torch.testing.assert_close(words, teacher_words[:, selection.channels])
    with torch.no_grad():
        assert torch.isfinite(student(**_batch()).logits).all()


def _tokenizer_stub():
    class Pads:
        pad_token_id, pad_token_type_id, padding_side = 0, 0, "right"
    return Pads()


@pytest.mark.parametrize("measure", ["activations", "gradients"])
def test_units_the_teacher_never_uses_are_pruned_first(measure):
    teacher = _teacher("bert")
    _silence(teacher, 2, [1], list(range(0, 64)))
    with torch.no_grad():  # a head with no output (its values zero) is unused by both measures
        module_at(layers_of(teacher)[1], "attention.self.value").weight[16:32] = 0
        module_at(layers_of(teacher)[1], "attention.self.value").bias[16:32] = 0
        module_at(layers_of(teacher)[1], "intermediate.dense").weight[:64] = 0
        module_at(layers_of(teacher)[1], "intermediate.dense").bias[:64] = -10  # GELU(−10) ≈ 0
    importance = measure_importance(teacher, _rows(), _tokenizer_stub(), [2], measure, show_progress=False)
    selection = select(importance, [2], {"hidden_size": 64, "num_attention_heads": 3, "intermediate_size": 64})
    assert 1 not in selection.heads[0]
    assert selection.neurons[0] == list(range(64, 128))


def test_the_projection_starts_as_the_selection():
    selection = Selection(layers=[1], channels=[0, 5, 7], heads=[[0]], neurons=[[0]])
    projection = selection_projection(selection, 8)
    student_hidden = torch.tensor([[1.0, 2.0, 3.0]])
    assert projection(student_hidden).tolist() == [[1.0, 0, 0, 0, 0, 2.0, 0, 3.0]]


@pytest.mark.parametrize(("options", "message"), [
    (PruningOptions(hidden_size=128), "--hidden-size 128 is not between 1 and the teacher's 64"),
    (PruningOptions(hidden_size=32, heads=4), "pruning keeps the teacher's whole heads of 16 units"),
    (PruningOptions(hidden_size=40), "--hidden-size 40 with 2 heads gives heads of 20 units"),
    (PruningOptions(hidden_size=32, heads=3), "--heads 3 does not divide --hidden-size 32"),
    (PruningOptions(intermediate_size=500), "--intermediate-size 500 is not between 1 and the teacher's 128"),
])
def test_widths_the_family_cannot_take_are_refused(options, message):
    with pytest.raises(InputError, match=message):
        pruned_shape(family_config("bert"), options)


# ----------------------------------------------------------------------------------------------
# Through `tinybert distill`: a pruned student trains through both stages and loads on its own


@pytest.fixture
def teacher_dir(tmp_path, real_tokenizer):
    """A 4-layer, 64-wide classifier (heads of 16 units) standing in for a fine-tuned teacher."""
    torch.manual_seed(1)
    path = tmp_path / "teacher"
    model = TASK_MODELS["sequence"].from_config(family_config("bert", SENTIMENT))
    model.save_pretrained(path)
    real_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def train_file(tmp_path):
    rows = "".join(f"{'a great and warm film' if i % 2 else 'a dull , tired mess'} {'really ' * (i % 7)}\t"
                   f"{'positive' if i % 2 else 'negative'}\n" for i in range(64))
    return write(tmp_path / "train.txt", rows)


def _stage(stage: str, **options) -> DistillConfig:
    training = TrainingConfig(epochs=1, batch_size=16, learning_rate=1e-3, log_every=1, checkpoint_every=1000,
                              schedule="constant", warmup_ratio=0.0)
    return DistillConfig(stage=stage, training=training, max_length=32, **options)


def test_a_pruned_student_distils_through_both_stages_and_loads_with_auto_classes(tmp_path, teacher_dir, train_file,
                                                                                tinybert_cli):
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    result = tinybert_cli("distill", "--stage", "intermediate", "--teacher", teacher_dir, "--train", train_file,
                          "--output", stage1, "--init-from-teacher", "--layers", "2", "--hidden-size", "32",
                          "--prune-vocab", "--prune-by", "activations", "--epochs", "1", "--batch-size", "16",
                          "--max-length", "32")
    assert result.returncode == 0, result.stderr
    selection = Selection.read(stage1)
    assert len(selection.channels) == 32 and len(selection.heads[0]) == 2 and selection.layers == [2, 4]
    # the projections start as the selection; one epoch later they still mostly are
    losses = [json.loads(line) for line in (stage1 / "train_log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(record["att"]) for record in losses if "att" in record)
    result = tinybert_cli("distill", "--stage", "prediction", "--teacher", teacher_dir, "--student", stage1,
                          "--train", train_file, "--eval", train_file, "--output", stage2, "--epochs", "1",
                          "--batch-size", "16")
    assert result.returncode == 0, result.stderr
    model = AutoModelForSequenceClassification.from_pretrained(stage2)
    tokenizer = AutoTokenizer.from_pretrained(stage2)
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(tokenizer) < 30522 // 4
    assert model.config.pad_token_id == tokenizer.pad_token_id
    text = "a great and warm film, really"
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    assert tokenizer.tokenize(text) == teacher_tokenizer.tokenize(text)  # the training data's words are all kept
    with torch.no_grad():
        model(**tokenizer(["a wholly unseen sentence: zebras!"], return_tensors="pt"))
    summary = json.loads((stage2 / "tinybert.json").read_text())["recipe"][-1]["pruned"]
    assert summary.startswith("32 of 64 hidden channels, 2 of 4 heads") and "0.0 % of dev texts tokenized otherwise" \
        in summary
    # stage 2's card names what ranked the units in stage 1, not stage 2's own (default) --prune-by
    assert "ranked by activations" in summary
    # a student pruned narrower trains at twice each stage's default rate (5e-5 constant, then 3e-5)
    for output, rate in ((stage1, 1e-4), (stage2, 6e-5)):
        assert json.loads((output / "tinybert.json").read_text())["recipe"][-1]["learning_rate"] == pytest.approx(rate)


@pytest.mark.parametrize("pruning, scale, rate", [(PruningOptions(prune_vocab=True), 2.0, 1e-3),
                                                  (PruningOptions(hidden_size=32), 1.0, 1e-3),
                                                  (PruningOptions(hidden_size=32), 3.0, 3e-3)])
def test_only_a_student_pruned_narrower_trains_at_the_pruned_rate(tmp_path, teacher_dir, train_file, pruning, scale,
                                                                   rate):
    """The teacher's whole width with its vocabulary pruned is no narrower: it keeps --lr."""
    from tinybert.distillation.task import distill
    config = _stage("intermediate", init_from_teacher=True, layers=2, pruning=pruning, pruned_lr_scale=scale)
    config.training.max_steps = 1
    distill(teacher_dir, "x", train_file, tmp_path / "out", config=config, show_progress=False)
    assert json.loads((tmp_path / "out" / "train_log.jsonl").read_text().splitlines()[0])["lr"] == pytest.approx(rate)


def test_a_pruned_rate_that_is_no_multiple_is_refused(tmp_path, teacher_dir, train_file, tinybert_cli):
    result = tinybert_cli("distill", "--teacher", teacher_dir, "--train", train_file, "--output", tmp_path / "out",
                          "--init-from-teacher", "--hidden-size", "32", "--pruned-lr-scale", "0")
    assert result.returncode == 2 and "--pruned-lr-scale 0.0 is no multiple of a learning rate" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_the_score_loss_pairs_each_kept_head_with_the_head_it_was_cut_from():
    """A one-layer student cut from a teacher whose dropped channels copy kept ones: its heads'
    scores are the teacher's heads 0 and 3 exactly, so the score loss is 0, and only so paired."""
    from tinybert.distillation.distillers import IntermediateDistiller, IntermediateLosses
    teacher = _teacher("bert")
    channels = list(range(0, 64, 2))
    _mirror_channels(teacher, channels)
    selection = Selection(layers=[1], channels=channels, heads=[[0, 3]], neurons=[list(range(128))])
    student = build_student("x", teacher, SENTIMENT, init_from_teacher=True, selection=selection)
    losses = IntermediateLosses(hidden=0.0, embedding=0.0)
    batch = {"input_ids": torch.tensor([[101, 2307, 2143, 102, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0]])}
    paired = IntermediateDistiller(student, teacher, [1], losses, selection=selection).eval()
    assert paired(batch)["att"].item() == pytest.approx(0.0, abs=1e-9)
    crossed = IntermediateDistiller(student, teacher, [1], losses,
                                    selection=Selection([1], channels, [[1, 2]], [list(range(128))])).eval()
    assert crossed(batch)["att"].item() > 1e-6


def test_pruning_options_without_init_from_teacher_are_refused(tmp_path, teacher_dir, train_file, tinybert_cli):
    result = tinybert_cli("distill", "--teacher", teacher_dir, "--train", train_file, "--output", tmp_path / "out",
                          "--hidden-size", "32")
    assert result.returncode == 2
    assert "--hidden-size prunes the teacher, which needs --init-from-teacher" in result.stderr
    assert not (tmp_path / "out").exists()
    result = tinybert_cli("distill", "--teacher", teacher_dir, "--train", train_file, "--output", tmp_path / "out",
                          "--init-from-teacher", "--hidden-size", "48", "--heads", "4")
    assert result.returncode == 2 and "--heads 4 does not divide" not in result.stderr
    assert "pruning keeps the teacher's whole heads of 16 units" in result.stderr and not (tmp_path / "out").exists()


def test_a_pruned_stage_1_resumes_with_the_student_it_chose(tmp_path, teacher_dir, train_file, monkeypatch):
    """The selection is kept in the output directory: a run resumed after a kill cuts the same student
    from it (same layers, same units), without scoring the teacher's units again."""
    from conftest import killed_after
    from tinybert.distillation import task as task_module
    config = _stage("intermediate", init_from_teacher=True, layers=2,
                    pruning=PruningOptions(hidden_size=32, prune_vocab=True))
    config.training.epochs, config.training.checkpoint_every = 2, 2
    output = tmp_path / "stage1"
    with killed_after(task_module, 5):
        task_module.distill(teacher_dir, "x", train_file, output, config=config, show_progress=False)
    chosen = Selection.read(output)
    from tinybert.distillation import start as start_module
    scored = []
    monkeypatch.setattr(start_module, "measure_importance", lambda *args, **kwargs: scored.append(args))
    task_module.distill(teacher_dir, "x", train_file, output, config=config, show_progress=False)
    assert not scored and Selection.read(output) == chosen
    state = json.loads((output / "training_state.json").read_text())
    assert state["steps"] == 8  # 2 epochs of 64 rows in batches of 16: the resumed run finished them


def test_sizes_times_candidate_shapes_and_picks_the_largest_within_a_budget(tmp_path, teacher_dir, train_file,
                                                                             tinybert_cli):
    figures = tmp_path / "sizes.json"
    result = tinybert_cli("sizes", "--teacher", teacher_dir, "--data", train_file, "--max-length", "16",
                          "--latency-ms", "1000", "--json", figures)
    assert result.returncode == 0, result.stderr[-2000:]
    sizes = json.loads(figures.read_text())
    candidates = sizes["candidates"]
    assert len(candidates) >= 4 and all(c["latency_ms"] > 0 and c["examples_per_s"] > 0 for c in candidates)
    assert {(c["layers"], c["hidden_size"]) for c in candidates} >= {(4, 64), (2, 32), (1, 16)}
    assert all(c["vocab_size"] < sizes["teacher"]["vocab_size"] for c in candidates)  # pruned to the data's tokens
    largest = max(candidates, key=lambda c: c["compute_params"])
    assert sizes["picked"] == largest and largest["pareto"]  # every shape fits 1 s: the largest
    for shape in candidates:  # a shape both slower and smaller than another is not in the Pareto set
        beaten = any(o["latency_ms"] < shape["latency_ms"] and o["compute_params"] > shape["compute_params"]
                     for o in candidates)
        assert not (beaten and shape["pareto"])
    assert "→" in result.stdout and "*" in result.stdout
    refused = tinybert_cli("sizes", "--teacher", teacher_dir, "--latency-ms", "0.000001")
    assert refused.returncode == 2 and "no candidate shape runs within" in refused.stderr
