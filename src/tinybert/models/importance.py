"""How much each hidden channel, attention head and feed-forward neuron of a fine-tuned teacher
matters on the task's own data: what width pruning keeps.

Two measures, each summed over a sample of the training rows through the teacher in eval mode:

- ``activations`` (Minitron, Muralidharan et al. 2024): how large a unit's output is. A head by
  the norm of its context vector, a neuron by its mean magnitude after the activation function,
  a hidden channel by its mean magnitude in the embedding output and in every kept layer's output
  (the residual stream all of them share), each averaged over an example's real tokens.
- ``gradients`` (first-order Taylor, Michel et al. 2019, as TextPruner and CoFi score): how much
  the teacher's loss on its own predictions would change without the unit, |Σ_tokens a·∂L/∂a| per
  example, the same quantities as above. For a regression teacher L is its output itself.

Nothing here changes the teacher: it is read through hooks on the modules the families table names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import EncodedData, eval_loader
from ..data.batching import model_inputs
from .families import family_of, layers_of, module_at

Measure = Literal["activations", "gradients"]
SCORING_BATCH = 32


@dataclass
class Importance:
    """Scores of the teacher's units (higher: more important): ``channels`` (hidden,), and by
    1-based teacher layer ``heads`` (heads,) and ``neurons`` (intermediate,)."""

    channels: torch.Tensor
    heads: dict[int, torch.Tensor]
    neurons: dict[int, torch.Tensor]


def sample_rows(rows, count: int, seed: int = 0) -> EncodedData:
    """``count`` rows drawn without replacement (all when there are fewer), in the data's order:
    augmented variants follow their original, so the first rows alone would be few sentences."""
    chosen = np.sort(np.random.default_rng(seed).choice(len(rows), size=min(count, len(rows)), replace=False))
    features = [rows[int(index)] for index in chosen]
    return EncodedData(features, [len(feature["input_ids"]) for feature in features])


def measure_importance(teacher: torch.nn.Module, rows, tokenizer, layers: list[int], measure: Measure = "gradients",
                       samples: int = 512, show_progress: bool = True) -> Importance:
    """The importance of the units of ``teacher`` (a task model) in its 1-based ``layers``, on
    ``samples`` rows of ``rows`` (a token cache, or any dataset of token rows)."""
    family = family_of(teacher)
    heads = teacher.config.num_attention_heads
    chosen = sorted(set(layers))
    device = next(teacher.parameters()).device
    loader, _ = eval_loader(sample_rows(rows, samples), tokenizer, SCORING_BATCH)
    inputs_of: dict[tuple[str, int], torch.Tensor] = {}

    def keep_input(kind: str, layer: int):
        def hook(module, args):
            inputs_of[kind, layer] = args[0]
        return hook
    modules = layers_of(teacher)
    hooks = [module_at(modules[layer - 1], path).register_forward_pre_hook(keep_input(kind, layer))
             for layer in chosen for kind, path in (("heads", family.heads_out), ("neurons", family.neurons_out))]
    totals: dict = {}
    was_training, needed = teacher.training, [p.requires_grad for p in teacher.parameters()]
    teacher.eval().requires_grad_(measure == "gradients")
    try:
        for batch in tqdm(loader, desc=f"scoring units by {measure}", unit="batch", disable=not show_progress,
                          leave=False):
            inputs = {key: value.to(device) for key, value in model_inputs(batch).items()}
            with torch.set_grad_enabled(measure == "gradients"):
                outputs = teacher(**inputs, output_hidden_states=True)
            states = [outputs.hidden_states[0]] + [outputs.hidden_states[layer] for layer in chosen]
            captured = {**{("channels", index): state for index, state in enumerate(states)}, **inputs_of}
            if measure == "gradients":
                loss = _own_prediction_loss(teacher, outputs, inputs["attention_mask"])
                gradients = torch.autograd.grad(loss, list(captured.values()), allow_unused=True)
                per_example = {key: _taylor(value, gradient) for (key, value), gradient in zip(captured.items(), gradients)}
            else:
                per_example = {key: _magnitude(key[0], value, inputs["attention_mask"], heads)
                               for key, value in captured.items()}
            for (kind, index), scores in per_example.items():
                if kind == "heads" and measure == "gradients":
                    scores = scores.view(len(scores), heads, -1).sum(-1)
                scores = scores.abs().sum(0).detach().double().cpu() if measure == "gradients" else scores.sum(0).cpu()
                key = "channels" if kind == "channels" else (kind, index)
                totals[key] = totals.get(key, 0) + scores
            inputs_of.clear()
    finally:
        for hook in hooks:
            hook.remove()
        teacher.train(was_training)
        for parameter, flag in zip(teacher.parameters(), needed):
            parameter.requires_grad_(flag)
    return Importance(channels=totals["channels"],
                      heads={layer: totals["heads", layer] for layer in chosen},
                      neurons={layer: totals["neurons", layer] for layer in chosen})


def _magnitude(kind: str, values: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Per example (batch, units): a head's context-vector norm, else a unit's magnitude, averaged
    over the example's real tokens."""
    values = values.detach().float()
    if kind == "heads":
        values = values.view(*values.shape[:2], heads, -1).norm(dim=-1)
    else:
        values = values.abs()
    real = mask.float()[..., None]
    return (values * real).sum(1) / real.sum(1)


def _taylor(values: torch.Tensor, gradient: torch.Tensor | None) -> torch.Tensor:
    """Per example (batch, units): Σ_tokens a·∂L/∂a (padded tokens have no gradient)."""
    if gradient is None:
        return torch.zeros(values.shape[0], values.shape[-1], device=values.device)
    return (values.detach().float() * gradient.float()).sum(1)


def _own_prediction_loss(teacher, outputs, mask: torch.Tensor) -> torch.Tensor:
    """The teacher's loss against its own predictions (what a student must keep), summed over the
    batch so that each example's gradients are its own; a regression teacher's output itself."""
    if getattr(outputs, "start_logits", None) is not None:  # QA: where the answer starts and ends
        return sum(F.cross_entropy(logits.masked_fill(mask == 0, torch.finfo(logits.dtype).min),
                                   logits.detach().masked_fill(mask == 0, torch.finfo(logits.dtype).min).argmax(-1),
                                   reduction="sum") for logits in (outputs.start_logits, outputs.end_logits))
    logits = outputs.logits
    if logits.dim() == 3:  # a tag per token: the real ones
        return F.cross_entropy(logits[mask.bool()], logits.detach()[mask.bool()].argmax(-1), reduction="sum")
    if teacher.config.problem_type == "regression" or logits.shape[-1] == 1:
        return logits.sum()
    return F.cross_entropy(logits, logits.detach().argmax(-1), reduction="sum")
