"""The algorithm (TinyBERT paper, Algorithm 1): for each eligible word, candidates from the
masked LM (single-piece words) or word vectors (longer words); each variant replaces each such
word with probability p by a random candidate."""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Literal

from ..errors import InputError
from ..settings import option
from .masked_lm import MaskedLMCandidates, MLMRuntime
from .vectors import WordVectors
from .words import WordSplitter, is_cjk, is_eligible

logger = logging.getLogger(__name__)

# settings that change how the rows are computed, not what they are (the output is byte-identical)
OUTPUT_NEUTRAL_SETTINGS = frozenset({"batch_size", "chunk_rows", "mlm_runtime"})


@dataclass
class AugmentConfig:
    candidates: int = option(15, "K: candidates per word", flags=("--M",))
    variants: int = option(20, "N: variants tried per example, duplicates dropped", flags=("--N",))
    probability: float = option(0.4, "p: probability that an eligible word is replaced", flags=("--p",))
    seed: int = option(42, "random seed (each row draws from its own generator seeded by it)")
    batch_size: int = option(64, "masked copies per forward pass")
    chunk_rows: int = option(256, "rows read, augmented and written (and checkpointed) together")
    field: Literal["first", "second"] = option("first", "which text of a pair to vary; the other stays as it is")
    augment_first: int | None = option(None, "give variants to the first N rows only; later rows are copied "
                                             "as they are (bounds the time on a large file)")
    mlm_runtime: MLMRuntime = option("auto", "where the masked LM runs: auto = onnxruntime on CPU (faster matrix "
                                             "products, the same candidates), PyTorch on GPU")


class Augmenter:
    def __init__(self, config: AugmentConfig, mlm: MaskedLMCandidates | None, vectors: WordVectors | None):
        self.config = config
        self.mlm = mlm
        self.vectors = vectors
        self.splitter = WordSplitter(mlm.tokenizer if mlm else None)
        self.special_tokens = mlm.special_tokens if mlm else frozenset()

    def masked_copies(self, sentences: list[list[str]], replaceable: list[set[int]] | None = None):
        """The masked LM's work for these word lists: one copy per eligible single-piece word
        (token ids with that word masked, its position, whether it is CJK), the (sentence, word)
        that owns each copy, and the (sentence, word) pairs of several pieces, left to word vectors.
        ``replaceable``: the only words of each sentence that may change (e.g. no entity's)."""
        eligible = [[i for i, w in enumerate(words) if is_eligible(w, self.special_tokens)
                     and (replaceable is None or i in replaceable[s])] for s, words in enumerate(sentences)]
        if self.mlm is None:
            return [], [], [(s, w) for s in range(len(sentences)) for w in eligible[s]]
        ids, positions = self.mlm.piece_counts(sentences)
        copies, owners, multi_piece = [], [], []
        mask_id = self.mlm.tokenizer.mask_token_id
        for s, words in enumerate(sentences):
            for w in eligible[s]:
                pieces = positions[s].get(w, [])
                if len(pieces) == 1:
                    masked = list(ids[s])
                    masked[pieces[0]] = mask_id
                    copies.append((masked, pieces[0], is_cjk(words[w])))
                    owners.append((s, w))
                elif len(pieces) > 1:
                    multi_piece.append((s, w))
        return copies, owners, multi_piece

    def word_candidates(self, texts: list[str]) -> list[tuple[list[str], dict[int, list[str]]]]:
        """Words of each text and, for each eligible word with candidates, its K candidates."""
        sentences = [self.splitter.split(text) for text in texts]
        return list(zip(sentences, self.candidates_of(sentences)))

    def candidates_of(self, sentences: list[list[str]], replaceable: list[set[int]] | None = None) -> list[dict]:
        """For each word list, its eligible (and replaceable) words' K candidates, by position."""
        found: list[dict[int, list[str]]] = [{} for _ in sentences]
        copies, owners, for_vectors = self.masked_copies(sentences, replaceable)
        if copies:
            for (s, w), candidates in zip(owners, self.mlm.candidates(copies)):
                found[s][w] = candidates
        if self.vectors is not None and for_vectors:
            neighbours = self.vectors.neighbours([sentences[s][w] for s, w in for_vectors], self.config.candidates)
            for s, w in for_vectors:
                found[s][w] = neighbours[sentences[s][w]]
        return [{w: c for w, c in cands.items() if c} for cands in found]

    def variants(self, words: list[str], candidates: dict[int, list[str]], rng: random.Random) -> list[str]:
        """Up to N distinct variants, each differing from the original words somewhere."""
        return [" ".join(new) for new in self.variant_words(words, candidates, rng)]

    def variant_words(self, words: list[str], candidates: dict[int, list[str]], rng: random.Random) -> list[list[str]]:
        """The variants as word lists (a replaced word stays one word, so tags stay aligned)."""
        seen = {" ".join(words)}
        result = []
        for _ in range(self.config.variants):
            new = list(words)
            for index in sorted(candidates):
                choice = rng.choice(candidates[index])
                if rng.random() < self.config.probability:
                    new[index] = choice
            text = " ".join(new)
            if text not in seen:
                seen.add(text)
                result.append(new)
        return result


def build_augmenter(config: AugmentConfig, mlm_dir: str | os.PathLike | None,
                    word_vectors: str | os.PathLike | None) -> Augmenter:
    if mlm_dir is None and word_vectors is None:
        raise InputError("augmentation needs candidates: neither a masked LM nor word vectors given",
                         fix="pass --mlm DIR (a masked LM) and/or --word-vectors FILE")
    mlm = (MaskedLMCandidates(mlm_dir, config.candidates, config.batch_size, runtime=config.mlm_runtime)
           if mlm_dir else None)
    if mlm is None:
        logger.warning("no masked LM given: every word takes word-vector candidates (pass --mlm for the "
                       "paper's masked-LM candidates)")
    if word_vectors is None:
        logger.warning("no word vectors given: words of several WordPieces stay as they are "
                       "(pass --word-vectors to vary them too)")
    lowercase = bool(mlm and WordSplitter(mlm.tokenizer).lowercases)
    vectors = WordVectors.load(word_vectors, lowercase=lowercase) if word_vectors else None
    return Augmenter(config, mlm, vectors)
