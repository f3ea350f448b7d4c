"""What a token classifier and a QA model predict, as spans of the text: entities with their
character offsets, and answers with their scores. Read, predicted and written a chunk at a time."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import pre_tokenizers

from ..data import LabelSpace
from ..data.batching import PadToLongest, model_inputs
from ..data.squad import AnswerFinder, read_questions, windows
from ..data.tagging import read_sentences
from ..data.tasks import detect_task
from ..data.formats import report_bad_lines, utf8_lines
from ..data.options import DataOptions

CHUNK = 256
_WORDS = pre_tokenizers.BertPreTokenizer()  # whitespace and punctuation, as CoNLL splits words


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def _texts(path, options: DataOptions):
    """The texts to tag as (text, its words with their characters): each sentence of a
    CoNLL/JSONL file (its words joined by spaces), or each non-blank line of a text file split as
    CoNLL splits words (at spaces and punctuation), so that tags fall on the words they were
    trained on."""
    if detect_task(path, options, expected="token") == "token":  # a tagger's bare words are sentences
        for sentence in read_sentences(path, labels="ignored"):
            if sentence.problem:
                report_bad_lines(str(path), [(sentence.line, sentence.problem)], options.skip_bad_lines)
                continue
            text, spans, position = " ".join(sentence.words), [], 0
            for word in sentence.words:
                spans.append((word, (position, position + len(word))))
                position += len(word) + 1
            yield text, spans
        return
    for _, line in utf8_lines(str(path)):
        if line.strip():
            yield line.strip(), _WORDS.pre_tokenize_str(line.strip())


def entities(words: list[tuple[int, int]], tags: list[str], scores: list[float], text: str) -> list[dict]:
    """IOB2 tags of words (their character spans in ``text``) as entities, decoded by seqeval as
    the metric counts them (its default, conlleval's mode): B-X starts one, I-X continues an X
    entity, and an I-X after anything else starts one too."""
    found = []
    # imported where used: seqeval brings scikit-learn and scipy, which made every command start a second later
    from seqeval.metrics.sequence_labeling import get_entities
    for kind, first, last in get_entities(tags):
        start, end = words[first][0], words[last][1]
        found.append({"type": kind, "start": start, "end": end, "text": text[start:end],
                      "score": round(float(np.mean(scores[first:last + 1])), 6)})
    return found


def tag_texts(model, tokenizer, label_space: LabelSpace, texts: list[tuple[str, list]], max_length: int,
              batch_size: int) -> list[list[dict]]:
    """The entities of each (text, words with their characters): a word's tag is its first piece's
    (words past ``max_length`` tokens get none), wherever the tokenizer pads."""
    encoded = tokenizer([[word for word, _ in words] for _, words in texts], is_split_into_words=True,
                        truncation=True, max_length=max_length, return_attention_mask=False)
    features = [{"input_ids": ids, **({"token_type_ids": encoded["token_type_ids"][i]} if "token_type_ids" in encoded
                                      else {})} for i, ids in enumerate(encoded["input_ids"])]
    collate = PadToLongest(tokenizer)
    results = []
    for start in range(0, len(texts), batch_size):
        with torch.inference_mode():
            batch = collate(features[start:start + batch_size])
            probabilities = _softmax(model(**model_inputs(batch)).logits.float().numpy())
        for row, index in enumerate(range(start, min(start + batch_size, len(texts)))):
            first_piece: dict[int, int] = {}
            for position, word in enumerate(encoded.word_ids(index)):
                if word is not None:
                    first_piece.setdefault(word, position)
            text, words = texts[index]
            # padding on the left moves the tokens of a text shorter than the batch to the right
            shift = probabilities.shape[1] - len(features[index]["input_ids"]) if collate.left else 0
            firsts = [probabilities[row, shift + position] for position in first_piece.values()]
            tags = [label_space.names[int(p.argmax())] for p in firsts]
            spans = [words[word][1] for word in first_piece]
            results.append(entities(spans, tags, [float(p.max()) for p in firsts], text))
    return results


def predict_entities(model, tokenizer, label_space, input_path, handle, as_jsonl: bool, max_length: int,
                     batch_size: int, options: DataOptions, bar) -> int:
    texts, count = itertools.islice(_texts(input_path, options), options.max_examples), 0
    if not as_jsonl:
        handle.write("text\tentities\n")
    while chunk := list(itertools.islice(texts, CHUNK)):
        for (text, _), found in zip(chunk, tag_texts(model, tokenizer, label_space, chunk, max_length, batch_size)):
            if as_jsonl:
                handle.write(json.dumps({"text": text, "entities": found}, ensure_ascii=False) + "\n")
            else:
                listed = " | ".join(f"{e['type']}:{e['start']}-{e['end']}:{e['text']}" for e in found)
                handle.write(f"{text}\t{listed}\n")
        count += len(chunk)
        bar.update(len(chunk))
    return count


def predict_answers(model, tokenizer, input_path, handle, as_jsonl: bool, max_length: int, batch_size: int,
                    options: DataOptions, bar) -> int:
    """The answer of every question of a SQuAD JSON or JSONL file (answers given there are ignored)."""
    questions = read_questions(Path(input_path), labels="ignored")
    bad = [(q.line, q.problem) for q in questions if q.problem]
    if bad:
        report_bad_lines(str(input_path), bad, options.skip_bad_lines)
    questions = [q for q in questions if not q.problem][:options.max_examples or None]
    collate = PadToLongest(tokenizer)
    if not as_jsonl:
        handle.write("id\tquestion\tanswer\tstart\tscore\n")
    for start in range(0, len(questions), CHUNK):
        chunk = questions[start:start + CHUNK]
        columns = windows(tokenizer, chunk, max_length, options.doc_stride)
        finder = AnswerFinder()
        for first in range(0, len(columns["input_ids"]), batch_size):
            rows = range(first, min(first + batch_size, len(columns["input_ids"])))
            batch = collate([{key: columns[key][i] for key in ("input_ids", "token_type_ids", "offset_start",
                                                                 "offset_end") if columns.get(key)} for i in rows])
            with torch.inference_mode():
                output = model(**model_inputs(batch))
            finder.add(output.start_logits.float().numpy(), output.end_logits.float().numpy(),
                       batch["offset_start"].numpy(), batch["offset_end"].numpy(),
                       np.asarray([columns["example"][i] for i in rows]))
        examples = [{"context": q.context} for q in chunk]
        for question, (answer, score, offset) in zip(chunk, finder.answers(examples)):
            record = {"id": question.id, "question": question.question, "answer": answer, "start": offset,
                      "score": None if score is None else round(score, 4)}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n" if as_jsonl else
                         "\t".join("" if record[k] is None else str(record[k])
                                   for k in ("id", "question", "answer", "start", "score")) + "\n")
        bar.update(len(chunk))
    return len(questions)
