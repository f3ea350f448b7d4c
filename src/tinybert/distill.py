"""Task distillation: stage 1 (embeddings, hidden states, attention scores) and stage 2 (logits).

The student, the projections and the loss computation live in one ``Distiller`` module, so
accelerate / DDP wrap and train exactly the trainable parts; the teacher sits beside it
(unregistered, so it is neither trained nor synchronised), in eval mode under inference mode.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from . import evaluation
from .attention import enable_score_capture, recording_scores
from .data import DataOptions, LabelSpace, encode, train_loader
from .errors import InputError
from .legacy import PROJECTIONS_FILE
from .losses import attention_loss, hidden_loss, prediction_loss
from .models import (build_student, check_model_dir, count_parameters, label_space_of, load_classifier, load_tokenizer,
                     non_embedding_parameters, parse_layer_map, save_model_dir, uniform_layer_map)
from .training import STATE_FILE, TrainingConfig, is_complete, make_accelerator, run_training

logger = logging.getLogger(__name__)

STAGES = ("intermediate", "prediction")


@dataclass
class LossWeights:
    attention: float = 1.0
    hidden: float = 1.0
    embedding: float = 1.0
    prediction: float = 1.0


def stage_defaults(stage: str, pairs: bool) -> tuple[TrainingConfig, int]:
    """The paper's settings: stage 1 lr 5e-5 constant, 20 epochs; stage 2 lr 3e-5 linear with
    10% warm-up, 3 epochs; batch 32; max length 64 for single texts, 128 for pairs."""
    if stage == "intermediate":
        training = TrainingConfig(epochs=20, batch_size=32, learning_rate=5e-5, schedule="constant", warmup_ratio=0.0)
    else:
        training = TrainingConfig(epochs=3, batch_size=32, learning_rate=3e-5, schedule="linear", warmup_ratio=0.1)
    return training, 128 if pairs else 64


@dataclass
class DistillConfig:
    stage: str = "intermediate"
    training: TrainingConfig | None = None  # None: stage_defaults
    max_length: int | None = None  # None: 64 for single texts, 128 for pairs
    weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = 1.0
    shared_projection: bool = False  # one W for embeddings and hidden states, as the reference code
    layers: int | None = None
    init_from_teacher: bool = False
    layer_map: str | None = None  # e.g. "3,6,9,12"; None: uniform
    metric: str | None = None
    eval_batch_size: int = 64


class Distiller(torch.nn.Module):
    def __init__(self, student, teacher, stage: str, layer_map: list[int], weights: LossWeights,
                 temperature: float, regression: bool, shared_projection: bool):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        self.student = student
        self._teacher = [teacher]  # a list keeps it out of parameters(), state_dict() and DDP
        self.stage = stage
        self.layer_map = layer_map
        self.weights = weights
        self.temperature = temperature
        self.regression = regression
        student_width, teacher_width = student.config.hidden_size, teacher.config.hidden_size
        self.hidden_projection = torch.nn.Linear(student_width, teacher_width)
        self.embedding_projection = None if shared_projection else torch.nn.Linear(student_width, teacher_width)
        if stage == "intermediate":
            if student.config.num_attention_heads != teacher.config.num_attention_heads:
                raise InputError(
                    f"the attention loss needs equal head counts: the student has "
                    f"{student.config.num_attention_heads}, the teacher {teacher.config.num_attention_heads}",
                    fix="build the student with the teacher's number of attention heads")
            enable_score_capture(student)
            enable_score_capture(teacher)

    @property
    def teacher(self):
        return self._teacher[0]

    def forward(self, batch: dict) -> dict:
        batch = {key: value for key, value in batch.items() if key != "labels"}
        if self.stage == "prediction":
            with torch.inference_mode():
                teacher_logits = self.teacher(**batch).logits
            student_logits = self.student(**batch).logits
            loss = prediction_loss(student_logits, teacher_logits.clone(), self.regression, self.temperature)
            return {"loss": self.weights.prediction * loss, "pred": loss}
        return self._intermediate_losses(batch)

    def _intermediate_losses(self, batch: dict) -> dict:
        mask = batch["attention_mask"]
        teacher_layers = [layer - 1 for layer in self.layer_map]
        with torch.inference_mode(), recording_scores(self.teacher, teacher_layers) as teacher_scores:
            teacher_hidden = self.teacher.base_model(**batch, output_hidden_states=True).hidden_states
        student_layers = range(len(self.layer_map))
        with recording_scores(self.student, student_layers) as student_scores:
            student_hidden = self.student.base_model(**batch, output_hidden_states=True).hidden_states
        # tensors made under inference mode cannot enter autograd; clones can
        attention = sum(attention_loss(student_scores[m], teacher_scores[t].clone(), mask)
                        for m, t in zip(student_layers, teacher_layers))
        hidden = sum(hidden_loss(student_hidden[m + 1], teacher_hidden[t + 1].clone(), mask, self.hidden_projection)
                     for m, t in zip(student_layers, teacher_layers))
        embedding = hidden_loss(student_hidden[0], teacher_hidden[0].clone(), mask,
                                self.embedding_projection or self.hidden_projection)
        total = (self.weights.attention * attention + self.weights.hidden * hidden
                 + self.weights.embedding * embedding)
        return {"loss": total, "att": attention, "hid": hidden, "emb": embedding}

    def projection_state(self) -> dict[str, torch.Tensor]:
        state = {f"hidden.{k}": v for k, v in self.hidden_projection.state_dict().items()}
        if self.embedding_projection is not None:
            state.update({f"embedding.{k}": v for k, v in self.embedding_projection.state_dict().items()})
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def load_projection_state(self, path: Path) -> None:
        """Continues from a student's saved projections when they fit this teacher's width."""
        state = load_file(path)
        for prefix, projection in (("hidden.", self.hidden_projection), ("embedding.", self.embedding_projection)):
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if projection is None or not part:
                continue
            if part["weight"].shape != projection.weight.shape:
                logger.info("not reusing %s projection from %s: shape %s, needed %s", prefix[:-1], path,
                            tuple(part["weight"].shape), tuple(projection.weight.shape))
                continue
            projection.load_state_dict(part)


@dataclass
class Plan:
    stage: str
    teacher_layers: int
    student_layers: int
    layer_map: list[int]
    projections: dict[str, list[int]]
    teacher_params: int
    student_params: int
    expected_speedup: float

    def describe(self) -> str:
        mapping = ", ".join(f"student {m} ← teacher {t}" for m, t in enumerate(self.layer_map, start=1))
        lines = [f"stage: {self.stage}",
                 f"layers: teacher {self.teacher_layers}, student {self.student_layers}",
                 f"mapping: embeddings ← embeddings; {mapping}"]
        lines += [f"projection {name}: {shape[0]} → {shape[1]}" for name, shape in self.projections.items()]
        lines += [f"parameters: teacher {self.teacher_params:,}, student {self.student_params:,} "
                  f"({self.teacher_params / self.student_params:.1f}× smaller)",
                  f"expected speed-up: about {self.expected_speedup:.1f}× (ratio of per-token compute)"]
        return "\n".join(lines)


def _prepare(teacher_dir, student, train_data, config: DistillConfig):
    label_space = label_space_of(teacher_dir)
    if label_space is None:
        raise InputError("the teacher has no task head", path=teacher_dir,
                         fix="fine-tune it first with `tinybert finetune`, then distil from the result")
    teacher = load_classifier(teacher_dir).eval()
    data_labels = LabelSpace.infer(train_data)
    if label_space.is_regression != data_labels.is_regression or \
            not set(data_labels.names) <= set(label_space.names):
        raise InputError(f"the data's labels ({', '.join(data_labels.names) or 'scores'}) do not fit the "
                         f"teacher's ({', '.join(label_space.names) or 'scores'})", path=train_data.path,
                         fix="distil on data of the task the teacher was fine-tuned for")
    teacher_layers = teacher.config.num_hidden_layers

    def mapping(student_layers: int) -> list[int]:
        if config.layer_map:
            return parse_layer_map(config.layer_map, student_layers, teacher_layers)
        return uniform_layer_map(student_layers, teacher_layers)

    if config.init_from_teacher:  # the mapping also picks which teacher layers are copied
        layer_map = mapping(config.layers or teacher_layers)
        student_model = build_student(student, teacher, label_space, layers=len(layer_map),
                                      init_from_teacher=True, layer_map=layer_map)
    else:
        student_model = build_student(student, teacher, label_space, layers=config.layers)
        layer_map = mapping(student_model.config.num_hidden_layers)
    return label_space, teacher, student_model, layer_map


def build_initial_student(teacher_dir, student, train_data, config: DistillConfig):
    """The student exactly as stage 1 starts it (shape and initialisation), e.g. for a baseline
    fine-tuned without distillation."""
    return _prepare(teacher_dir, student, train_data, config)[2]


def plan(teacher_dir, student, train_data, config: DistillConfig) -> Plan:
    _, teacher, student_model, layer_map = _prepare(teacher_dir, student, train_data, config)
    width_s, width_t = student_model.config.hidden_size, teacher.config.hidden_size
    projections = {"W_h (hidden)": [width_s, width_t]}
    if not config.shared_projection:
        projections["W_e (embeddings)"] = [width_s, width_t]
    return Plan(config.stage, teacher.config.num_hidden_layers, student_model.config.num_hidden_layers,
                layer_map, projections, count_parameters(teacher), count_parameters(student_model),
                non_embedding_parameters(teacher) / non_embedding_parameters(student_model))


def distill(teacher_dir: str | os.PathLike, student: str, train_path: str | os.PathLike,
            output_dir: str | os.PathLike, eval_path: str | os.PathLike | None = None,
            config: DistillConfig | None = None, data_options: DataOptions | None = None,
            show_progress: bool = True) -> dict:
    """Run one distillation stage; the student goes to ``output_dir`` as a plain
    save_pretrained classifier with the projections beside it in ``distill_projections.safetensors``.

    ``student`` is a preset name (``tinybert-4l-312``, ``tinybert-6l-768``) or a directory (a
    general student, or the stage-1 output for stage 2).
    """
    config = config or DistillConfig()
    if config.stage not in STAGES:
        raise InputError(f"unknown stage {config.stage!r}", fix="use --stage intermediate or --stage prediction")
    output_dir = Path(output_dir)
    if is_complete(output_dir):
        logger.info("%s is already complete; delete it to distil again", output_dir)
        return json.loads((output_dir / STATE_FILE).read_text())
    data_options = data_options or DataOptions()
    train_data = data_options.read(train_path)
    default_training, default_length = stage_defaults(config.stage, train_data.has_pairs)
    training = config.training or default_training
    max_length = config.max_length or default_length

    accelerator = make_accelerator(training)
    set_seed(training.seed)
    tokenizer = load_tokenizer(teacher_dir)
    label_space, teacher, student_model, layer_map = _prepare(teacher_dir, student, train_data, config)
    distiller = Distiller(student_model, teacher.to(accelerator.device), config.stage, layer_map, config.weights,
                          config.temperature, label_space.is_regression, config.shared_projection)
    if config.stage == "intermediate" and Path(student).is_dir():
        student_projections = check_model_dir(student, "--student") / PROJECTIONS_FILE
        if student_projections.is_file():
            distiller.load_projection_state(student_projections)
    logger.info("distilling (%s) %s → %s student, layer map %s", config.stage, teacher_dir,
                f"{student_model.config.num_hidden_layers}-layer", layer_map)

    encoded = encode(train_data, tokenizer, max_length, label_space, show_progress=show_progress)
    loader = train_loader(encoded, tokenizer, training.batch_size, training.seed)
    metric = config.metric or evaluation.default_metric(label_space)
    evaluate = None
    if eval_path is not None and config.stage == "prediction":
        eval_encoded = encode(data_options.read(eval_path, limit=False), tokenizer, max_length, label_space,
                              show_progress=show_progress)
        eval_labels = evaluation.labels_of(eval_encoded)

        def evaluate(unwrapped):
            logits = evaluation.predict_logits(unwrapped.student, eval_encoded, tokenizer,
                                               config.eval_batch_size, device=accelerator.device,
                                               show_progress=show_progress)
            return evaluation.compute_metrics(logits, eval_labels, label_space)

    def save(unwrapped, _metrics):
        student_to_save = unwrapped.student
        student_to_save.set_attn_implementation("sdpa")
        save_model_dir(student_to_save, tokenizer, output_dir)
        if config.stage == "intermediate":
            enable_score_capture(student_to_save)
        save_file(unwrapped.projection_state(), str(output_dir / PROJECTIONS_FILE))
        (output_dir / "distill_config.json").write_text(json.dumps(
            {"teacher": str(teacher_dir), "layer_map": layer_map, **asdict(config),
             "training": asdict(training), "max_length": max_length}, indent=2, default=str))

    return run_training(output_dir=output_dir, config=training, module=distiller, train_loader=loader,
                        compute_losses=lambda module, batch: module(batch), evaluate=evaluate, metric=metric,
                        on_improved=save, accelerator=accelerator, description=f"distilling ({config.stage})")
