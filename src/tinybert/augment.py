"""Data augmentation (TinyBERT paper, Algorithm 1), batched, seeded, streamed and resumable.

For every example, up to N variants: each eligible word (not a stop word, punctuation, number
or special token) is replaced with probability p by a random one of its K candidates. A word
that is a single WordPiece gets the masked LM's top-K whole words at its position; a longer
word gets its K nearest neighbours by cosine in a word-vector file.

What differs from the reference code: the masked copies of many sentences go through the
model together (grouped by length, so no copy is padded and its logits do not depend on the
batch), the vocabulary head runs at the masked position only, and on CPU the masked LM runs in
onnxruntime, whose matrix products are faster than PyTorch's there (its candidates are checked
equal); word-vector neighbours are computed once per distinct word with one matrix product;
every row draws from its own generator seeded by (seed, line), so the output is the same
whatever the batch size and a resumed run continues exactly; Chinese characters are replaced
by Chinese candidates; the whole vector file is used. As in the paper's Algorithm 1, the masked
LM sees the masked sentence alone: the reference code also appends the unmasked sentence as a
second segment, which doubles the work of every forward pass.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import random
import re
import time
import unicodedata
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import normalizers, pre_tokenizers
from tqdm.auto import tqdm
from transformers import AutoModelForMaskedLM, AutoTokenizer

from .data import DataOptions, format_row, header_line, open_task_file, report_bad_lines
from .errors import InputError

logger = logging.getLogger(__name__)

# NLTK's English stop-word list, which the reference code's list follows.
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him
his himself she she's her hers herself it it's its itself they them their theirs themselves what which who
whom this that that'll these those am is are was were be been being have has had having do does did doing
a an the and but if or because as until while of at by for with about against between into through during
before after above below to from up down in out on off over under again further then once here there when
where why how all any both each few more most other some such no nor not only own same so than too very s t
can will just don don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't
doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't
shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't
""".split())
_NUMBER = re.compile(r"^[+-]?[\d.,:/%-]*\d[\d.,:/%-]*$")
_BRACKETED = re.compile(r"^\[.*\]$")
MLM_RUNTIMES = ("auto", "torch", "onnxruntime")
# settings that change how the rows are computed, not what they are (the output is byte-identical)
OUTPUT_NEUTRAL_SETTINGS = frozenset({"batch_size", "chunk_rows", "mlm_runtime"})


@dataclass
class AugmentConfig:
    candidates: int = 15  # K: candidates per word
    variants: int = 20  # N_a: variants tried per example (duplicates are dropped)
    probability: float = 0.4  # p: chance that an eligible word is replaced
    seed: int = 42
    batch_size: int = 64  # masked copies per forward pass
    chunk_rows: int = 256  # rows read, augmented and written (and checkpointed) together
    field: str = "first"  # which text of a pair to vary: "first" or "second"
    augment_first: int | None = None  # only the first N rows get variants; later rows are copied
    mlm_runtime: str = "auto"  # "torch", "onnxruntime" (CPU), or "auto": onnxruntime on CPU, torch on GPU


def is_cjk(text: str) -> bool:
    """True for a single character in the CJK ideograph blocks (as BERT's tokenizer defines them)."""
    if len(text) != 1:
        return False
    code = ord(text)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0x2A700 <= code <= 0x2B73F or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF
            or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F)


def _is_punctuation_or_symbol(word: str) -> bool:
    return all(unicodedata.category(char)[0] in "PS" for char in word)


def is_eligible(word: str, special_tokens: frozenset[str] = frozenset()) -> bool:
    """Words the algorithm may replace: not stop words, punctuation, numbers or special tokens."""
    return not (word in special_tokens or word.lower() in STOP_WORDS or _is_punctuation_or_symbol(word)
                or _NUMBER.match(word) or _BRACKETED.match(word))


def _is_candidate_token(token: str) -> bool:
    """A vocabulary entry that can stand in for a whole word."""
    return (not token.startswith("##") and not _BRACKETED.match(token)
            and any(char.isalpha() for char in token))


class WordSplitter:
    """BERT's basic tokenisation: the masked LM's own normaliser and pre-tokeniser when there is
    one (lower-casing, accents, CJK characters split apart), otherwise BERT's defaults without
    lower-casing."""

    def __init__(self, tokenizer=None):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.normalizer is not None and backend.pre_tokenizer is not None:
            self.normalizer, self.pre_tokenizer = backend.normalizer, backend.pre_tokenizer
        else:
            self.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
            self.pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    def split(self, text: str) -> list[str]:
        return [word for word, _ in self.pre_tokenizer.pre_tokenize_str(self.normalizer.normalize_str(text))]


# --------------------------------------------------------------------------------------------
# Masked-LM candidates


class MaskedLMCandidates:
    """Top-K whole-word predictions of a masked LM for single-piece words, batched."""

    def __init__(self, model_dir: str | os.PathLike, k: int, batch_size: int = 64, device: str | None = None,
                 runtime: str = "auto"):
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise InputError("no masked LM here (config.json missing)", path=path,
                             fix="pass --mlm a local AutoModelForMaskedLM directory, e.g. bert-base-uncased")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        try:
            self.model = AutoModelForMaskedLM.from_pretrained(path).eval()
        except (OSError, ValueError) as error:
            raise InputError(f"cannot load a masked LM ({error})", path=path,
                             fix="pass --mlm a directory that AutoModelForMaskedLM loads") from None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.k = k
        self.batch_size = batch_size
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)
        vocabulary = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        special = set(self.tokenizer.all_special_ids)
        plain = torch.tensor([i not in special and _is_candidate_token(t) for i, t in enumerate(vocabulary)])
        cjk = torch.tensor([is_cjk(token) for token in vocabulary])
        logits_width = self.model.get_output_embeddings().weight.shape[0]
        # rows of allowed vocabulary: for CJK words only CJK characters, for others only non-CJK words
        self.allowed = torch.stack([plain & ~cjk, plain & cjk])[:, :logits_width].to(self.device)
        self.special_tokens = frozenset(self.tokenizer.all_special_tokens)
        self.vocabulary = vocabulary
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
        from .export import FP32_TOLERANCE, cpu_session

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
        positions = torch.tensor([2, 3])
        started = time.perf_counter()
        serialised = io.BytesIO()
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                # the TorchScript exporter's deprecation and tracer warnings are about internals
                warnings.simplefilter("ignore")
                torch.onnx.export(self._at_mask.cpu(), (sample, positions), serialised,
                                  input_names=["input_ids", "positions"], output_names=["logits"],
                                  dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                                "positions": {0: "batch"}, "logits": {0: "batch"}},
                                  opset_version=17, dynamo=False)
            session = cpu_session(serialised.getvalue())
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


# --------------------------------------------------------------------------------------------
# Word-vector candidates


class WordVectors:
    """Nearest neighbours by cosine in a GloVe text, word2vec/fastText text or word2vec binary
    file (all of it). Multi-word phrase entries (``New_York``) are skipped."""

    def __init__(self, words: list[str], vectors: np.ndarray, lowercase: bool):
        self.words = words
        self.lowercase = lowercase
        matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self.unit = torch.nn.functional.normalize(matrix, dim=1)
        self.index: dict[str, int] = {}
        for i, word in enumerate(words):
            self.index.setdefault(word, i)
        for i, word in enumerate(words):  # the most frequent casing answers lower-case look-ups
            self.index.setdefault(word.lower(), i)
        self.cache: dict[str, list[str]] = {}

    @classmethod
    def load(cls, path: str | os.PathLike, lowercase: bool = False) -> "WordVectors":
        path = Path(path)
        if not path.is_file():
            raise InputError("word-vector file not found", path=path,
                             fix="pass --word-vectors a GloVe text or word2vec file")
        with open(path, "rb") as handle:
            first = handle.readline()
        header = first.split()
        has_header = len(header) == 2 and all(part.isdigit() for part in header)
        if has_header and _looks_binary(path, len(first)):
            words, vectors = _read_word2vec_binary(path)
        else:
            words, vectors = _read_text_vectors(path, skip_first=has_header)
        keep = [i for i, word in enumerate(words) if "_" not in word and " " not in word]
        logger.info("%s: %d word vectors (%d phrases skipped), dimension %d", path, len(keep),
                    len(words) - len(keep), vectors.shape[1])
        return cls([words[i] for i in keep], vectors[keep], lowercase)

    def neighbours(self, words: list[str], k: int, chunk: int = 256) -> dict[str, list[str]]:
        """K nearest neighbours of each word, one matrix product per chunk of new words, cached."""
        new = [w for w in dict.fromkeys(words) if w not in self.cache]
        known = [w for w in new if self._lookup(w) is not None]
        for word in set(new) - set(known):
            self.cache[word] = []
        for start in range(0, len(known), chunk):
            part = known[start:start + chunk]
            query = self.unit[[self._lookup(w) for w in part]]
            similarity = query @ self.unit.T
            # room for the word itself and for neighbours that fold together when lower-cased
            top = similarity.topk(min(3 * k + 1, similarity.shape[1]), dim=1).indices.tolist()
            for word, row in zip(part, top):
                self.cache[word] = self._clean(word, row, k)
        return {word: self.cache[word] for word in words}

    def _lookup(self, word: str) -> int | None:
        index = self.index.get(word)
        return self.index.get(word.lower()) if index is None else index

    def _clean(self, word: str, row: list[int], k: int) -> list[str]:
        seen = {word.lower()}
        result = []
        for index in row:
            candidate = self.words[index].lower() if self.lowercase else self.words[index]
            if candidate.lower() in seen:
                continue
            seen.add(candidate.lower())
            result.append(candidate)
            if len(result) == k:
                break
        return result


def _looks_binary(path: Path, header_length: int) -> bool:
    with open(path, "rb") as handle:
        handle.seek(header_length)
        sample = handle.read(4096)
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start < len(sample) - 4  # not just a character cut at the sample's end
    return False


def _read_word2vec_binary(path: Path) -> tuple[list[str], np.ndarray]:
    data = path.read_bytes()
    newline = data.index(b"\n")
    count, dimension = map(int, data[:newline].split())
    vectors = np.empty((count, dimension), dtype=np.float32)
    words = []
    offset = newline + 1
    width = 4 * dimension
    for row in range(count):
        space = data.index(b" ", offset)
        words.append(data[offset:space].decode("utf-8", errors="replace").strip())
        start = space + 1
        vectors[row] = np.frombuffer(data, dtype="<f4", count=dimension, offset=start)
        offset = start + width
        if offset < len(data) and data[offset:offset + 1] == b"\n":
            offset += 1
    return words, vectors


def _read_text_vectors(path: Path, skip_first: bool) -> tuple[list[str], np.ndarray]:
    words, rows, dimension = [], [], None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if skip_first and number == 1:
                continue
            parts = line.rstrip().split(" ")
            if len(parts) < 3:
                continue
            if dimension is None:
                dimension = len(parts) - 1
            if len(parts) - 1 != dimension:
                raise InputError(f"{len(parts) - 1} numbers where earlier lines have {dimension}", path=path,
                                 line=number, fix="give a GloVe/word2vec text file with one vector per line")
            try:
                rows.append(np.asarray(parts[1:], dtype=np.float32))
            except ValueError:
                raise InputError("a vector entry is not a number", path=path, line=number,
                                 fix="give a GloVe/word2vec text file: a word, then its numbers") from None
            words.append(parts[0])
    if not rows:
        raise InputError("no word vectors found", path=path, fix="give a GloVe text or word2vec file")
    return words, np.stack(rows)


# --------------------------------------------------------------------------------------------
# The algorithm


class Augmenter:
    def __init__(self, config: AugmentConfig, mlm: MaskedLMCandidates | None, vectors: WordVectors | None):
        self.config = config
        self.mlm = mlm
        self.vectors = vectors
        self.splitter = WordSplitter(mlm.tokenizer if mlm else None)
        self.special_tokens = mlm.special_tokens if mlm else frozenset()

    def masked_copies(self, sentences: list[list[str]]):
        """The masked LM's work for these word lists: one copy per eligible single-piece word
        (token ids with that word masked, its position, whether it is CJK), the (sentence, word)
        that owns each copy, and the (sentence, word) pairs of several pieces, left to word vectors."""
        eligible = [[i for i, w in enumerate(words) if is_eligible(w, self.special_tokens)] for words in sentences]
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
        found: list[dict[int, list[str]]] = [{} for _ in sentences]
        copies, owners, for_vectors = self.masked_copies(sentences)
        if copies:
            for (s, w), candidates in zip(owners, self.mlm.candidates(copies)):
                found[s][w] = candidates
        if self.vectors is not None and for_vectors:
            neighbours = self.vectors.neighbours([sentences[s][w] for s, w in for_vectors], self.config.candidates)
            for s, w in for_vectors:
                found[s][w] = neighbours[sentences[s][w]]
        return [(words, {w: c for w, c in cands.items() if c}) for words, cands in zip(sentences, found)]

    def variants(self, words: list[str], candidates: dict[int, list[str]], rng: random.Random) -> list[str]:
        """Up to N distinct variants, each differing from the original words somewhere."""
        original = " ".join(words)
        seen = {original}
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
                result.append(text)
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
    lowercase = bool(mlm and mlm.tokenizer.backend_tokenizer.normalizer.normalize_str("A") == "a")
    vectors = WordVectors.load(word_vectors, lowercase=lowercase) if word_vectors else None
    return Augmenter(config, mlm, vectors)


def _count_lines(path: str) -> int:
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))


def augment_file(input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                 mlm_dir: str | os.PathLike | None = None, word_vectors: str | os.PathLike | None = None,
                 config: AugmentConfig | None = None, data_options: DataOptions | None = None,
                 augmenter: Augmenter | None = None, show_progress: bool = True) -> dict:
    """Writes every row followed by its variants (same label, the other text of a pair unchanged)
    to ``output_path`` in the input's format. Streams the input; after a kill, the same call
    continues from the last finished chunk of rows."""
    config = config or AugmentConfig()
    options = data_options or DataOptions()
    input_path, output_path = str(input_path), Path(output_path)
    if config.field not in ("first", "second"):
        raise InputError(f"unknown field {config.field!r}", fix="use --field first or --field second")
    partial = output_path.with_name(output_path.name + ".partial")
    progress_file = output_path.with_name(output_path.name + ".progress.json")
    if output_path.exists() and not partial.exists():
        logger.info("%s already exists; delete it to augment again", output_path)
        return {"rows": None, "written": None, "complete": True}
    layout, rows = open_task_file(input_path, text_column=options.text_column, pair_column=options.pair_column,
                                  label_column=options.label_column, require_labels=False)
    if config.field == "second" and not layout.pair_column and not (layout.format == "fork" and layout.width == 3):
        raise InputError("--field second needs sentence pairs", path=input_path,
                         fix="drop --field second, or give a file of pairs")
    augmenter = augmenter or build_augmenter(config, mlm_dir, word_vectors)

    fingerprint = {"input": os.path.abspath(input_path), "size": os.path.getsize(input_path),
                   "config": {k: v for k, v in vars(config).items() if k not in OUTPUT_NEUTRAL_SETTINGS}}
    state = {"rows": 0, "bytes": 0, "written": 0, "skipped": []}
    if partial.exists() and progress_file.exists():
        saved = json.loads(progress_file.read_text())
        if saved["fingerprint"] == fingerprint:
            state = saved["state"]
            logger.info("resuming %s after %d rows", output_path, state["rows"])
    output_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(partial, "r+b" if state["bytes"] else "wb")
    handle.truncate(state["bytes"])
    handle.seek(state["bytes"])
    if not state["bytes"] and header_line(layout):
        handle.write(header_line(layout).encode("utf-8"))

    total = _count_lines(input_path)
    bar = tqdm(total=total, initial=state["rows"], desc="augmenting", unit="sent", disable=not show_progress,
               dynamic_ncols=True)
    started = time.perf_counter()
    done_before = state["rows"]
    if options.max_examples:
        rows = itertools.islice(rows, options.max_examples)
    data_rows = itertools.islice(rows, done_before, None)
    chunk = []

    def flush(chunk):
        good = [row for row in chunk if row.example is not None]
        for row in chunk:
            if row.problem:
                if not options.skip_bad_lines:
                    handle.close()
                    partial.unlink(missing_ok=True)
                    progress_file.unlink(missing_ok=True)
                    report_bad_lines(input_path, [(row.line, row.problem)], False)
                state["skipped"].append(row.line)
        second = config.field == "second"
        first_copied = len(good)
        if config.augment_first is not None:
            first_copied = max(0, min(len(good), config.augment_first - state["rows"]))
        to_vary, to_copy = good[:first_copied], good[first_copied:]
        texts = [row.example.text_b if second else row.example.text_a for row in to_vary]
        lines = []
        for row, (words, candidates) in zip(to_vary, augmenter.word_candidates(texts)):
            lines.append(format_row(layout, row))
            rng = random.Random(f"{config.seed}:{row.line}")
            for variant in augmenter.variants(words, candidates, rng):
                lines.append(format_row(layout, row, text_b=variant) if second else
                             format_row(layout, row, text_a=variant))
                state["written"] += 1
        lines.extend(format_row(layout, row) for row in to_copy)
        handle.write("".join(lines).encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
        state["rows"] += len(chunk)
        state["bytes"] = handle.tell()
        temporary = progress_file.with_name(progress_file.name + ".tmp")
        temporary.write_text(json.dumps({"fingerprint": fingerprint, "state": state}))
        os.replace(temporary, progress_file)
        bar.update(len(chunk))

    for row in data_rows:
        chunk.append(row)
        if len(chunk) == config.chunk_rows:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    bar.close()
    handle.close()
    os.replace(partial, output_path)
    progress_file.unlink(missing_ok=True)
    if state["skipped"]:
        logger.warning("%s: skipped %d malformed line(s) (first: %s)", input_path, len(state["skipped"]),
                       ", ".join(map(str, state["skipped"][:5])))
    seconds = time.perf_counter() - started
    return {"rows": state["rows"], "written": state["written"], "seconds": seconds,
            "rows_per_s": (state["rows"] - done_before) / seconds if seconds else None, "complete": True}
