"""Task distillation the way the TinyBERT reference code runs it, for side-by-side timings.

What it keeps from the reference code (task_distill.py): every example padded to 128 tokens;
attention scores computed (eagerly) on every layer of both models, the student's returned for
all layers; the teacher in train mode (dropout on) under ``no_grad``; one projection for
embeddings and hidden states; a plain (not fused) Adam-type optimizer; the loss read back to the
host at every step (``tr_loss += loss.item()``); fp32. The losses are tinybert's (the maths is
the same up to the reference's bugs, which cost nothing in time).
"""

from __future__ import annotations

import torch
from transformers import DataCollatorWithPadding

from tinybert.distillation.attention import record_attention
from tinybert.distillation.losses import attention_loss, hidden_loss, soft_cross_entropy

MAX_LENGTH = 128


def reference_loader(dataset, tokenizer, batch_size: int) -> torch.utils.data.DataLoader:
    """Shuffled batches, every example padded to 128 tokens."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                       collate_fn=DataCollatorWithPadding(tokenizer, padding="max_length",
                                                                          max_length=MAX_LENGTH))


def reference_step(stage: str, teacher, student, projection, layer_map: list[int], batch: dict):
    """The loss of one batch of stage 1 (``intermediate``) or stage 2 (``prediction``)."""
    batch = {k: v for k, v in batch.items() if k != "labels"}
    teacher.train()  # the reference code leaves the teacher's dropout on
    with torch.no_grad():
        teacher_out = teacher(**batch, output_hidden_states=True, output_attentions=True)
    student_out = student(**batch, output_hidden_states=True, output_attentions=True)
    # every layer of both models records its scores
    teacher_scores, student_scores = teacher_out.attentions, student_out.attentions
    if stage == "prediction":
        return soft_cross_entropy(student_out.logits, teacher_out.logits)
    mask = batch["attention_mask"]
    loss = sum(attention_loss(student_scores[m], teacher_scores[t - 1], mask) for m, t in enumerate(layer_map))
    loss = loss + sum(hidden_loss(student_out.hidden_states[m + 1], teacher_out.hidden_states[t], mask, projection)
                      for m, t in enumerate(layer_map))
    return loss + hidden_loss(student_out.hidden_states[0], teacher_out.hidden_states[0], mask, projection)


def prepare_models(teacher, student):
    """Both models with score capture on every layer (the reference computes attention eagerly everywhere)."""
    record_attention(teacher, range(teacher.config.num_hidden_layers))
    record_attention(student, range(student.config.num_hidden_layers))
    width_s, width_t = student.config.hidden_size, teacher.config.hidden_size
    return torch.nn.Linear(width_s, width_t)
