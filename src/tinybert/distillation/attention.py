"""What the attention losses compare, captured from Hugging Face models of any supported family,
for the mapped layers only.

transformers returns post-softmax weights, and only with eager attention on every layer. We
mark the self-attention modules of the mapped layers once, and ask the model for its attentions
(``output_attentions=True``): a marked module answers with what the loss needs instead of its
weights, an unmarked one with nothing, so the records come back as the model's own output (no
state written during the forward pass) and every other layer keeps its fast attention:

- ``"scores"``: the pre-softmax scores (batch, heads, queries, keys), the quantity the layer's
  softmax receives before its mask, with the pairs the layer attends (booleans, batch × 1 ×
  queries × keys; None where it attends every pair): the loss compares those pairs only, and
  averages over as many as there are (padded keys, and keys beyond a ModernBERT local layer's
  window, are none of them). In families that route attention through transformers'
  ``AttentionInterface`` the scores are QKᵀ·scaling, computed in our plug-in (after rotary
  embeddings in ModernBERT); unmarked layers go straight to SDPA. DeBERTa forms its scores itself, as
  (content·content + content·position + position·content) / √(3d): the whole sum is what its
  softmax receives, so the whole sum is what the student learns (the relative-position terms are
  how DeBERTa attends; leaving them out would teach a quantity the teacher never uses).
- ``"relations"``: the layer's queries, keys and values (batch, heads, tokens, head width), for
  MiniLM-v2's relation loss; the layer's own output is computed as usual (SDPA). For DeBERTa they
  are the content projections.
"""

from __future__ import annotations

from types import MethodType
from typing import Iterable, Literal

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.models.deberta_v2.modeling_deberta_v2 import scaled_size_sqrt
from transformers.utils.output_capturing import maybe_install_capturing_hooks

from ..models.families import attention_modules, family_of

IMPLEMENTATION = "tinybert_records"
_RECORDS = "_tinybert_records"
Records = Literal["scores", "relations"]


def _attention_with_records(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    records = getattr(module, _RECORDS, None)
    kwargs.pop("output_attentions", None)  # asked of the model to get the records back, not of SDPA
    if records != "scores":
        output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                           dropout=dropout, **kwargs)
        return output, (query, key, value) if records == "relations" else None
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    masked, attends = scores, None
    if attention_mask is not None:  # sdpa's mask (the mask function registered below): True where a query may attend
        masked, attends = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min), attention_mask
    weights = torch.nn.functional.softmax(masked, dim=-1)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, (scores, attends)


AttentionInterface.register(IMPLEMENTATION, _attention_with_records)
ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


def _disentangled_with_records(self, hidden_states, attention_mask, output_attentions=False, query_states=None,
                               relative_pos=None, rel_embeddings=None):
    """DeBERTa-v2's ``DisentangledSelfAttention.forward``, the same arithmetic in the same order
    (its own projections and relative-position terms), answering with the layer's records
    instead of its softmax weights, and with nothing on a layer that records nothing (the
    weights of every layer would otherwise be kept until the loss is computed)."""
    heads = self.num_attention_heads
    query = self.transpose_for_scores(self.query_proj(hidden_states if query_states is None else query_states), heads)
    key = self.transpose_for_scores(self.key_proj(hidden_states), heads)
    value = self.transpose_for_scores(self.value_proj(hidden_states), heads)
    scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
    scale = scaled_size_sqrt(query, scale_factor)
    scores = torch.bmm(query, key.transpose(-1, -2) / scale.to(dtype=query.dtype))
    if self.relative_attention:
        scores = scores + self.disentangled_attention_bias(query, key, relative_pos, self.pos_dropout(rel_embeddings),
                                                           scale_factor)
    scores = scores.view(-1, heads, scores.size(-2), scores.size(-1))
    attends = attention_mask.bool()
    weights = torch.softmax(scores.masked_fill(~attends, torch.finfo(query.dtype).min), dim=-1)
    context = torch.bmm(self.dropout(weights).view(-1, weights.size(-2), weights.size(-1)), value)
    batch, length = hidden_states.shape[:2]
    context = context.view(batch, heads, length, -1).permute(0, 2, 1, 3).reshape(batch, length, -1)
    records = getattr(self, _RECORDS, None)
    if records == "relations":
        return context, tuple(state.view(batch, heads, length, -1) for state in (query, key, value))
    return context, (scores, attends) if records == "scores" else None


def record_attention(model: torch.nn.Module, layers: Iterable[int], records: Records = "scores") -> list[int]:
    """Marks the self-attention of ``layers`` (0-based) to answer with ``records``; every other
    layer records nothing. Returns the marked layers in order, as ``captured`` wants them."""
    family = family_of(model)
    chosen = sorted(set(layers))
    if family.scores == "interface":
        model.set_attn_implementation(IMPLEMENTATION)
    # transformers installs the hooks that collect hidden states and attentions on the first forward
    # pass asking for them, under a lock: installed now, a compiled step traces none of it
    maybe_install_capturing_hooks(model.base_model)
    for index, module in enumerate(attention_modules(model)):
        if family.scores == "disentangled":
            module.forward = MethodType(_disentangled_with_records, module)
        if index in chosen:
            setattr(module, _RECORDS, records)
        elif hasattr(module, _RECORDS):
            delattr(module, _RECORDS)
    return chosen


def captured(outputs, layers: list[int]) -> dict[int, torch.Tensor | tuple[torch.Tensor, ...]]:
    """The records of a forward pass with ``output_attentions=True``, by layer index: ``layers``
    as ``record_attention`` returned them."""
    found = outputs.attentions
    if len(found) != len(layers):  # DeBERTa's encoder keeps an answer (None or records) from every layer
        found = [found[index] for index in layers]
    return dict(zip(layers, found))
