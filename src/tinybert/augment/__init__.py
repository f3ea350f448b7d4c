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

Modules: ``words`` (splitting, eligibility), ``masked_lm`` and ``vectors`` (the two sources of
candidates), ``algorithm`` (Algorithm 1), ``files`` (the resumable file driver).
"""

from .algorithm import OUTPUT_NEUTRAL_SETTINGS, AugmentConfig, Augmenter, build_augmenter
from .files import AugmentArguments, augment_file
from .masked_lm import MaskedLMCandidates
from .vectors import WordVectors
from .words import STOP_WORDS, WordSplitter, is_cjk, is_eligible

__all__ = ["OUTPUT_NEUTRAL_SETTINGS", "STOP_WORDS", "AugmentArguments", "AugmentConfig", "Augmenter",
           "MaskedLMCandidates", "WordSplitter", "WordVectors", "augment_file", "build_augmenter", "is_cjk",
           "is_eligible"]
