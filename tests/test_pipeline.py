import json
import subprocess
import sys
import time

import pytest
import yaml

from conftest import write
from tinybert.errors import InputError
from tinybert.pipeline import DONE_FILE, load_config


def _data(tmp_path):
    def rows(count, offset):
        return "".join(f"{'a great and warm film' if i % 2 else 'a dull , tired mess'} {'really ' * (i % 5)}\t"
                       f"{'pos' if i % 2 else 'neg'}\n" for i in range(offset, offset + count))
    return write(tmp_path / "train.txt", rows(64, 0)), write(tmp_path / "dev.txt", rows(24, 64))


@pytest.fixture
def pipeline_config(tmp_path, tiny_model_dir):
    train, dev = _data(tmp_path)
    config = {
        "run_dir": str(tmp_path / "run"),
        "data": {"train": str(train), "dev": str(dev)},
        "finetune": {"model": str(tiny_model_dir), "epochs": 2, "lr": 1e-3, "batch_size": 16, "max_length": 32},
        "augment": {"run": False},
        "intermediate": {"init_from_teacher": True, "layers": 1, "epochs": 60, "batch_size": 8, "lr": 1e-3, "max_length": 32,
                         "checkpoint_every": 5},
        "prediction": {"epochs": 2, "lr": 1e-3},
        "baseline": {"epochs": 1},
        "evaluate": {"no_latency": True, "max_length": 32},
        "export": {"int8": False, "max_length": 32},
    }
    return write(tmp_path / "pipeline.yaml", yaml.safe_dump(config))


def test_killed_pipeline_resumes_the_stage_and_skips_finished_ones(tmp_path, pipeline_config, tinybert_cli):
    run = tmp_path / "run"
    checkpoint = run / "intermediate" / "checkpoint" / "training_state.json"
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "tinybert.cli", "pipeline", str(pipeline_config)],
                                   stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        process.kill()
        process.wait()
    assert checkpoint.exists(), (tmp_path / "first.log").read_text()[-3000:]
    assert (run / "teacher" / DONE_FILE).is_file() and not (run / "intermediate" / DONE_FILE).exists()
    teacher_weights = (run / "teacher" / "model.safetensors").stat().st_mtime_ns

    second = tinybert_cli("pipeline", pipeline_config)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stage teacher: already complete, skipped" in second.stderr
    assert "stage intermediate: resuming the interrupted run" in second.stderr
    assert (run / "teacher" / "model.safetensors").stat().st_mtime_ns == teacher_weights
    steps = [json.loads(line)["step"] for line in (run / "intermediate" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(10, 481, 10))  # 60 epochs × 8 batches, logged every 10: none lost, none twice
    # stage 2 starts from stage 1's output, not from a fresh copy of the teacher
    assert json.loads((run / "student" / "distill_config.json").read_text())["init_from_teacher"] is False
    results = json.loads((run / "results.json").read_text())
    assert set(results["evaluation"]) == {"teacher", "student", "baseline"}
    assert results["export"]["fp32_parity_passed"]
    report = (run / "report.md").read_text()
    assert "distilled student" in report and "(plots/losses.png)" in report and (run / "plots" / "losses.png").is_file()
    assert "<table>" in (run / "report.html").read_text()

    # a changed setting re-runs its stage and the stages after it, not those before
    third = tinybert_cli("pipeline", pipeline_config, "--set", "prediction.epochs=1")
    assert third.returncode == 0, third.stderr[-3000:]
    for stage in ("teacher", "intermediate", "baseline"):
        assert f"stage {stage}: already complete, skipped" in third.stderr
    for stage in ("student", "evaluate", "export"):
        assert f"stage {stage}: settings or inputs changed since it ran; starting it again" in third.stderr


def test_unknown_key_names_the_file_line_and_closest_key(tmp_path, tinybert_cli):
    config = write(tmp_path / "bad.yaml", "run_dir: x\nfinetune:\n  model: m\n  epoch: 3\n")
    result = tinybert_cli("pipeline", config)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{config}, line 4: unknown key finetune.epoch" in result.stderr
    assert "did you mean 'epochs'?" in result.stderr


@pytest.mark.parametrize("text, overrides, message", [
    ("finetune:\n  epochs: many\n", [], "line 2: finetune.epochs must be a number"),
    ("fine_tune:\n  epochs: 1\n", [], "line 1: unknown section 'fine_tune'"),
    ("intermediate:\n  stage: prediction\n", [], "line 2: unknown key intermediate.stage"),
    ("prediction:\n  layers: 2\n", [], "unknown key prediction.layers"),
    ("export:\n  int8: maybe\n", [], "export.int8 is a switch"),
    ("augment:\n  run: no thanks\n", [], "augment.run is a switch"),
    ("data:\n  max_examples: 1.5\n", [], "data.max_examples must be a whole number"),
    ("", ["finetune.lrr=1"], "unknown key 'finetune.lrr' in --set finetune.lrr=1"),
    ("", ["augment.field=third"], "augment.field is 'third'"),
    ("finetune: [1, 2]\n", [], "section 'finetune' must be a mapping"),
    ("finetune:\n  epochs: [\n", [], "not valid YAML"),
])
def test_bad_configs_are_clear_errors(tmp_path, text, overrides, message):
    config = write(tmp_path / "c.yaml", text)
    with pytest.raises(InputError) as error:
        load_config(config, overrides)
    assert message in str(error.value)


def test_a_training_setting_no_run_can_use_is_refused_before_any_stage(tmp_path, pipeline_config):
    from tinybert.pipeline.checks import check_training_sections
    # stage 2 takes stage 1's patience: the message names where it was given
    with pytest.raises(InputError, match=r"--set intermediate.patience=-1: intermediate.patience -1 is no number"):
        check_training_sections(load_config(pipeline_config, ["intermediate.patience=-1"]))


def test_show_config_and_quick_overrides(tmp_path, pipeline_config, tinybert_cli):
    config = write(tmp_path / "q.yaml", pipeline_config.read_text() + "quick:\n  finetune.epochs: 1\n  run_dir: elsewhere\n")
    shown = yaml.safe_load(tinybert_cli("pipeline", config, "--quick", "--show-config", "--set", "finetune.lr=0.5").stdout)
    assert shown["run_dir"] == "elsewhere" and shown["finetune"]["epochs"] == 1.0 and shown["finetune"]["lr"] == 0.5
    assert shown["intermediate"]["temperature"] == 1.0  # defaults are shown too


@pytest.mark.parametrize("name", ["demo", "sst2-bert-base", "rte-pairs", "stsb-regression", "chinese", "conll2003-ner",
                                  "squad-qa"])
def test_shipped_configs_are_valid(name):
    from conftest import REPO
    config = load_config(REPO / "configs" / f"{name}.yaml", quick=True)
    assert config.values["finetune"]["model"] and config.values["data"]["dir"]


def test_augment_reruns_for_a_new_seed_but_not_for_batch_size_or_runtime(tmp_path, pipeline_config, tinybert_cli):
    from tinybert.resources import demo_word_vectors
    config = yaml.safe_load(pipeline_config.read_text())
    config["augment"] = {"run": True, "word_vectors": str(demo_word_vectors()), "variants": 2, "compare_without": True}
    config["data"]["max_examples"] = 16
    config["intermediate"]["epochs"] = 1
    config["baseline"]["epochs"] = 0.1
    path = write(tmp_path / "augmented.yaml", yaml.safe_dump(config))
    first = tinybert_cli("pipeline", path)
    assert first.returncode == 0, first.stderr[-3000:]
    augmented = (tmp_path / "run" / "augment" / "train_aug.txt").read_bytes()
    # data.max_examples cuts the data before augmentation; the stages train on all that augmentation made
    rows = augmented.decode().splitlines()
    assert 16 < len(rows) <= 16 * 3  # 16 rows and up to 2 variants each, not all 64 rows of train.txt
    stage1 = json.loads((tmp_path / "run" / "intermediate" / "training_state.json").read_text())
    assert stage1["steps"] == -(-len(rows) // 8)  # batch size 8, one epoch
    without = json.loads((tmp_path / "run" / "intermediate_original_data" / "training_state.json").read_text())
    assert without["steps"] == 2  # the original data keeps the cut: 16 rows
    # its stage 2 reads the teacher's outputs on them from the augmented run's cache: the same rows
    assert "the teacher's outputs on 16 of 16 examples read from" in first.stderr
    assert "computing the teacher's outputs on 0 examples once" in first.stderr

    same_output = tinybert_cli("pipeline", path, "--set", "augment.batch_size=8", "--set", "augment.mlm_runtime=torch")
    assert same_output.returncode == 0, same_output.stderr[-3000:]
    for stage in ("augment", "intermediate", "student"):
        assert f"stage {stage}: already complete, skipped" in same_output.stderr

    new_seed = tinybert_cli("pipeline", path, "--set", "augment.seed=1")
    assert new_seed.returncode == 0, new_seed.stderr[-3000:]
    for stage in ("augment", "intermediate", "student"):
        assert f"stage {stage}: settings or inputs changed since it ran; starting it again" in new_seed.stderr
    assert (tmp_path / "run" / "augment" / "train_aug.txt").read_bytes() != augmented


def test_the_student_learns_from_originals_variants_and_unlabelled_text_and_the_report_warns_of_a_rising_teacher(
        tmp_path, tiny_model_dir, tinybert_cli):
    from huggingface_hub import ModelCard
    from tinybert.resources import demo_word_vectors

    def scored(numbers):  # scores: the teacher's dev Pearson moves with every epoch
        return "".join(f"{'a great and warm film' if i % 2 else 'a dull , tired mess'} {'really ' * (i % 5)}\t"
                       f"{(4.5 if i % 2 else 0.5) + (i % 5) * (0.1 if i % 2 else -0.1):.1f}\n" for i in numbers)
    train, dev = write(tmp_path / "train.txt", scored(range(32))), write(tmp_path / "dev.txt", scored(range(32, 48)))
    texts = write(tmp_path / "reviews.txt", "".join(f"{'a warm' if i % 3 else 'a tired'} film, number {i}\n"
                                                    for i in range(12)))
    run = tmp_path / "run"
    config = {"run_dir": str(run), "data": {"train": str(train), "dev": str(dev), "unlabeled": [str(texts)]},
              "finetune": {"model": str(tiny_model_dir), "epochs": 2, "lr": 1e-3, "batch_size": 8, "max_length": 32},
              "augment": {"word_vectors": str(demo_word_vectors()), "variants": 2, "augment_first": 8},
              "intermediate": {"init_from_teacher": True, "layers": 1, "epochs": 1, "batch_size": 8, "max_length": 32,
                               "log_every": 1},
              "prediction": {"epochs": 1, "hard_label_weight": 0.5},
              "baseline": {"run": False}, "evaluate": {"no_latency": True, "max_length": 32}, "export": {"run": False}}
    result = tinybert_cli("pipeline", write(tmp_path / "pipeline.yaml", yaml.safe_dump(config)))
    assert result.returncode == 0, result.stderr[-3000:]

    # both stages train on the 32 original rows, the variants augmentation marked, and the 12 unlabelled texts
    augmented = (run / "augment" / "train_aug.txt").read_text().splitlines()
    variants = sum(line.endswith("\t1") for line in augmented[1:])
    assert augmented[0] == "text_a\tlabel\taugmented" and len(augmented) - 1 == 32 + variants and variants > 8
    expected = {"original": 32, "augmented": variants, "unlabeled": 12}
    record = json.loads((run / "student" / "tinybert.json").read_text())
    assert [(step["stage"], step["examples"]) for step in record["recipe"]] == [("intermediate", expected),
                                                                                ("prediction", expected)]
    for stage in ("intermediate", "student"):
        summary = json.loads((run / stage / "training_state.json").read_text())
        assert summary["steps"] == -(-sum(expected.values()) // 8)  # every row, in batches of 8
    logged = (run / "student" / "train_log.jsonl").read_text().splitlines()
    assert any(r.get("gold", 0) > 0 for r in map(json.loads, logged))

    # the teacher was still improving when its 2 epochs ended: the report and the log say so
    teacher = json.loads((run / "teacher" / "training_state.json").read_text())
    assert teacher["steps"] == 2 * 32 // 8  # the teacher learnt from the labelled rows alone
    pearson = [r["eval"]["pearson"] for r in teacher["history"]]
    assert teacher["metric"] == "pearson" and pearson[1] > pearson[0]
    warning = f"The teacher's dev pearson was still rising at its last evaluation ({pearson[0]:.4f} → {pearson[1]:.4f})"
    report = (run / "report.md").read_text()
    assert warning in report and "Raise finetune.epochs (now 2)" in report and warning in result.stderr

    # each model's card: the Hub's metadata, with the measured dev and test metrics
    results = json.loads((run / "results.json").read_text())
    for name in ("teacher", "student"):
        card = ModelCard.load(run / name / "README.md")
        measured = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
        best = json.loads((run / name / "training_state.json").read_text())["best"]
        assert measured[("dev", "pearson")] == best["pearson"]
        assert measured[("test", "pearson")] == results["evaluation"][name]["pearson"]
        assert "tinybert pipeline" in card.text and "## How it was made" in card.text
    assert card.data.base_model is None and f"Base model: `{run / 'teacher'}`" in card.text and "retention" in card.text


class _Stopped(Exception):
    pass


def _run_stages(config_path, monkeypatch, *stages):
    """Runs the pipeline of ``config_path`` in this process, as far as the first stage not in ``stages``."""
    from tinybert.pipeline import run as run_module
    real = run_module._Run.stage

    def only(self, name, inputs, action):
        if name not in stages:
            raise _Stopped(name)
        return real(self, name, inputs, action)
    monkeypatch.setattr(run_module._Run, "stage", only)
    with pytest.raises(_Stopped):
        run_module.run_pipeline(load_config(config_path))
    monkeypatch.setattr(run_module._Run, "stage", real)


def test_an_augmented_file_from_before_rows_were_marked_is_made_again(tmp_path, tiny_model_dir, monkeypatch, caplog):
    from tinybert.artifacts import Stamp
    from tinybert.resources import demo_word_vectors
    train, dev = _data(tmp_path)
    config = write(tmp_path / "pipeline.yaml", yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "data": {"train": str(train), "dev": str(dev), "max_examples": 8},
        "finetune": {"teacher_dir": str(tiny_model_dir)},
        "augment": {"word_vectors": str(demo_word_vectors()), "variants": 1}}))
    _run_stages(config, monkeypatch, "augment")
    augmented = tmp_path / "run" / "augment" / "train_aug.txt"
    assert augmented.read_text().splitlines()[0] == "text_a\tlabel\taugmented"
    # as an older tinybert left it: no mark column, and a stamp whose inputs say nothing of marks
    augmented.write_text("".join(line.rsplit("\t", 1)[0] + "\n" for line in augmented.read_text().splitlines()[1:]))
    done = Stamp(tmp_path / "run" / "augment" / DONE_FILE)
    old = done.read()
    done.write({key: value for key, value in old["inputs"].items() if key != "marks"}, seconds=old["seconds"])
    with caplog.at_level("INFO", logger="tinybert"):
        _run_stages(config, monkeypatch, "augment")
    assert "stage augment: settings or inputs changed since it ran; starting it again" in caplog.text
    assert augmented.read_text().splitlines()[0] == "text_a\tlabel\taugmented"


def test_trackers_are_checked_before_the_first_stage_and_logging_settings_redo_no_stage(tmp_path, real_tokenizer,
                                                                                         tinybert_cli):
    import torch
    from transformers import BertForSequenceClassification
    from conftest import tiny_bert_config
    torch.manual_seed(1)
    teacher = tmp_path / "teacher"
    BertForSequenceClassification(tiny_bert_config(num_labels=2, id2label={0: "neg", 1: "pos"},
                                                   label2id={"neg": 0, "pos": 1})).save_pretrained(teacher)
    real_tokenizer.save_pretrained(teacher)
    train, dev = _data(tmp_path)
    run = tmp_path / "run"
    config = write(tmp_path / "pipeline.yaml", yaml.safe_dump({
        "run_dir": str(run), "data": {"train": str(train), "dev": str(dev), "max_examples": 16},
        "finetune": {"teacher_dir": str(teacher)}, "augment": {"run": False}, "baseline": {"run": False},
        "intermediate": {"init_from_teacher": True, "layers": 1, "epochs": 1, "batch_size": 8, "max_length": 32},
        "prediction": {"epochs": 1}, "evaluate": {"no_latency": True, "max_length": 32},
        "export": {"run": False}, "report": {"run": False}}))
    # stage 2's tracker is missing: said before stage 1 starts, not once it is done
    refused = tinybert_cli("pipeline", config, "--set", "prediction.report_to=[wandb]")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert "prediction.report_to wandb needs the wandb package" in refused.stderr
    assert not (run / "intermediate").exists()

    first = tinybert_cli("pipeline", config)
    assert first.returncode == 0, first.stderr[-3000:]
    # how often a stage logs or saves, whether it compiles, where it reports and whether stage 2 reads the
    # teacher's outputs from their cache change none of its results
    again = tinybert_cli("pipeline", config, "--set", "intermediate.log_every=1", "--set",
                         "intermediate.checkpoint_every=3", "--set", "intermediate.compile=never", "--set",
                         "prediction.report_to=[tensorboard]", "--set", "prediction.no_teacher_cache=true")
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("intermediate", "student", "evaluate"):
        assert f"stage {stage}: already complete, skipped" in again.stderr


def test_students_beside_the_main_one_share_the_teacher_and_data_and_the_report_weighs_size_against_quality(
        tmp_path, pipeline_config, tinybert_cli):
    config = yaml.safe_load(pipeline_config.read_text())
    config["intermediate"]["epochs"] = 1
    config["prediction"]["epochs"] = 1
    config["data"]["max_examples"] = 32
    config["baseline"]["run"] = False
    config["export"]["int8"] = True
    config["students"] = {"pruned": {"hidden_size": 16, "prune_vocab": True, "pruned_lr_scale": 3},
                          "static": {"student": "static", "static_dims": 16, "static_lr": 0.01, "epochs": 2},
                          "random": {"init_from_teacher": False, "student": str(write(tmp_path / "sizes.json", json.dumps(
                              {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32,
                               "num_attention_heads": 2}))), "attention_loss": "relations"}}
    path = write(tmp_path / "students.yaml", yaml.safe_dump(config))
    result = tinybert_cli("pipeline", path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert set(results["students"]) == {"pruned", "static", "random"}
    assert {"student", "student_pruned", "student_random", "student_static", "student_pruned_onnx_int8",
            "student_static_onnx_int8"} <= set(results["evaluation"])
    assert not (run / "intermediate_static").exists()  # a static student has stage 2 alone
    # a student of `students:` starts where its own `student:` says (sizes.json: 16 wide), not where the main one does
    assert json.loads((run / "student_random" / "config.json").read_text())["hidden_size"] == 16
    static_state = json.loads((run / "student_static" / "training_state.json").read_text())
    assert static_state["steps"] == 2 * 4  # its own epochs (2 of 32 rows in batches of 8), not stage 2's
    assert results["evaluation"]["student_pruned"]["params"] < results["evaluation"]["student"]["params"] / 4
    assert (run / "intermediate_pruned" / "pruning.json").is_file()
    # the pruned student's own pruned_lr_scale holds in both its stages; the main student, whole, keeps lr
    for stage, rate in (("intermediate_pruned", 3e-3), ("student_pruned", 3e-3), ("intermediate", 1e-3),
                        ("student", 1e-3)):
        recipe = json.loads((run / stage / "tinybert.json").read_text())["recipe"]
        assert recipe[-1]["learning_rate"] == pytest.approx(rate)
    assert not (run / "intermediate_random" / "pruning.json").exists()
    assert result.stderr.count("computing the teacher's outputs") == 1  # every student's stage 2 reads one cache
    report = (run / "report.md").read_text()
    assert "## Size and speed against quality" in report and (run / "plots" / "tradeoffs.png").is_file()
    assert "student pruned, ONNX int8" in report
    assert "The smallest student keeping 97 %" in report or "No student keeps 97 %" in report
    # stage 2's learning rate is no setting of the static student (it trains at static_lr): it is not made again
    # nor is pruned_lr_scale one of a student at the teacher's width (the main one, the random one)
    again = tinybert_cli("pipeline", path, "--set", "prediction.lr=0.002", "--set", "intermediate.pruned_lr_scale=1.5")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage student_static: already complete, skipped" in again.stderr
    assert "stage student: already complete" not in again.stderr
    assert "stage intermediate: already complete, skipped" in again.stderr
    assert "stage intermediate_random: already complete, skipped" in again.stderr

    # a width, a layer count or a static setting no student can take stops the run before any stage, naming
    # where it was given
    for setting, message in (("students.pruned.hidden_size=12", "students.pruned.hidden_size 12 with 1 heads gives "
                                                                "heads of 12 units"),
                             ("students.random.layers=0", "students.random.layers 0 is no layer count"),
                             ("prediction.pruned_lr_scale=0", "prediction.pruned_lr_scale 0.0 is no multiple of a "
                                                              "learning rate"),
                             ("students.static.layers=2", "students.static.layers shapes a transformer student"),
                             ("students.pruned.report_to=[wandb]", "students.pruned.report_to wandb needs the wandb "
                                                                   "package")):
        refused = tinybert_cli("pipeline", path, "--set", setting)
        assert refused.returncode == 2 and message in refused.stderr and "--set " + setting in refused.stderr
        assert "stage " not in refused.stderr
    # a static student's shape is its own: its settings are named in its own section even where not given there
    config["students"] = {"static": {"student": "static", "layers": 2}}
    refused = tinybert_cli("pipeline", write(tmp_path / "static.yaml", yaml.safe_dump(config)))
    assert refused.returncode == 2 and "the static student's width is students.static.static_dims" in refused.stderr


def test_a_static_student_of_tagging_data_is_refused_before_the_teacher_is_fine_tuned(tmp_path, pipeline_config,
                                                                                     tinybert_cli):
    """The teacher to be fine-tuned has no task yet: the data's task decides (it was refused only at the
    static student's stage, after fine-tuning and stage 1 and 2 of the main student)."""
    config = yaml.safe_load(pipeline_config.read_text())
    tags = write(tmp_path / "ner.txt", "The O\nfilm O\nParis B-LOC\n\nA O\nbook O\n")
    config["data"] = {"train": str(tags), "dev": str(tags)}
    config["students"] = {"static": {"student": "static"}}
    refused = tinybert_cli("pipeline", write(tmp_path / "ner.yaml", yaml.safe_dump(config)))
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert (f"ner.yaml: the static student predicts a label or a score per text; the training data {tags} is token "
            "data") in refused.stderr
    assert "stage " not in refused.stderr and not (tmp_path / "run" / "teacher").exists()
