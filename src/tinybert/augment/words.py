"""Words: how a text is split into words, and which words the algorithm may replace."""

from __future__ import annotations

import re
import unicodedata

from tokenizers import normalizers, pre_tokenizers

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


def is_candidate_token(word: str) -> bool:
    """A word (of a vocabulary entry) that can stand in for another."""
    return not _BRACKETED.match(word) and any(char.isalpha() for char in word) and " " not in word


class WordSplitter:
    """BERT's basic tokenisation: a BERT-style masked LM's own normaliser and pre-tokeniser
    (lower-casing, accents, CJK characters split apart), otherwise BERT's defaults without
    lower-casing (a byte-level BPE pre-tokeniser would keep its space markers in the words)."""

    def __init__(self, tokenizer=None):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.normalizer is not None and \
                isinstance(backend.pre_tokenizer, pre_tokenizers.BertPreTokenizer):
            self.normalizer, self.pre_tokenizer = backend.normalizer, backend.pre_tokenizer
        else:
            self.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
            self.pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    @property
    def lowercases(self) -> bool:
        return self.normalizer.normalize_str("A") == "a"

    def split(self, text: str) -> list[str]:
        return [word for word, _ in self.pre_tokenizer.pre_tokenize_str(self.normalizer.normalize_str(text))]
