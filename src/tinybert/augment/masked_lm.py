"""Masked-LM candidates: the top-K whole words a masked LM predicts for a single-piece word,
for many sentences' masked copies at once (grouped by length, so none is padded), with the
vocabulary head at the masked position only; on CPU the model runs in onnxruntime."""

from __future__ import annotations

import io
import logging
import os
import time
import typing
from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import models
from transformers import AutoModelForMaskedLM, AutoTokenizer

from ..errors import InputError
from ..inference.export import FP32_TOLERANCE, export_graph
from ..inference.runners import cpu_session
from .words import is_candidate_token, is_cjk

logger = logging.getLogger(__name__)

MLMRuntime = Literal["auto", "torch", "onnxruntime"]
MLM_RUNTIMES = typing.get_args(MLMRuntime)


def whole_word(tokenizer, token: str) -> str:
    """The word a vocabulary entry stands for when it starts one, else "": WordPiece marks the
    pieces that continue a word (``##``), byte-level BPE and SentencePiece the ones that start
    one (``Ġ``, ``▁``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or isinstance(backend.model, models.WordPiece):  # a slow tokenizer is a BERT one
        prefix = backend.model.continuing_subword_prefix if backend is not None else "##"
        return "" if token.startswith(prefix) else token
    if token[:1] in ("Ġ", "▁"):
        return tokenizer.convert_tokens_to_string([token]).strip()
    return ""


class MaskedLMCandidates:
    """Top-K whole-word predictions of a masked LM for single-piece words, batched."""

    def __init__(self, model_dir: str | os.PathLike, k: int, batch_size: int = 64, device: str | None = None,
                 runtime: str = "auto"):
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise InputError("no masked LM here (config.json missing)", path=path,
                             fix="pass --mlm a local AutoModelForMaskedLM directory, e.g. bert-base-uncased")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if getattr(self.tokenizer, "add_prefix_space", None) is False:
            # byte-level BPE (RoBERTa, GPT-2) marks a word's start by its leading space: words given
            # one by one need it added
            self.tokenizer = AutoTokenizer.from_pretrained(path, add_prefix_space=True)
        try:
            self.model = AutoModelForMaskedLM.from_pretrained(path, dtype=torch.float32).eval()
        except (OSError, ValueError) as error:
            raise InputError(f"cannot load a masked LM ({error})", path=path,
                             fix="pass --mlm a directory that AutoModelForMaskedLM loads") from None
        # under torchrun / accelerate launch, each process on its own GPU (of those it sees)
        local = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device(device or (f"cuda:{local % torch.cuda.device_count()}" if torch.cuda.is_available()
                                              else "cpu"))
        self.model.to(self.device)
        self.k = k
        self.batch_size = batch_size
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)
        logits_width = self.model.get_output_embeddings().weight.shape[0]
        if len(self.tokenizer) > logits_width:
            raise InputError(f"the masked LM's tokenizer has {len(self.tokenizer):,} entries but the model's "
                             f"vocabulary has {logits_width:,}", path=path,
                             fix="pass --mlm a directory whose tokenizer is the one the model was trained with")
        # the whole word each vocabulary entry stands for ("" where it is only part of a word);
        # rows beyond the tokenizer (a vocabulary padded to a round size) are never candidates
        special = set(self.tokenizer.all_special_ids)
        tokens = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        self.vocabulary = [whole_word(self.tokenizer, token) if i not in special else "" for i, token in enumerate(tokens)]
        self.vocabulary += [""] * (logits_width - len(self.vocabulary))
        plain = torch.tensor([is_candidate_token(word) for word in self.vocabulary])
        cjk = torch.tensor([is_cjk(word) for word in self.vocabulary])
        # rows of allowed vocabulary: for CJK words only CJK characters, for others only non-CJK words
        self.allowed = torch.stack([plain & ~cjk, plain & cjk]).to(self.device)
        self.special_tokens = frozenset(self.tokenizer.all_special_tokens)
        head = getattr(self.model, "cls", None) or getattr(self.model, "lm_head", None)
        self._at_mask = _LogitsAtMask(self.model.base_model, head).eval() if head is not None else None
        if runtime not in MLM_RUNTIMES:
            raise InputError(f"unknown masked-LM runtime {runtime!r}", fix=f"use one of {', '.join(MLM_RUNTIMES)}")
        self.session = None
        if runtime == "onnxruntime" or (runtime == "auto" and self.device.type == "cpu"):
            self.session = self._onnx_session(path, required=runtime == "onnxruntime")

    def piece_counts(self, sentences: list[list[str]]):
        """Tokenises the word lists once: ids per sentence and, per word, its piece positions."""
        encoding = self.tokenizer(sentences, is_split_into_words=True, truncation=True,
                                  max_length=self.max_length)
        positions = []
        for index in range(len(sentences)):
            by_word = defaultdict(list)
            for position, word in enumerate(encoding.word_ids(index)):
                if word is not None:
                    by_word[word].append(position)
            positions.append(by_word)
        return encoding["input_ids"], positions

    @torch.inference_mode()
    def candidates(self, copies: list[tuple[list[int], int, bool]]) -> list[list[str]]:
        """For each masked copy (token ids, mask position, word is CJK), its K candidates, best
        first. Copies of equal length share a forward pass, so none is padded."""
        results: list[list[str]] = [[] for _ in copies]
        by_length = defaultdict(list)
        for index, (ids, _, _) in enumerate(copies):
            by_length[len(ids)].append(index)
        for length in sorted(by_length):
            group = by_length[length]
            for start in range(0, len(group), self.batch_size):
                chosen = group[start:start + self.batch_size]
                input_ids = torch.tensor([copies[i][0] for i in chosen], device=self.device)
                positions = torch.tensor([copies[i][1] for i in chosen], device=self.device)
                cjk = torch.tensor([copies[i][2] for i in chosen], device=self.device)
                logits = self._logits_at(input_ids, positions)
                logits = logits.masked_fill(~self.allowed[cjk.long()], float("-inf"))
                top = logits.topk(min(self.k, logits.shape[-1]), dim=-1)
                for i, ids, values in zip(chosen, top.indices.tolist(), top.values.tolist()):
                    results[i] = [self.vocabulary[t] for t, v in zip(ids, values) if v != float("-inf")]
        return results

    def _logits_at(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.session is not None:
            feeds = {"input_ids": input_ids.cpu().numpy(), "positions": positions.cpu().numpy()}
            return torch.from_numpy(self.session.run(["logits"], feeds)[0]).to(self.device)
        if self._at_mask is None:  # an architecture whose head we do not know: all positions
            rows = torch.arange(len(input_ids), device=self.device)
            return self.model(input_ids=input_ids).logits[rows, positions].float()
        return self._at_mask(input_ids, positions).float()

    def _onnx_session(self, path: Path, required: bool):
        """The masked LM in onnxruntime, whose CPU matrix products are faster than PyTorch's, or
        None (with a warning) where it cannot export or its logits differ from PyTorch's."""
        def unavailable(reason: str):
            if required:
                raise InputError(f"this masked LM cannot run in onnxruntime: {reason}", path=path,
                                 fix="use --mlm-runtime torch")
            logger.warning("%s: masked LM stays in PyTorch (%s)", path, reason)
            return None

        if self._at_mask is None:
            return unavailable("its masked-LM head is not one tinybert knows")
        sample = self.tokenizer(["a short example", "one more , rather longer , example sentence ."],
                                padding=True, return_tensors="pt")["input_ids"]
        positions = torch.tensor([1, min(3, sample.shape[1] - 1)])
        started = time.perf_counter()
        graph = io.BytesIO()
        try:
            export_graph(self._at_mask.cpu(), {"input_ids": sample, "positions": positions}, graph,
                         dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "positions": {0: "batch"},
                                       "logits": {0: "batch"}})
            session = cpu_session(graph.getvalue())
        except Exception as error:  # any exporter or runtime failure leaves the PyTorch path, which works
            return unavailable(f"export failed: {type(error).__name__}: {error}")
        finally:
            self._at_mask.to(self.device)
        with torch.inference_mode():
            expected = self._at_mask(sample.to(self.device), positions.to(self.device)).float().cpu()
        got = session.run(["logits"], {"input_ids": sample.numpy(), "positions": positions.numpy()})[0]
        difference = float(np.abs(got - expected.numpy()).max())
        if difference > FP32_TOLERANCE:
            return unavailable(f"its onnxruntime logits differ from PyTorch's by {difference:.2g}")
        logger.info("masked LM running in onnxruntime (exported in %.1f s)", time.perf_counter() - started)
        return session


class _LogitsAtMask(torch.nn.Module):
    """A masked LM's logits at one position per sequence: the encoder at every position, the
    vocabulary head only where the mask is (half the work of a short sentence is that head)."""

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids).last_hidden_state
        return self.head(hidden[torch.arange(hidden.shape[0], device=hidden.device), positions])
