"""Vocabulary pruning: a student keeps its task's tokens, and no text gets more unknown tokens."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from conftest import write
from tinybert.errors import InputError
from tinybert.models.vocabulary import (check_prunable, fallback_tokens, listed_tokens, pruned_tokenizer,
                                        token_map)

CORPUS = [f"the {adjective} {noun} {verb} a {adjective2} {noun2} ."
          for adjective in ("quick", "lazy", "bright", "dull", "gorgeous")
          for noun in ("fox", "dog", "film", "story", "actor")
          for verb, adjective2, noun2 in (("jumps over", "sleepy", "cat"), ("loves", "witty", "script"),
                                          ("ruins", "tired", "plot"))]
TRAINING = ["the quick fox loves a witty script .", "a gorgeous film"]
# unseen words, accents, digits, punctuation, emoji, CJK and a character no vocabulary here has
PROBES = ["zebras quarrel over xylophones", "naïve café résumé", "42 dogs!!", "😀 good", "電影很好看", "ᚠᚢᚦ runes",
          "the quick brown fox", "antidisestablishmentarianism"]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _wrapped(core: Tokenizer):
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")


def _byte_level_bpe():
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    core.post_processor = processors.RobertaProcessing(("</s>", core.token_to_id("</s>")),
                                                       ("<s>", core.token_to_id("<s>")))
    return _wrapped(core)


def _unigram():
    core = Tokenizer(models.Unigram())
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    core.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=150, special_tokens=SPECIALS,
                                                             unk_token="<unk>"))
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>",
        special_tokens=[("<s>", core.token_to_id("<s>")), ("</s>", core.token_to_id("</s>"))])
    return _wrapped(core)


@pytest.fixture(params=["wordpiece", "byte-level-bpe", "unigram"])
def teacher_tokenizer(request, real_tokenizer, tmp_path):
    made = {"wordpiece": lambda: real_tokenizer, "byte-level-bpe": _byte_level_bpe, "unigram": _unigram}[request.param]()
    made.save_pretrained(tmp_path / "teacher")  # as a teacher directory holds it
    return AutoTokenizer.from_pretrained(tmp_path / "teacher")


def _unknowns(tokenizer, text: str) -> int:
    return tokenizer(text)["input_ids"].count(tokenizer.unk_token_id)


def test_a_pruned_tokenizer_cuts_the_training_texts_as_the_teachers_and_no_text_into_more_unknowns(teacher_tokenizer,
                                                                                                  tmp_path):
    used = {index for text in TRAINING for index in teacher_tokenizer(text)["input_ids"]}
    student, kept = pruned_tokenizer(teacher_tokenizer, used | fallback_tokens(teacher_tokenizer))
    assert len(student) == len(kept) < len(teacher_tokenizer)
    student.save_pretrained(tmp_path / "student")
    student = AutoTokenizer.from_pretrained(tmp_path / "student")  # loads with no code of ours
    mapping = token_map(teacher_tokenizer, student)
    for text in TRAINING:
        assert student(text)["input_ids"] == mapping[teacher_tokenizer(text)["input_ids"]].tolist()
    for text in PROBES + CORPUS:
        assert _unknowns(student, text) <= _unknowns(teacher_tokenizer, text), text
        assert student.decode(student(text)["input_ids"], skip_special_tokens=True).replace(" ", "") == \
            teacher_tokenizer.decode(teacher_tokenizer(text)["input_ids"], skip_special_tokens=True).replace(" ", "")
    assert (student.pad_token, student.unk_token) == (teacher_tokenizer.pad_token, teacher_tokenizer.unk_token)
    assert student.convert_ids_to_tokens(student.pad_token_id) == teacher_tokenizer.pad_token


def test_a_wordpiece_character_held_only_inside_longer_tokens_keeps_them():
    """"q" has no token of its own here, only "qu" and "##qu": a student without them would find
    "qua" unknown where the teacher cuts it as "qu ##a"."""
    vocabulary = {token: index for index, token in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "##a", "##b", "qu", "##qu", "abba", "quab"])}
    core = Tokenizer(models.WordPiece(vocabulary, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    teacher = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                      sep_token="[SEP]")
    kept = fallback_tokens(teacher)
    assert {vocabulary["qu"], vocabulary["##qu"]} <= kept and vocabulary["abba"] not in kept
    student, _ = pruned_tokenizer(teacher, kept)
    for text in ("qua", "aqub", "baqu quab"):
        assert _unknowns(student, text) == _unknowns(teacher, text) == 0


def test_the_keep_tokens_file_names_entries_or_text(tmp_path, real_tokenizer):
    listed = write(tmp_path / "keep.txt", "##ization\nNew York\n\n")
    kept = listed_tokens(listed, real_tokenizer)
    assert real_tokenizer.convert_tokens_to_ids("##ization") in kept
    assert {real_tokenizer.convert_tokens_to_ids("new"), real_tokenizer.convert_tokens_to_ids("york")} <= kept
    with pytest.raises(InputError, match="not valid UTF-8"):
        listed_tokens(write(tmp_path / "bad.txt", "ok\n\xff\n", encoding="latin-1"), real_tokenizer)


def test_a_tokenizer_of_another_kind_is_refused():
    core = Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    with pytest.raises(InputError, match="supports WordPiece, BPE and SentencePiece"):
        check_prunable(PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>"))


def test_the_student_reads_the_teachers_ids_through_the_map(real_tokenizer):
    student, kept = pruned_tokenizer(real_tokenizer, fallback_tokens(real_tokenizer) | {2307})
    mapping = token_map(real_tokenizer, student)
    assert mapping[2307].item() == kept.index(2307) and student.convert_ids_to_tokens(kept.index(2307)) == "great"
    assert token_map(real_tokenizer, real_tokenizer) is None
    assert torch.equal(mapping[torch.tensor([real_tokenizer.cls_token_id])], torch.tensor([student.cls_token_id]))


def test_a_token_added_beyond_the_models_vocabulary_is_kept_after_the_kept_pieces(real_tokenizer, tmp_path):
    """DeBERTa-v3's [MASK] is such a token: id 128,000 after 128,000 SentencePiece pieces."""
    core = Tokenizer.from_str(real_tokenizer.backend_tokenizer.to_str())
    teacher = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                      sep_token="[SEP]", mask_token="[MASK]")
    teacher.add_special_tokens({"additional_special_tokens": ["<ent>"]})
    added = teacher.convert_tokens_to_ids("<ent>")
    assert added == len(real_tokenizer)  # beyond the WordPiece vocabulary
    student, kept = pruned_tokenizer(teacher, fallback_tokens(teacher))
    assert kept[-1] == added and student.convert_tokens_to_ids("<ent>") == len(kept) - 1
    student.save_pretrained(tmp_path / "student")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "student")
    assert reloaded("a <ent> b")["input_ids"] == token_map(teacher, reloaded)[teacher("a <ent> b")["input_ids"]].tolist()
