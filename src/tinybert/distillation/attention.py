"""Pre-softmax attention scores from Hugging Face models, for the mapped layers only.

transformers returns post-softmax weights, and only with eager attention on every layer. We
register our own implementation in transformers' plug-in point (``AttentionInterface``): a
self-attention module marked for recording computes QKᵀ·scaling itself and keeps it; every
other module goes straight to SDPA.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

IMPLEMENTATION = "tinybert_scores"
_RECORDER = "_tinybert_score_recorder"


def _attention_recording_scores(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    recorder = getattr(module, _RECORDER, None)
    if recorder is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    recorder[module.layer_idx] = scores
    if attention_mask is not None:  # sdpa's mask: True where a query may attend
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = torch.nn.functional.softmax(scores, dim=-1)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, None


AttentionInterface.register(IMPLEMENTATION, _attention_recording_scores)
ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


def self_attention_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """The self-attention modules by layer index (0-based), found by their ``layer_idx``."""
    modules = {}
    for module in model.modules():
        index = getattr(module, "layer_idx", None)
        if index is not None:
            modules.setdefault(index, module)
    return modules


def enable_score_capture(model) -> None:
    """Switches the model to our attention implementation (SDPA wherever nothing records)."""
    model.set_attn_implementation(IMPLEMENTATION)


@contextmanager
def recording_scores(model: torch.nn.Module, layers: Iterable[int]):
    """Within the block, forward passes store the pre-softmax scores of ``layers`` (0-based) in
    the yielded dict, keyed by layer index, shaped (batch, heads, queries, keys)."""
    scores: dict[int, torch.Tensor] = {}
    modules = self_attention_modules(model)
    # a layer may be mapped to several student layers (a student deeper than its teacher): once here
    chosen = [modules[index] for index in dict.fromkeys(layers)]
    for module in chosen:
        setattr(module, _RECORDER, scores)
    try:
        yield scores
    finally:
        for module in chosen:
            delattr(module, _RECORDER)
