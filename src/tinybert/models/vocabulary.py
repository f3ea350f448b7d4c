"""Vocabulary pruning (TextPruner's idea): a student keeps the tokens its task uses.

In small teachers the embedding table is most of the model (MiniLM: 11.7 M of 22.7 M parameters)
while a task's data uses a fraction of the vocabulary. The student keeps the special tokens, every
token of the training data (original, augmented and unlabelled rows, as the teacher's tokenizer
cut them), tokens a user names, and a fallback set with which no text tokenizes into more unknown
tokens than with the teacher's tokenizer:

- WordPiece: every single character and its ``##`` form;
- byte-level BPE: the byte alphabet (any text is bytes), and every merge that builds a kept token;
- SentencePiece (Unigram): every single-character piece, and the byte pieces where the model falls
  back to bytes.

Characters the vocabulary holds only inside longer tokens keep those tokens. The student's tokenizer
is the teacher's, rewritten in its own format (the fast tokenizer's JSON, from which transformers
loads every family), so the student directory needs no code of ours. During training the data stays
tokenised by the teacher (both models see the same tokens): the student reads ``token_map`` of its ids.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

from ..errors import InputError
from ..settings import flag_of

SUPPORTED = ("WordPiece", "BPE", "Unigram")


def _described(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError(f"{flag_of('prune_vocab')} needs a fast tokenizer (tokenizer.json); this one is "
                         f"{type(tokenizer).__name__}", fix=f"leave out {flag_of('prune_vocab')}")
    return json.loads(backend.to_str())


def check_prunable(tokenizer) -> None:
    """Refuses a tokenizer whose kind vocabulary pruning cannot rewrite, before any data is read."""
    kind = _described(tokenizer)["model"]["type"]
    if kind not in SUPPORTED:
        raise InputError(f"{flag_of('prune_vocab')} supports WordPiece, BPE and SentencePiece (Unigram) tokenizers; "
                         f"this one is {kind}", fix=f"leave out {flag_of('prune_vocab')}")


def _pieces(model: dict) -> list[str]:
    """The model's vocabulary in id order."""
    if model["type"] == "Unigram":
        return [piece for piece, _ in model["vocab"]]
    return [token for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]


def fallback_tokens(tokenizer) -> set[int]:
    """The special tokens and the tokens with which any text the teacher tokenizes without an
    unknown token is tokenized without one (see the module's docstring)."""
    described = _described(tokenizer)
    model = described["model"]
    pieces = _pieces(model)
    kept = {entry["id"] for entry in described["added_tokens"]} | set(tokenizer.all_special_ids)
    if model["type"] == "WordPiece":
        prefix = model["continuing_subword_prefix"]
        known = set(pieces)
        for index, token in enumerate(pieces):
            inner = token.startswith(prefix) and len(token) > len(prefix)
            body = token[len(prefix):] if inner else token
            forms = [character if position == 0 and not inner else prefix + character
                     for position, character in enumerate(body)]
            if len(body) == 1 or any(form not in known for form in forms):
                kept.add(index)
    elif model["type"] == "BPE":
        byte_level = "ByteLevel" in json.dumps(described.get("pre_tokenizer"))
        alphabet = set(pre_tokenizers.ByteLevel.alphabet()) if byte_level else None
        prefix, suffix = model.get("continuing_subword_prefix") or "", model.get("end_of_word_suffix") or ""
        for index, token in enumerate(pieces):
            body = token.removeprefix(prefix).removesuffix(suffix) if len(token) > 1 else token
            if (token in alphabet) if alphabet is not None else len(body) == 1:
                kept.add(index)
    else:  # Unigram
        singles = {piece for piece in pieces if len(piece) == 1}
        for index, piece in enumerate(pieces):
            if len(piece) == 1 or any(character not in singles for character in piece):
                kept.add(index)
        if model.get("byte_fallback"):
            kept |= {index for index, piece in enumerate(pieces) if len(piece) == 6 and piece.startswith("<0x")}
    return kept


def kept_tokens(rows, tokenizer, config=None, keep_file=None) -> set[int]:
    """What a pruned vocabulary keeps: the tokens the token caches ``rows`` use, the fallback set,
    the ids a model ``config`` names (its pad, bos, eos... tokens) and those ``keep_file`` lists."""
    kept = distinct_tokens([rows]) | fallback_tokens(tokenizer)
    if config is not None:
        kept |= {value for name, value in config.to_dict().items()
                 if name.endswith("_token_id") and isinstance(value, int)}
    if keep_file:
        kept |= listed_tokens(keep_file, tokenizer)
    return kept


def distinct_tokens(datasets) -> set[int]:
    """Every token id the token caches ``datasets`` use."""
    return {int(index) for dataset in datasets for index in np.flatnonzero(dataset.token_counts())}


def listed_tokens(path: str | os.PathLike, tokenizer) -> set[int]:
    """The tokens a ``--keep-tokens`` file names: each line a vocabulary entry, or text whose tokens
    are all kept."""
    vocabulary = tokenizer.get_vocab()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError("file of tokens to keep not found", path=path, fix="check the --keep-tokens path") from None
    except UnicodeDecodeError as error:
        line = error.object[:error.start].count(b"\n") + 1
        raise InputError("not valid UTF-8", path=path, line=line, fix="save the file as UTF-8 text") from None
    kept: set[int] = set()
    for line in (text.strip() for text in lines):
        if line in vocabulary:
            kept.add(vocabulary[line])
        elif line:
            kept.update(tokenizer(line, add_special_tokens=False)["input_ids"])
    return kept


def _with_merges_that_build(kept: set[int], model: dict) -> tuple[set[int], list]:
    """A BPE vocabulary closed under the merges that build its tokens (a kept "hello" needs the
    pieces it is merged from, or it could never form), and the merges among kept pieces, in order."""
    ids = model["vocab"]
    merges = [merge.split(" ", 1) if isinstance(merge, str) else merge for merge in model["merges"]]
    built_from = {}
    for left, right in merges:
        built_from.setdefault(left + right, (left, right))
    pieces = {token for token, index in ids.items() if index in kept}
    waiting = list(pieces)
    while waiting:
        for part in built_from.get(waiting.pop(), ()):
            if part not in pieces and part in ids:
                pieces.add(part)
                waiting.append(part)
    merges = [[left, right] for left, right in merges if left in pieces and right in pieces and left + right in pieces]
    return {ids[token] for token in pieces}, merges


def pruned_tokenizer(tokenizer, kept: set[int]):
    """(the teacher's ``tokenizer`` keeping only the ``kept`` ids, renumbered in their order; the
    kept teacher ids in the student's id order). Tokens added beyond the model's vocabulary
    (DeBERTa-v3's [MASK]) are all kept, after the kept pieces, as they came after them."""
    described = _described(tokenizer)
    model = described["model"]
    pieces = _pieces(model)
    added = {entry["id"] for entry in described["added_tokens"]}
    kept = {index for index in kept | added if index < len(pieces)}
    if model["type"] == "BPE":
        kept, model["merges"] = _with_merges_that_build(kept, model)
    order = sorted(kept) + sorted(index for index in added if index >= len(pieces))
    new_id = {old: new for new, old in enumerate(order)}
    in_model = [old for old in order if old < len(pieces)]
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in in_model]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        model["vocab"] = {pieces[old]: new_id[old] for old in in_model}
    for entry in described["added_tokens"]:
        entry["id"] = new_id[entry["id"]]
    _renumber_processor(described.get("post_processor"), new_id)
    if described.get("padding"):
        described["padding"]["pad_id"] = new_id[described["padding"]["pad_id"]]
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        (Path(directory) / "tokenizer.json").write_text(json.dumps(described, ensure_ascii=False), encoding="utf-8")
        settings = Path(directory) / "tokenizer_config.json"
        values = json.loads(settings.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in values:
            values["added_tokens_decoder"] = {str(new_id[int(old)]): entry
                                              for old, entry in values["added_tokens_decoder"].items()}
            settings.write_text(json.dumps(values), encoding="utf-8")
        return AutoTokenizer.from_pretrained(directory), order


def _renumber_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    """The special tokens' ids that a post-processor inserts (BERT's [CLS] and [SEP], RoBERTa's <s>)."""
    if not processor:
        return
    for inner in processor.get("processors") or ():
        _renumber_processor(inner, new_id)
    for special in (processor.get("special_tokens") or {}).values():
        special["ids"] = [new_id[index] for index in special["ids"]]
    for name in ("sep", "cls"):
        if isinstance(processor.get(name), list):
            processor[name][1] = new_id[processor[name][1]]


def token_map(teacher_tokenizer, student_tokenizer) -> torch.Tensor | None:
    """The student's id of each teacher id (its unknown token's where it has none), or None when
    both have the same vocabulary."""
    teacher, student = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher == student:
        return None
    unknown = student_tokenizer.unk_token_id if student_tokenizer.unk_token_id is not None else 0
    mapping = np.full(max(teacher.values()) + 1, unknown, dtype=np.int64)
    for token, index in student.items():
        if token in teacher:
            mapping[teacher[token]] = index
    return torch.from_numpy(mapping)


def check_subset(teacher_tokenizer, student_tokenizer, where) -> None:
    """A student's vocabulary must be the teacher's or part of it (the same tokens, renumbered)."""
    extra = set(student_tokenizer.get_vocab()) - set(teacher_tokenizer.get_vocab())
    if extra:
        raise InputError(f"the student's tokenizer has {len(extra):,} tokens the teacher's lacks (e.g. "
                         f"{sorted(extra)[:3]})", path=where, fix="distil into a student built on the teacher's tokenizer")


def retokenized_share(as_teacher, as_student, mapping: torch.Tensor | None) -> float:
    """The share of texts (rows of two token caches of the same file: the teacher's tokens, the
    student's, row for row, as a text per row is: not QA's windows) that the student's tokenizer
    cuts otherwise than the teacher's."""
    if mapping is None or not len(as_teacher):
        return 0.0
    table = mapping.numpy()
    differ = sum(not np.array_equal(table[as_teacher[index]["input_ids"]], as_student[index]["input_ids"])
                 for index in range(len(as_teacher)))
    return differ / len(as_teacher)
