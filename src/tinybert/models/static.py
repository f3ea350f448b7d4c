"""The static-embedding student: a vector per token, their mean over a text, a small head, in
model2vec's format (MinishLab/model2vec), so that ``model2vec.StaticModel.from_pretrained(DIR)``
encodes with it and ``model2vec.inference.StaticModelPipeline.from_pretrained(DIR)`` predicts with it.

It computes exactly what model2vec computes: a text's tokens without special tokens and without the
unknown token, the mean of their vectors (not normalised), then the head (linear, ReLU, linear; a
softmax over classes, or a score). Its token vectors start from the fine-tuned teacher, as model2vec
makes them from a sentence encoder: each token between [CLS] and [SEP] through the teacher's
encoder, mean-pooled, reduced by PCA, weighted by SIF (a/(a + p) with p the token's frequency, here
counted in the training data rather than guessed from its rank). Then stage 2 trains vectors and head
on the teacher's soft labels.

Files: ``model.safetensors`` (``embeddings``), ``head.safetensors`` (``head.{i}.weight``/``bias``),
``tokenizer.json``, ``config.json`` (model2vec's fields, ``head_config`` with the classes, and
``tinybert`` with the task's labels).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers.modeling_outputs import SequenceClassifierOutput

from ..data import LabelSpace
from ..errors import InputError
from ..settings import flag_of, option

STATIC = "static"  # the --student value
MODEL_TYPE = "model2vec"
HEAD_FILE = "head.safetensors"
SIF_COEFFICIENT = 1e-4  # model2vec's default
ENCODING_BATCH = 256


@dataclass
class StaticOptions:
    """Settings of a static-embedding student (``--student static``)."""

    static_dims: int = option(256, "--student static: dimensions of each token vector (PCA of the teacher's)")
    static_init: Literal["encoder", "embeddings", "random"] = option(
        "encoder", "--student static: where token vectors start: each token through the teacher's encoder "
                   "(model2vec's way), the teacher's input embeddings, or random")
    static_lr: float = option(5e-3, "--student static: learning rate of its token vectors and head, in place of "
                                    "--lr (which suits transformers: a static student barely moves at 3e-5)")


class StaticConfig:
    """A static student's configuration: what the rest of tinybert reads of a model's, and model2vec's
    ``config.json`` (with the task's labels and the tokens left out of the mean, for tinybert)."""

    model_type = MODEL_TYPE
    num_hidden_layers = 0
    head_layers = 2

    def __init__(self, vocab_size: int, dims: int, label_space: LabelSpace, max_length: int, uncounted: list[int]):
        self.vocab_size, self.hidden_size, self.label_space = vocab_size, dims, label_space
        self.max_length, self.uncounted = max_length, uncounted

    @property
    def num_labels(self) -> int:
        return self.label_space.num_labels

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        space = self.label_space
        config = {"model_type": MODEL_TYPE, "architectures": ["StaticModel"], "hidden_dim": self.hidden_size,
                  "normalize": False, "max_length": self.max_length, "pooling": "mean",
                  "head_config": {"n_layers": self.head_layers,
                                  "activation": "identity" if space.is_regression else "softmax",
                                  "classes": None if space.is_regression else space.names},
                  "tinybert": {"kind": space.kind, "labels": space.names, "uncounted": self.uncounted}}
        (Path(directory) / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


class StaticStudent(torch.nn.Module):
    """Token vectors (``vectors``: vocabulary × dims), averaged over the tokens that count (not special,
    not unknown: ``counted``), and a head with one hidden layer as wide as the vectors."""

    def __init__(self, vectors: torch.Tensor, counted: torch.Tensor, label_space: LabelSpace, max_length: int):
        super().__init__()
        if label_space.task != "sequence":
            raise InputError(f"the static student predicts a label or a score per text; this teacher is a "
                             f"{label_space.task} model", fix="distil a tagger or a QA model into a transformer "
                                                             "student (leave out --student static)")
        vocabulary, dims = vectors.shape
        self.config = StaticConfig(vocabulary, dims, label_space, max_length,
                                   torch.nonzero(~counted.bool()).flatten().tolist())
        self.embeddings = torch.nn.Embedding.from_pretrained(vectors.float(), freeze=False)
        self.register_buffer("counted", counted.bool(), persistent=False)
        self.head = torch.nn.Sequential(torch.nn.Linear(dims, dims), torch.nn.ReLU(),
                                        torch.nn.Linear(dims, label_space.num_labels))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> SequenceClassifierOutput:
        counted = self.counted[input_ids]
        if attention_mask is not None:
            counted = counted & attention_mask.bool()
        weights = counted.to(self.embeddings.weight.dtype)[..., None]
        pooled = (self.embeddings(input_ids) * weights).sum(1) / weights.sum(1).clamp(min=1)
        return SequenceClassifierOutput(logits=self.head(pooled))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """model2vec's files (the tokenizer is saved beside them, as every model's)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.embeddings.weight.detach().float().cpu().contiguous()},
                  str(directory / "model.safetensors"))
        linear = [module for module in self.head if isinstance(module, torch.nn.Linear)]
        save_file({f"head.{index}.{name}": getattr(layer, name).detach().float().cpu().contiguous()
                   for index, layer in enumerate(linear) for name in ("weight", "bias")}, str(directory / HEAD_FILE))
        self.config.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "StaticStudent":
        directory = Path(directory)
        config = read_config(directory)
        label_space = label_space_of_static(config)
        if not (directory / HEAD_FILE).is_file():
            raise InputError(f"a static student without its head ({HEAD_FILE})", path=directory,
                             fix="use the whole directory `tinybert distill --student static` wrote")
        vectors = load_file(directory / "model.safetensors")["embeddings"]
        counted = torch.ones(len(vectors), dtype=torch.bool)
        counted[config["tinybert"]["uncounted"]] = False
        model = cls(vectors, counted, label_space, config.get("max_length") or 512)
        head = load_file(directory / HEAD_FILE)
        linear = [module for module in model.head if isinstance(module, torch.nn.Linear)]
        for index, layer in enumerate(linear):
            layer.weight.data.copy_(head[f"head.{index}.weight"])
            layer.bias.data.copy_(head[f"head.{index}.bias"])
        return model


def read_config(directory: Path) -> dict | None:
    """A static student's config.json, or None for any other model directory."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    if config.get("model_type") == MODEL_TYPE:
        return config
    # model2vec's StaticModel.save_pretrained writes no model_type unless its distiller made the
    # model: such a directory is known by its tensors ("embeddings", and its optional token weights
    # and mapping)
    weights = path.with_name("model.safetensors")
    if "model_type" not in config and weights.is_file():
        try:
            with safe_open(weights, "np") as tensors:
                names = set(tensors.keys())
        except (SafetensorError, OSError):  # not a safetensors file (a Git LFS pointer, a truncated download)
            return None
        return config if "embeddings" in names and names <= {"embeddings", "weights", "mapping"} else None
    return None


def label_space_of_static(config: dict) -> LabelSpace:
    if "tinybert" not in config:
        raise InputError("a model2vec model without a task head made by tinybert (config.json has no `tinybert` "
                         "entry)", fix="use a static student written by `tinybert distill --student static`, or "
                                       "distil one from your teacher")
    return LabelSpace(config["tinybert"]["kind"], config["tinybert"]["labels"])


def counted_tokens(tokenizer, vocabulary: int) -> torch.Tensor:
    """The tokens model2vec averages over: every one but special tokens and the unknown token."""
    counted = torch.ones(vocabulary, dtype=torch.bool)
    counted[[index for index in tokenizer.all_special_ids if index < vocabulary]] = False
    return counted


def check_dims(dims: int, teacher_width: int, name=flag_of) -> None:
    """``name(key)``: how a message names a setting."""
    if not 1 <= dims <= teacher_width:
        raise InputError(f"{name('static_dims')} {dims} is not between 1 and the teacher's width {teacher_width}",
                         fix=f"give 1 to {teacher_width} (PCA keeps at most the teacher's dimensions)")


def token_vectors(teacher, tokenizer, token_ids: list[int], options: StaticOptions, counts: np.ndarray | None,
                  show_progress: bool = True) -> torch.Tensor:
    """The starting vector of each of ``token_ids`` (teacher ids, in the student's order): see the
    module's docstring. ``counts``: how often each teacher id occurs in the training data."""
    check_dims(options.static_dims, teacher.config.hidden_size)
    if options.static_init == "random":
        generator = torch.Generator().manual_seed(0)
        return torch.randn(len(token_ids), options.static_dims, generator=generator) * 0.02
    if options.static_init == "embeddings":
        vectors = teacher.get_input_embeddings().weight.detach().float().cpu()[token_ids].numpy()
    else:
        vectors = _encoded(teacher, tokenizer, token_ids, show_progress)
    from sklearn.decomposition import PCA
    if options.static_dims < min(vectors.shape):
        vectors = PCA(n_components=options.static_dims, svd_solver="full").fit_transform(vectors)
    else:  # no fewer dimensions than asked: centred, as PCA would leave them
        vectors = vectors - vectors.mean(0)
    if counts is not None:
        frequency = np.zeros(len(token_ids))
        known = np.asarray(token_ids) < len(counts)
        frequency[known] = counts[np.asarray(token_ids)[known]] / max(counts.sum(), 1)
        vectors = vectors * (SIF_COEFFICIENT / (SIF_COEFFICIENT + frequency))[:, None]
    return torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))


@torch.no_grad()
def _encoded(teacher, tokenizer, token_ids: list[int], show_progress: bool) -> np.ndarray:
    """Each token between the tokenizer's first and last special tokens ([CLS] t [SEP]) through the
    teacher's encoder, its outputs averaged over the three positions (model2vec's mean pooling)."""
    around = tokenizer("")["input_ids"]  # the special tokens a text gets: [CLS] and [SEP], <s> and </s>
    first, last = around[:1], around[1:]
    encoder = teacher.base_model.eval()
    device = next(teacher.parameters()).device
    out = []
    for start in tqdm(range(0, len(token_ids), ENCODING_BATCH), desc="encoding tokens", unit="batch",
                      disable=not show_progress, leave=False):
        batch = torch.tensor([[*first, index, *last] for index in token_ids[start:start + ENCODING_BATCH]],
                             device=device)
        hidden = encoder(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
        out.append(hidden.float().mean(1).cpu().numpy())
    return np.concatenate(out)
