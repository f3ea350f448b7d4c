"""Loading a tokenizer from a local directory, refusing one without tokenizer files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import AutoTokenizer

from ..artifacts import digest
from ..errors import InputError

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


def load_tokenizer_files(path: Path, shown: str | os.PathLike | None = None):
    """The tokenizer saved in ``path`` (a resolved model directory); ``shown`` is the directory
    the user named, for messages."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build an empty tokenizer here, silently
        raise InputError("cannot load a tokenizer: no tokenizer files (tokenizer.json or vocab.txt)",
                         path=shown or path, fix="copy the tokenizer files of the teacher beside the model, or "
                                                 "`tinybert convert --tokenizer-from TEACHER`")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot load a tokenizer ({error})", path=path,
                         fix="put the tokenizer files (tokenizer.json or vocab.txt) beside the model") from None


def tokenizer_digest(tokenizer) -> str:
    """A fingerprint of everything that decides token ids: vocabulary, normaliser, special tokens,
    and which end of a long text truncation cuts."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        described = json.loads(backend.to_str())
        # the last call's truncation and padding are kept in it, and decide nothing about the ids
        described.pop("truncation", None)
        described.pop("padding", None)
    else:
        described = sorted(tokenizer.get_vocab().items())
    return digest([described, tokenizer.all_special_tokens, type(tokenizer).__name__, tokenizer.truncation_side])
