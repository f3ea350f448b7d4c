"""TinyBERT's distillation losses (Jiao et al. 2020), with the reference code's bugs fixed.

Each is a small pure function of tensors. Padding never counts: masked keys and padded query
rows are excluded from the attention loss (the reference forgot the query rows), padded tokens
from the hidden and embedding losses, so the loss of an example does not depend on how long
the other examples in its batch are. The prediction losses take optional per-example
``weights``: stage 2 with gold labels is (1 − α)·soft + α·hard on the examples whose label is
known to be right, the soft loss alone on the others.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def in_float32(loss):
    """Runs a loss in float32 whatever autocast is on around it. Casting the inputs is not enough:
    autocast runs matrix products in half precision anyway, and under fp16 the attention loss's
    per-query sum of squared score differences (over 65,504 on a real batch) became inf, so the
    grad scaler skipped every step and training silently did nothing."""
    @functools.wraps(loss)
    def wrapper(first: torch.Tensor, *args, **kwargs):
        with torch.autocast(first.device.type, enabled=False):
            return loss(first, *args, **kwargs)
    return wrapper


@in_float32
def attention_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor, attention_mask: torch.Tensor,
                   pairs: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between pre-softmax attention scores (batch, heads, queries, keys), averaged over
    heads and over the (query, key) pairs where both are real tokens and, where ``pairs`` is
    given (booleans broadcastable to the scores), both layers attend: a ModernBERT local layer's
    window holds a part of the n² pairs, and averaged over n² its loss would weigh less than a
    global layer's the longer the text."""
    if student_scores.shape[1] != teacher_scores.shape[1]:
        raise ValueError(f"the attention loss needs equal head counts: student {student_scores.shape[1]}, "
                         f"teacher {teacher_scores.shape[1]}")
    mask = attention_mask.float()
    # in float32: under bf16 the student's scores are half precision, the teacher's targets must not be
    squared = (student_scores.float() - teacher_scores.float()).square()
    if pairs is not None:
        counted = pairs.float() * mask[:, None, :, None] * mask[:, None, None, :]
        return (squared * counted).sum() / counted.expand_as(squared).sum()
    # summed over real keys by a product with the key mask, then over real queries: no mask of the
    # scores' full size is built
    per_query = (squared @ mask[:, None, :, None]).squeeze(-1)  # (batch, heads, queries)
    pairs_per_example = (mask.sum(-1) ** 2).sum()  # real (query, key) pairs: n² per example
    return (per_query * mask[:, None, :]).sum() / (pairs_per_example * student_scores.shape[1])


@in_float32
def relation_loss(student_states: torch.Tensor, teacher_states: torch.Tensor, attention_mask: torch.Tensor,
                  relation_heads: int) -> torch.Tensor:
    """MiniLM-v2's self-attention relation loss (Wang et al. 2021) for one kind of vector of one
    layer pair: queries, keys or values (batch, heads, tokens, head width) of either model are
    joined across heads and split again into ``relation_heads`` heads of width d_r; each head's
    relation is softmax(X·Xᵀ/√d_r) over the real keys, and the loss is KL(teacher ‖ student)
    averaged over relation heads and real queries. It compares token-by-token matrices, so the
    two models' head counts and widths need not match."""
    def log_relations(states: torch.Tensor) -> torch.Tensor:
        batch, heads, tokens, width = states.shape
        split = states.float().transpose(1, 2).reshape(batch, tokens, relation_heads, -1).transpose(1, 2)
        scores = split @ split.transpose(-1, -2) / split.shape[-1] ** 0.5
        scores = scores.masked_fill(~key_mask, torch.finfo(torch.float32).min)
        return F.log_softmax(scores, dim=-1)
    key_mask = attention_mask.bool()[:, None, None, :]
    teacher, student = log_relations(teacher_states), log_relations(student_states)
    # masked keys have probability 0 under the teacher: they add nothing
    per_query = (teacher.exp() * (teacher - student)).sum(-1)  # (batch, relation heads, queries)
    queries = attention_mask.float()[:, None, :]
    return (per_query * queries).sum() / (queries.sum() * relation_heads)


@in_float32
def hidden_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor,
                projection: torch.nn.Module | None = None) -> torch.Tensor:
    """MSE(H_S·W, H_T) over real tokens and hidden units; ``projection`` is W (None when the
    widths are equal and no projection is wanted)."""
    projected = projection(student_hidden.float()) if projection is not None else student_hidden
    mask = attention_mask.float()[..., None]
    squared = (projected.float() - teacher_hidden.float()) ** 2 * mask  # in float32, as the attention loss
    return squared.sum() / (mask.sum() * projected.shape[-1])


def _mean(per_example: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return (per_example if weights is None else per_example * weights).mean()


@in_float32
def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """−Σ softmax(z_T/t)·log_softmax(z_S/t), mean over the batch (not also over the classes,
    as the reference code did)."""
    targets = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return _mean(-(targets * F.log_softmax(student_logits.float() / temperature, dim=-1)).sum(-1), weights)


@in_float32
def prediction_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, regression: bool,
                    temperature: float = 1.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Soft cross-entropy for classes; for regression, MSE against the *teacher's* output (the
    reference code used the gold labels)."""
    if regression:
        return _mean((student_logits.float().view(-1) - teacher_logits.float().view(-1)).square(), weights)
    return soft_cross_entropy(student_logits, teacher_logits, temperature, weights)


@in_float32
def token_soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                             attention_mask: torch.Tensor, temperature: float = 1.0,
                             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Soft cross-entropy of each counted token's tag distribution (batch, tokens, tags), averaged
    over the tokens the mask counts (token classification's stage 2: each word's first piece)."""
    targets = F.softmax(teacher_logits.float() / temperature, dim=-1)
    per_token = -(targets * F.log_softmax(student_logits.float() / temperature, dim=-1)).sum(-1)
    mask = attention_mask.float()
    counted = mask if weights is None else mask * weights[:, None]
    return (per_token * counted).sum() / mask.sum().clamp(min=1)  # a batch may count no token at all


@in_float32
def span_soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                            attention_mask: torch.Tensor, temperature: float = 1.0,
                            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Soft cross-entropy between distributions over a window's real positions (batch, tokens):
    where the answer starts, or ends (extractive QA's stage 2, once for each)."""
    padding = (attention_mask == 0)
    # scaled before masking: the smallest float divided by a temperature below 1 would overflow to -inf
    student = (student_logits.float() / temperature).masked_fill(padding, torch.finfo(torch.float32).min)
    teacher = (teacher_logits.float() / temperature).masked_fill(padding, torch.finfo(torch.float32).min)
    return _mean(-(F.softmax(teacher, dim=-1) * F.log_softmax(student, dim=-1)).sum(-1), weights)


@in_float32
def gold_label_loss(student_logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                    regression: bool = False, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The hard half of stage 2 with gold labels (TextBrewer's ``hard_label_weight``, the HF
    distillation example's ``alpha_ce``): cross-entropy against each example's gold class (MSE
    against its gold score for regression; with ``attention_mask``, over a window's real positions
    against the answer's start or end), times its weight (α where the label is known to be right,
    0 elsewhere), mean over the batch."""
    if regression:
        return _mean((student_logits.float().view(-1) - labels.float()).square(), weights)
    logits = student_logits.float()
    if attention_mask is not None:
        logits = logits.masked_fill(attention_mask == 0, torch.finfo(torch.float32).min)
    return _mean(F.cross_entropy(logits, labels, reduction="none"), weights)  # label -100: 0


@in_float32
def token_gold_label_loss(student_logits: torch.Tensor, tags: torch.Tensor, attention_mask: torch.Tensor,
                          weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each counted token (batch, tokens, tags) against its gold tag (-100: none),
    times its example's weight, averaged over the counted tokens as ``token_soft_cross_entropy`` is."""
    per_token = F.cross_entropy(student_logits.float().transpose(1, 2), tags, reduction="none")
    mask = attention_mask.float()
    return (per_token * mask * weights[:, None]).sum() / mask.sum().clamp(min=1)
