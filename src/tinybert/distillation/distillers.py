"""The two TinyBERT objectives, each a module over a student and its frozen teacher.

``IntermediateDistiller`` (task stage 1, and general distillation) matches attention scores (or
MiniLM-v2's self-attention relations), hidden states and embeddings through learned projections; ``PredictionDistiller`` (task stage
2) matches logits. Each module holds the student and whatever else it trains, so accelerate /
DDP wrap and train exactly those; the teacher sits beside it (unregistered, so it is neither
trained nor synchronised), in eval mode without gradients (``no_grad``, not ``inference_mode``: tensors
made under inference mode can enter neither the student's autograd graph without a copy nor a
compiled step).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from .attention import captured, record_attention
from ..errors import InputError
from ..data.batching import IGNORED_LABEL, model_inputs
from ..data.labels import ORIGINAL
from .teacher_outputs import OUTPUTS_KEY
from .losses import (attention_loss, gold_label_loss, hidden_loss, prediction_loss, relation_loss,
                     span_soft_cross_entropy, token_gold_label_loss, token_soft_cross_entropy)
from ..models.families import attention_width, hidden_states_before_final_norm
from ..models.files import PROJECTIONS_FILE
from ..models.pruning import Selection, selection_projection
from ..models.students import check_family, check_layers, check_student_layers, check_student_sizes
from ..settings import flag_of, option

logger = logging.getLogger(__name__)


@dataclass
class IntermediateLosses:
    attention_loss: Literal["scores", "relations"] = option(
        "scores", "what the attention loss compares: pre-softmax scores by MSE (TinyBERT; equal head counts), or "
                  "MiniLM-v2's query-query, key-key and value-value relations by KL (any head count or width)")
    relation_heads: int | None = option(None, "relation heads of --attention-loss relations (default: the teacher's "
                                              "head count); must divide both models' attention widths")
    attention: float = option(1.0, "weight of the attention loss", key="attention_weight")
    hidden: float = option(1.0, "weight of the hidden-state loss", key="hidden_weight")
    embedding: float = option(1.0, "weight of the embedding loss (0 leaves it out)", key="embedding_weight")


def check_intermediate(teacher_dir, student: str, losses: IntermediateLosses, *, layers: int | None,
                       layer_map: str | None, init_from_teacher: bool = False) -> None:
    """What no stage-1 or general run can do, refused before any data is read or model built: a
    teacher of a family tinybert cannot distil, counts below 1, a ``student`` file of sizes that are
    none, a student deeper than its teacher, a layer map that does not fit."""
    check_layers(layers)
    check_losses(losses)
    check_family(teacher_dir)
    if not init_from_teacher:  # a copy of the teacher takes its sizes
        check_student_sizes(student, teacher_dir)
    check_student_layers(teacher_dir, student, layers=layers, layer_map=layer_map, init_from_teacher=init_from_teacher)


def loss_settings(losses: IntermediateLosses, shared_projection: bool) -> dict:
    """The settings of the stage-1 losses, which a checkpoint resumes only under."""
    return {**asdict(losses), "shared_projection": shared_projection}


def check_losses(losses: IntermediateLosses, name=flag_of) -> None:
    """Refuses, before any data is read, loss settings no run can use (``name(key)``: how a
    message names a setting)."""
    if losses.relation_heads is not None and losses.relation_heads < 1:
        raise InputError(f"{name('relation_heads')} {losses.relation_heads} is no number of relation heads",
                         fix="give 1 or more dividing both models' attention widths, or leave it out (the "
                             "teacher's head count)")


class _TeacherAndStudent(torch.nn.Module):
    def __init__(self, student, teacher):
        super().__init__()
        self.student = student
        # a list keeps it out of parameters() and DDP; None: every batch carries the teacher's outputs
        self._teacher = [teacher.eval().requires_grad_(False) if teacher is not None else None]
        self.register_buffer("student_ids", None, persistent=False)  # moves to the device with the student

    @property
    def teacher(self):
        return self._teacher[0]

    def read_student_ids(self, mapping: torch.Tensor | None) -> None:
        """A student with a pruned vocabulary reads the batches (the teacher's token ids) through
        ``mapping`` (``vocabulary.token_map``): both models always see the same tokens."""
        self.student_ids = mapping

    def student_inputs(self, inputs: dict) -> dict:
        if self.student_ids is None:
            return inputs
        return {**inputs, "input_ids": self.student_ids[inputs["input_ids"]]}


class IntermediateDistiller(_TeacherAndStudent):
    """Attention (pre-softmax scores, or relations), hidden and embedding losses on the mapped
    layers.

    ``layer_map[m]`` is the 1-based teacher layer that student layer m + 1 learns from.
    """

    def __init__(self, student, teacher, layer_map: list[int], losses: IntermediateLosses,
                 shared_projection: bool = False, selection: Selection | None = None):
        super().__init__(student, teacher)
        self.losses = losses
        self.relation_heads = losses.relation_heads or teacher.config.num_attention_heads
        # a student pruned from the teacher: each of its heads learns the scores of the head it was cut from
        narrower = selection is not None and student.config.num_attention_heads < teacher.config.num_attention_heads
        self.teacher_heads = selection.heads if narrower else None
        self._check_attention(student.config, teacher.config)
        self.layer_map = layer_map
        student_width, teacher_width = student.config.hidden_size, teacher.config.hidden_size

        def projection():  # a pruned student's starts as its selection: each kept channel back in its place
            if selection is None:
                return torch.nn.Linear(student_width, teacher_width)
            return selection_projection(selection, teacher_width)
        self.hidden_projection = projection()
        self.embedding_projection = None if shared_projection else projection()
        records = losses.attention_loss
        # ModernBERT's hidden states are its layers' own outputs (the residual stream), but
        # transformers normalises the last one with the final norm: compared as they come, a map
        # ending below N would teach the student's normalised last layer an unnormalised teacher
        # layer. Every layer of both is compared before that norm (which belongs to the head's
        # input, taught in stage 2), so each pair compares the same quantity on the same scale.
        for model in (student, teacher):
            hidden_states_before_final_norm(model)
        self.student_layers = record_attention(student, range(len(layer_map)), records)
        self.teacher_layers = record_attention(teacher, [layer - 1 for layer in layer_map], records)

    def _check_attention(self, student, teacher) -> None:
        if (self.losses.attention_loss == "scores" and self.teacher_heads is None
                and student.num_attention_heads != teacher.num_attention_heads):
            raise InputError(
                f"the attention loss needs equal head counts: the student has {student.num_attention_heads}, the "
                f"teacher {teacher.num_attention_heads}",
                fix="build the student with the teacher's number of attention heads, or compare relations "
                    "instead of scores: --attention-loss relations")
        if self.losses.attention_loss == "relations":
            widths = {"student": attention_width(student), "teacher": attention_width(teacher)}
            uneven = [f"the {name}'s {width}" for name, width in widths.items() if width % self.relation_heads]
            if uneven:
                raise InputError(f"{self.relation_heads} relation heads do not divide {' and '.join(uneven)} "
                                 f"attention units", fix="choose --relation-heads dividing "
                                                         f"{widths['student']} and {widths['teacher']}")

    def _attention_loss(self, layer: int, student, teacher, mask) -> torch.Tensor:
        if self.losses.attention_loss == "relations":  # queries, keys and values: Q-Q, K-K and V-V relations
            return sum(relation_loss(s, t, mask, self.relation_heads) for s, t in zip(student, teacher))
        (student_scores, student_pairs), (teacher_scores, teacher_pairs) = student, teacher
        if self.teacher_heads is not None:  # each kept head against the teacher head it was cut from
            teacher_scores = teacher_scores[:, self.teacher_heads[layer]]
        # the pairs both layers attend: a score the teacher's layer never forms teaches nothing, and one
        # the student's never forms does not change what it computes
        pairs = student_pairs if teacher_pairs is None else teacher_pairs if student_pairs is None \
            else student_pairs & teacher_pairs
        return attention_loss(student_scores, teacher_scores, mask, pairs)

    def forward(self, batch: dict) -> dict:
        batch = model_inputs(batch)
        mask = batch["attention_mask"]
        with torch.no_grad():
            teacher = self.teacher.base_model(**batch, output_hidden_states=True, output_attentions=True)
        student = self.student.base_model(**self.student_inputs(batch), output_hidden_states=True,
                                          output_attentions=True)
        teacher_records, student_records = captured(teacher, self.teacher_layers), captured(student, self.student_layers)
        pairs = [(m, t - 1) for m, t in enumerate(self.layer_map)]
        attention = sum(self._attention_loss(m, student_records[m], teacher_records[t], mask) for m, t in pairs)
        hidden = sum(hidden_loss(student.hidden_states[m + 1], teacher.hidden_states[t + 1], mask,
                                 self.hidden_projection) for m, t in pairs)
        embedding = hidden_loss(student.hidden_states[0], teacher.hidden_states[0], mask,
                                self.embedding_projection or self.hidden_projection)
        total = (self.losses.attention * attention + self.losses.hidden * hidden
                 + self.losses.embedding * embedding)
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
    distributions of where the answer starts and ends (``task="qa"``). With ``hard_label_weight`` α,
    (1 − α)·soft + α·cross-entropy against the gold labels on original rows (``origin`` ORIGINAL):
    not on augmented variants, whose label their new words may have made wrong, nor unlabelled text.
    ``teacher`` None: every batch carries the teacher's outputs (``OUTPUTS_KEY``)."""

    def __init__(self, student, teacher, temperature: float = 1.0, regression: bool = False, task: str = "sequence",
                 hard_label_weight: float = 0.0):
        super().__init__(student, teacher)
        self.temperature = temperature
        self.regression = regression
        self.task = task
        self.hard_label_weight = hard_label_weight

    def forward(self, batch: dict) -> dict:
        labels = batch.get("labels")
        gold = batch["origin"] == ORIGINAL if self.hard_label_weight else None
        positions = (batch.get("start_positions"), batch.get("end_positions"))
        cached = batch.get(OUTPUTS_KEY)
        batch = model_inputs(batch)
        teacher = self._teacher_outputs(batch, cached)
        student = self.student(**self.student_inputs(batch))
        mask = batch["attention_mask"]
        if self.task == "token" and labels is not None:
            # the teacher was trained on each word's first piece only: elsewhere its tags mean nothing
            mask = labels != IGNORED_LABEL
        soft_weights = None if gold is None else 1 - self.hard_label_weight * gold.float()
        if self.task == "qa":
            loss = (span_soft_cross_entropy(student.start_logits, teacher.start_logits, mask, self.temperature,
                                            soft_weights)
                    + span_soft_cross_entropy(student.end_logits, teacher.end_logits, mask,
                                              self.temperature, soft_weights)) / 2
        elif self.task == "token":
            loss = token_soft_cross_entropy(student.logits, teacher.logits, mask, self.temperature, soft_weights)
        else:
            loss = prediction_loss(student.logits, teacher.logits, self.regression, self.temperature, soft_weights)
        if gold is None:
            return {"loss": loss, "pred": loss}
        weights = self.hard_label_weight * gold.float()
        if self.task == "qa":
            hard = sum(gold_label_loss(logits, targets, weights, attention_mask=mask)
                       for logits, targets in zip((student.start_logits, student.end_logits), positions)) / 2
        elif self.task == "token":  # a word without a tag (-1, unlabelled text) counts in no gold loss
            hard = token_gold_label_loss(student.logits, labels.where(labels >= 0, IGNORED_LABEL), mask, weights)
        else:
            hard = gold_label_loss(student.logits, labels, weights, self.regression)
        return {"loss": loss + hard, "pred": loss, "gold": hard}

    def _teacher_outputs(self, inputs: dict, cached: torch.Tensor | None):
        """The teacher's outputs for the model ``inputs``: ``cached`` when the batch carried them
        (logits, or start and end logits side by side), else computed now."""
        if cached is None:
            with torch.no_grad():
                return self.teacher(**inputs)
        if self.task == "qa":
            return SimpleNamespace(start_logits=cached[..., 0], end_logits=cached[..., 1])
        return SimpleNamespace(logits=cached)
