"""What differs between encoder families, in one table.

Distillation reaches into a model in three places: its list of layers (to copy the teacher's
into a student), the self-attention module of each layer (to capture what the attention loss
compares), and its configuration (to build a student of another size in the same family). Each
family keeps these under its own names; one record per family says where, as TextBrewer's
adaptors and torchdistill's hook paths do, so no other module knows a family's attribute names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError


@dataclass(frozen=True)
class Family:
    """Where one family keeps what distillation reaches into.

    ``layers``: the list of layers, from the base model. ``attention``: the self-attention module,
    from a layer. ``scores``: how its attention scores are formed: ``"interface"`` through
    transformers' ``AttentionInterface`` (captured in our plug-in, after rotary embeddings where
    the family has them), or ``"disentangled"`` (DeBERTa's content and relative-position terms,
    computed by the module itself). ``renamed``: configuration fields named otherwise than
    BERT's. ``per_layer``: configuration lists with one entry per layer. ``follow_width``:
    configuration sizes equal to the hidden width, which a student of another width takes from
    its own. ``derived``: sizes derived from width and heads, left out of a resized student's
    configuration so that they are derived again. ``final_norm``: a norm after the last layer,
    from the base model, which transformers applies to the last hidden state only.
    """

    layers: str
    attention: str
    scores: str = "interface"
    renamed: dict[str, str] = field(default_factory=dict)
    per_layer: tuple[str, ...] = ()
    follow_width: tuple[str, ...] = ()
    derived: tuple[str, ...] = ()
    final_norm: str | None = None
    # Where a layer's widths live, for pruning (paths from a layer): the projections whose outputs are
    # the heads' units (queries, keys, values: one fused projection in ModernBERT), the one taking them
    # back to the hidden width, and the feed-forward projections into and out of its neurons (ModernBERT's
    # input projection holds the gate's neurons too).
    heads_in: tuple[str, ...] = ("attention.self.query", "attention.self.key", "attention.self.value")
    heads_out: str = "attention.output.dense"
    neurons_in: str = "intermediate.dense"
    neurons_out: str = "output.dense"


_BERT_LIKE = Family(layers="encoder.layer", attention="attention.self")

FAMILIES: dict[str, Family] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    # ELECTRA's and DeBERTa's embeddings may be narrower than their layers (embedding_size, then a
    # projection): narrower ones (ELECTRA-small's 128 under 256) stay, as wide as the layers (base,
    # large) they follow the student's width
    "electra": Family(layers="encoder.layer", attention="attention.self", follow_width=("embedding_size",)),
    # without share_att_key, the relative positions have projections of their own into the heads
    "deberta-v2": Family(layers="encoder.layer", attention="attention.self", scores="disentangled",
                         follow_width=("embedding_size", "pooler_hidden_size"), derived=("attention_head_size",),
                         heads_in=tuple(f"attention.self.{name}" for name in ("query_proj", "key_proj", "value_proj",
                                                                               "pos_query_proj", "pos_key_proj"))),
    "distilbert": Family(layers="transformer.layer", attention="attention",
                         renamed={"intermediate_size": "hidden_dim"},
                         heads_in=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
                         heads_out="attention.out_lin", neurons_in="ffn.lin1", neurons_out="ffn.lin2"),
    "modernbert": Family(layers="layers", attention="attn", per_layer=("layer_types",), derived=("head_dim",),
                         final_norm="final_norm", heads_in=("attn.Wqkv",), heads_out="attn.Wo", neurons_in="mlp.Wi",
                         neurons_out="mlp.Wo"),
}


def family_of(model_or_config) -> Family:
    """The family record of a model or configuration; an unknown family is a clear error."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise InputError(f"the {model_type!r} encoder family is not supported for distillation: tinybert does not "
                         f"know where its layers and attention modules are",
                         fix=f"use a model of a supported family ({', '.join(FAMILIES)}), or add a record for "
                             f"{model_type!r} to tinybert.models.families.FAMILIES")
    return FAMILIES[model_type]


def module_at(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """The module at a dotted ``path`` under ``root``."""
    for name in path.split("."):
        root = getattr(root, name)
    return root


def layers_of(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of layers (of a task model or of a bare encoder)."""
    return module_at(model.base_model, family_of(model).layers)


def layers_prefix(model: torch.nn.Module) -> str:
    """The state-dict prefix of the layers, e.g. ``bert.encoder.layer.`` in a task model."""
    layers = layers_of(model)
    return next(name for name, module in model.named_modules() if module is layers) + "."


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention module of each layer, in order."""
    path = family_of(model).attention
    return [module_at(layer, path) for layer in layers_of(model)]


def config_name(config, name: str) -> str:
    """The name under which the family's configuration stores one of BERT's fields."""
    renamed = family_of(config).renamed
    return renamed[name] if name in renamed else getattr(config, "attribute_map", {}).get(name, name)


def config_value(config, name: str):
    return getattr(config, config_name(config, name))


def attention_width(config) -> int:
    """Heads × head width of a model's attention (DeBERTa may set its head width apart)."""
    heads = config.num_attention_heads
    return heads * (getattr(config, "attention_head_size", None) or config.hidden_size // heads)


def hidden_states_before_final_norm(model: torch.nn.Module) -> None:
    """Makes the model's last hidden state its last layer's own output, as every other hidden state
    is (for the hidden loss): a family's final norm then passes its input through. The model's
    output then lacks that norm: for distillation's models only, whose head is not used."""
    path = family_of(model).final_norm
    norm = module_at(model.base_model, path) if path else None
    if norm is not None and not getattr(norm, "_tinybert_passes_through", False):
        norm.register_forward_hook(lambda module, inputs, output: inputs[0])
        norm._tinybert_passes_through = True
