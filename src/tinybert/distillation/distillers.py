"""The two TinyBERT objectives, each a module over a student and its frozen teacher.

``IntermediateDistiller`` (task stage 1, and general distillation) matches attention scores,
hidden states and embeddings through learned projections; ``PredictionDistiller`` (task stage
2) matches logits. Each module holds the student and whatever else it trains, so accelerate /
DDP wrap and train exactly those; the teacher sits beside it (unregistered, so it is neither
trained nor synchronised), in eval mode under inference mode.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .attention import enable_score_capture, recording_scores
from ..errors import InputError
from ..data.batching import IGNORED_LABEL, model_inputs
from .losses import (attention_loss, hidden_loss, prediction_loss, span_soft_cross_entropy,
                     token_soft_cross_entropy)
from ..models.files import PROJECTIONS_FILE
from ..settings import option

logger = logging.getLogger(__name__)


@dataclass
class LossWeights:
    attention: float = option(1.0, "weight of the attention-score loss", key="attention_weight")
    hidden: float = option(1.0, "weight of the hidden-state loss", key="hidden_weight")
    embedding: float = option(1.0, "weight of the embedding loss (0 leaves it out)", key="embedding_weight")


class _TeacherAndStudent(torch.nn.Module):
    def __init__(self, student, teacher):
        super().__init__()
        self.student = student
        self._teacher = [teacher.eval().requires_grad_(False)]  # a list keeps it out of parameters() and DDP

    @property
    def teacher(self):
        return self._teacher[0]


class IntermediateDistiller(_TeacherAndStudent):
    """Attention (pre-softmax scores), hidden and embedding losses on the mapped layers.

    ``layer_map[m]`` is the 1-based teacher layer that student layer m + 1 learns from.
    """

    def __init__(self, student, teacher, layer_map: list[int], weights: LossWeights,
                 shared_projection: bool = False):
        super().__init__(student, teacher)
        if student.config.num_attention_heads != teacher.config.num_attention_heads:
            raise InputError(
                f"the attention loss needs equal head counts: the student has "
                f"{student.config.num_attention_heads}, the teacher {teacher.config.num_attention_heads}",
                fix="build the student with the teacher's number of attention heads")
        self.layer_map = layer_map
        self.weights = weights
        student_width, teacher_width = student.config.hidden_size, teacher.config.hidden_size
        self.hidden_projection = torch.nn.Linear(student_width, teacher_width)
        self.embedding_projection = None if shared_projection else torch.nn.Linear(student_width, teacher_width)
        enable_score_capture(student)
        enable_score_capture(teacher)

    def forward(self, batch: dict) -> dict:
        batch = model_inputs(batch)
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

    def save_projections(self, directory: str | os.PathLike) -> None:
        state = {f"hidden.{k}": v for k, v in self.hidden_projection.state_dict().items()}
        if self.embedding_projection is not None:
            state.update({f"embedding.{k}": v for k, v in self.embedding_projection.state_dict().items()})
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(Path(directory) / PROJECTIONS_FILE))

    def load_projections(self, directory: str | os.PathLike) -> None:
        """Continues from a student's saved projections (if any) when they fit this teacher's width."""
        path = Path(directory) / PROJECTIONS_FILE
        if not path.is_file():
            return
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


class PredictionDistiller(_TeacherAndStudent):
    """Soft cross-entropy against the teacher's predictions: its class distribution (MSE against
    its output for regression), its tag distribution at each word's first piece (``task="token"``), or its
    distributions of where the answer starts and ends (``task="qa"``)."""

    def __init__(self, student, teacher, temperature: float = 1.0, regression: bool = False, task: str = "sequence"):
        super().__init__(student, teacher)
        self.temperature = temperature
        self.regression = regression
        self.task = task

    def forward(self, batch: dict) -> dict:
        labels = batch.get("labels")
        batch = model_inputs(batch)
        with torch.inference_mode():
            teacher = self.teacher(**batch)
        student = self.student(**batch)
        mask = batch["attention_mask"]
        if self.task == "token" and labels is not None:
            # the teacher was trained on each word's first piece only: elsewhere its tags mean nothing
            mask = labels != IGNORED_LABEL
        # tensors made under inference mode cannot enter autograd; clones can
        if self.task == "qa":
            loss = (span_soft_cross_entropy(student.start_logits, teacher.start_logits.clone(), mask, self.temperature)
                    + span_soft_cross_entropy(student.end_logits, teacher.end_logits.clone(), mask,
                                              self.temperature)) / 2
        elif self.task == "token":
            loss = token_soft_cross_entropy(student.logits, teacher.logits.clone(), mask, self.temperature)
        else:
            loss = prediction_loss(student.logits, teacher.logits.clone(), self.regression, self.temperature)
        return {"loss": loss, "pred": loss}
