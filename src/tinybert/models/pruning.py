"""Width pruning: a student cut from its fine-tuned teacher, narrower as well as shallower.

What a student keeps is a ``Selection`` (TextPruner's and CoFi's habit): for each student layer the
teacher layer it is cut from, the hidden channels (the same ones in the embeddings and in every
layer, so the residual stream stays aligned), each layer's attention heads (whole heads: the
student's heads keep the teacher's head width, so rotary embeddings and the attention-score loss
still apply) and feed-forward neurons, and the vocabulary. It is computed once, from the
``importance`` of the teacher's units on the task's data, and applied to every tensor that touches
those units; a copy of the teacher's whole width is the selection that keeps everything. The
student's projections onto the teacher's width start as the selection itself.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..artifacts import write_json
from ..errors import InputError
from ..settings import flag_of, option
from .families import attention_width, config_value, family_of, layers_prefix
from .importance import Importance, Measure

logger = logging.getLogger(__name__)

SELECTION_FILE = "pruning.json"


@dataclass
class PruningOptions:
    """Settings of a student cut from the teacher (``--init-from-teacher``) narrower than it."""

    hidden_size: int | None = option(None, "with --init-from-teacher: keep this many hidden channels (default: the "
                                           "teacher's width)")
    heads: int | None = option(None, "with --init-from-teacher: attention heads kept per layer (default: hidden size "
                                     "÷ the teacher's head width; whole heads are kept)")
    intermediate_size: int | None = option(None, "with --init-from-teacher: feed-forward neurons kept per layer "
                                                 "(default: the teacher's ratio to the hidden size)")
    latency_ms: float | None = option(None, "with --init-from-teacher: prune to the largest shape `tinybert sizes` "
                                            "measures within this batch-1 latency on this machine")
    prune_by: Measure = option("gradients", "what ranks channels, heads and neurons: their first-order effect on "
                                            "the teacher's loss on its own predictions (gradients: as CoFi and "
                                            "TextPruner score; better on SST-2, see bench/small_students.py), or "
                                            "their activations on the training data (Minitron)")
    prune_samples: int = option(512, "training rows the importance is measured on")
    prune_vocab: bool = option(False, "keep only the tokens the training data uses (and the special tokens and a "
                                      "fallback set that keeps every text tokenizable); the student gets a "
                                      "tokenizer of its own")
    keep_tokens: str | None = option(None, "with --prune-vocab: a file of more tokens to keep, one per line (a "
                                           "vocabulary entry, or text whose tokens are kept)")

    @property
    def narrows(self) -> bool:
        return any(value is not None for value in (self.hidden_size, self.heads, self.intermediate_size,
                                                   self.latency_ms))

    @property
    def prunes(self) -> bool:
        return self.narrows or self.prune_vocab


@dataclass
class Selection:
    """What a student keeps of its teacher (teacher indices, ascending): ``layers`` the 1-based
    teacher layer of each student layer; ``channels`` the hidden channels; ``heads`` and
    ``neurons`` those of each student layer; ``tokens`` the vocabulary in the student's id order
    (None: all of it); ``ranked_by`` the measure that chose the units (None: none was scored)."""

    layers: list[int]
    channels: list[int]
    heads: list[list[int]]
    neurons: list[list[int]]
    tokens: list[int] | None = None
    ranked_by: str | None = None

    def save(self, directory: str | os.PathLike, inputs: dict | None = None) -> None:
        write_json(Path(directory) / SELECTION_FILE, {"selection": asdict(self), "inputs": inputs})

    @classmethod
    def read(cls, directory: str | os.PathLike, inputs: dict | None = None) -> "Selection | None":
        """The selection saved in ``directory`` (made from ``inputs``, when given), else None."""
        path = Path(directory) / SELECTION_FILE
        if not path.is_file():
            return None
        saved = json.loads(path.read_text())
        if inputs is not None and saved.get("inputs") != json.loads(json.dumps(inputs)):
            return None
        return cls(**saved["selection"])

    def narrower_than(self, teacher_config) -> bool:
        """Whether the student lost hidden channels, heads or neurons (not tokens alone)."""
        return (len(self.channels) < teacher_config.hidden_size
                or any(len(heads) < teacher_config.num_attention_heads for heads in self.heads)
                or any(len(neurons) < config_value(teacher_config, "intermediate_size") for neurons in self.neurons))

    def describe(self, teacher_config) -> str:
        tokens = "" if self.tokens is None else f", {len(self.tokens):,} of {teacher_config.vocab_size:,} tokens"
        return (f"{len(self.channels)} of {teacher_config.hidden_size} hidden channels, {len(self.heads[0])} of "
                f"{teacher_config.num_attention_heads} heads and {len(self.neurons[0])} of "
                f"{config_value(teacher_config, 'intermediate_size')} neurons per layer{tokens}"
                + (f", ranked by {self.ranked_by}" if self.ranked_by else ""))


def head_width(config) -> int:
    return attention_width(config) // config.num_attention_heads


def pruned_shape(teacher_config, options: PruningOptions, name=flag_of) -> dict:
    """The student's widths (BERT's field names) that ``options`` ask for, checked against what the
    teacher's family can take; ``name(key)``: how a message names a setting."""
    hidden = options.hidden_size or teacher_config.hidden_size
    width = head_width(teacher_config)
    teacher_neurons = config_value(teacher_config, "intermediate_size")
    sizes = {"hidden_size": (hidden, teacher_config.hidden_size),
             "heads": (options.heads or max(hidden // width, 1), teacher_config.num_attention_heads),
             "intermediate_size": (options.intermediate_size or max(round(teacher_neurons * hidden
                                                                          / teacher_config.hidden_size), 1),
                                   teacher_neurons)}
    for key, (value, teachers) in sizes.items():
        if not 1 <= value <= teachers:
            raise InputError(f"{name(key)} {value} is not between 1 and the teacher's {teachers}",
                             fix=f"pruning keeps part of the teacher: give 1 to {teachers}")
    heads = sizes["heads"][0]
    if hidden % heads:
        raise InputError(f"{name('heads')} {heads} does not divide {name('hidden_size')} {hidden}",
                         fix=f"give a head count dividing {hidden}")
    if hidden // heads != width:
        raise InputError(f"{name('hidden_size')} {hidden} with {heads} heads gives heads of {hidden // heads} units; "
                         f"pruning keeps the teacher's whole heads of {width} units",
                         fix=f"give a hidden size that is a multiple of {width} and leave out {name('heads')} "
                             f"(e.g. {name('hidden_size')} {max(hidden // width, 1) * width})")
    embeddings = getattr(teacher_config, "embedding_size", None) or teacher_config.hidden_size
    if embeddings != teacher_config.hidden_size and hidden == embeddings:
        raise InputError(f"{name('hidden_size')} {hidden} is the width of the teacher's embeddings, which a student "
                         f"of that width has no projection for (the teacher's projection could not be kept)",
                         fix=f"give a hidden size other than {embeddings}")
    return {"hidden_size": hidden, "num_attention_heads": heads, "intermediate_size": sizes["intermediate_size"][0]}


def whole(teacher_config, layers: list[int]) -> Selection:
    """The selection of a student as wide as its teacher: its layers copied whole."""
    return Selection(layers=list(layers), channels=list(range(teacher_config.hidden_size)),
                     heads=[list(range(teacher_config.num_attention_heads))] * len(layers),
                     neurons=[list(range(config_value(teacher_config, "intermediate_size")))] * len(layers))


def shape_only(teacher_config, layers: list[int], shape: dict) -> Selection:
    """The first units of each kind: a student of ``shape`` to count or time, before any unit is scored."""
    def first(count: int) -> list[int]:
        return list(range(count))
    return Selection(layers=list(layers), channels=first(shape["hidden_size"]),
                     heads=[first(shape["num_attention_heads"])] * len(layers),
                     neurons=[first(shape["intermediate_size"])] * len(layers))


def select(importance: Importance, layers: list[int], shape: dict) -> Selection:
    """The most important units for ``shape`` (``pruned_shape``'s widths), kept in teacher order."""
    def top(scores: torch.Tensor, count: int) -> list[int]:
        return sorted(torch.topk(scores.double(), count).indices.tolist())
    return Selection(layers=list(layers), channels=top(importance.channels, shape["hidden_size"]),
                     heads=[top(importance.heads[layer], shape["num_attention_heads"]) for layer in layers],
                     neurons=[top(importance.neurons[layer], shape["intermediate_size"]) for layer in layers])


def _axes_in_layer(family, module: str, kind: str, dims: int) -> tuple[str | None, ...] | None:
    """The units each dimension of a layer's parameter indexes, where the families table names its
    module: ``heads`` (the heads' units, fused projections holding several blocks of them),
    ``neurons``, ``hidden``. None for any other module (norms: their dimensions are hidden ones)."""
    weight = kind == "weight" and dims == 2
    if module in family.heads_in:
        return ("heads", "hidden") if weight else ("heads",)
    if module == family.neurons_in:
        return ("neurons", "hidden") if weight else ("neurons",)
    if module in (family.heads_out, family.neurons_out):
        return ("hidden", "heads" if module == family.heads_out else "neurons") if weight else ("hidden",)
    return None


def cut_student(teacher: torch.nn.Module, student: torch.nn.Module, selection: Selection) -> None:
    """Fills ``student`` (of the teacher's family, its shape the selection's) with the teacher's
    weights as ``selection`` keeps them: student layer m from teacher layer ``selection.layers[m]``,
    everything outside the layers (embeddings and their projection, DeBERTa's relative-position
    embeddings, poolers, final norms, the task head) sliced to the kept channels and tokens. What
    the student has and the teacher lacks (ModernBERT's first layer has no norm before attention,
    every other layer has one) keeps its new initialisation, and the log says so."""
    family = family_of(teacher)
    config = teacher.config
    hidden, width = config.hidden_size, head_width(config)
    teacher_prefix, student_prefix = layers_prefix(teacher), layers_prefix(student)
    teacher_state = teacher.state_dict()
    tables = {name + ".weight" for name, module in teacher.named_modules() if isinstance(module, torch.nn.Embedding)}
    words = next(name for name, module in teacher.named_modules() if module is teacher.get_input_embeddings())
    channels = torch.tensor(selection.channels)
    state = {}
    for key, target in student.state_dict().items():
        if key.startswith(student_prefix):
            index, rest = key[len(student_prefix):].split(".", 1)
            layer = int(index)
            source = f"{teacher_prefix}{selection.layers[layer] - 1}.{rest}"
            module, kind = rest.rsplit(".", 1)
            units = {"hidden": channels,
                     "heads": torch.tensor([head * width + unit for head in selection.heads[layer]
                                            for unit in range(width)]),
                     "neurons": torch.tensor(selection.neurons[layer])}
            value = teacher_state.get(source)
            axes = None if value is None else _axes_in_layer(family, module, kind, value.dim())
        else:
            source, value = key, teacher_state.get(key)
            units = {"hidden": channels, "vocab": None if selection.tokens is None else torch.tensor(selection.tokens)}
            axes = None
            if value is not None and key in tables:  # a table's rows are entries (tokens, positions), never channels
                axes = ("vocab" if key == words + ".weight" else None, "hidden" if value.shape[1] == hidden else None)
        if value is None:
            continue
        value = value.to(target.device)
        if axes is None:
            axes = tuple("hidden" if size == hidden else None for size in value.shape)
        for dim, axis in enumerate(axes):
            if axis is None or units.get(axis) is None:
                continue
            kept = units[axis]
            blocks = value.shape[dim] // (config.num_attention_heads * width if axis == "heads"
                                          else config_value(config, "intermediate_size") if axis == "neurons"
                                          else value.shape[dim])
            if blocks > 1:  # fused projections: queries, keys and values (or input and gate) one after another
                kept = torch.cat([kept + block * (value.shape[dim] // blocks) for block in range(blocks)])
            value = value.index_select(dim, kept)
        if value.shape == target.shape:
            state[key] = value
        else:  # a tensor this table does not cut as the student's configuration shapes it
            logger.warning("%s: the teacher's %s cut to %s, the student's is %s; it keeps its new initialisation",
                           key, tuple(teacher_state[source].shape), tuple(value.shape), tuple(target.shape))
    missing, _ = student.load_state_dict(state, strict=False)
    if missing:
        logger.info("student weights not copied from the teacher (new initialisation): %s", ", ".join(missing))


def selection_projection(selection: Selection, teacher_width: int) -> torch.nn.Linear:
    """W: student width → teacher width, mapping each kept channel back to its place (0 elsewhere):
    the projection of stage 1's hidden and embedding losses starts as the pruning's own selection."""
    projection = torch.nn.Linear(len(selection.channels), teacher_width)
    with torch.no_grad():
        projection.weight.zero_()
        projection.bias.zero_()
        projection.weight[selection.channels, range(len(selection.channels))] = 1.0
    return projection
