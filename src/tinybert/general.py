"""General distillation: a pretrained encoder + plain text → a general student.

The corpus is tokenised once, streaming, into an on-disk cache (token ids and example offsets);
training reads examples from it with positioned reads, so memory does not grow with the corpus
and a resumed run can skip straight to the batch it stopped at. Lines are packed greedily into
examples of up to max-length tokens; a line longer than that is cut into windows; a blank line
ends a document, and examples never span documents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import AutoModel, DataCollatorWithPadding

from .distill import PROJECTIONS_FILE, Distiller, LossWeights
from .errors import InputError
from .models import (build_student, check_model_dir, load_tokenizer, parse_layer_map, save_model_dir,
                     uniform_layer_map)
from .training import STATE_FILE, TrainingConfig, is_complete, make_accelerator, run_training

logger = logging.getLogger(__name__)

CACHE_DIR = "corpus_cache"
# Lines go to the tokenizer in batches bounded by count and by characters, so the memory a
# batch takes does not depend on how long the corpus's lines happen to be.
_LINES_PER_BATCH = 2000
_CHARACTERS_PER_BATCH = 200_000


@dataclass
class GeneralConfig:
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        epochs=3, batch_size=256, learning_rate=1e-4, schedule="linear", warmup_ratio=0.1,
        checkpoint_every=500))
    max_length: int = 128
    max_steps: int | None = None  # stop after this many optimizer steps (a time budget)
    weights: LossWeights = field(default_factory=lambda: LossWeights(prediction=0.0))
    shared_projection: bool = False
    layers: int | None = None
    layer_map: str | None = None


class CorpusCache(Dataset):
    """Packed examples (with [CLS] … [SEP]) read from the cache files on demand."""

    def __init__(self, directory: Path):
        meta = json.loads((directory / "meta.json").read_text())
        self.cls_id, self.sep_id = meta["cls_id"], meta["sep_id"]
        self.count = meta["examples"]
        self.tokens_path = directory / "tokens.bin"
        self.offsets_path = directory / "offsets.bin"
        self.token_dtype = np.dtype(meta["dtype"])
        self._files = None

    def __len__(self) -> int:
        return self.count

    def _handles(self):
        if self._files is None:  # opened lazily, once per process (DataLoader workers fork)
            self._files = (open(self.tokens_path, "rb"), open(self.offsets_path, "rb"))
        return self._files

    def __getitem__(self, index: int) -> dict:
        tokens, offsets = self._handles()
        start, end = np.frombuffer(os.pread(offsets.fileno(), 16, 16 * index), dtype="<u8")
        size = self.token_dtype.itemsize
        ids = np.frombuffer(os.pread(tokens.fileno(), int(end - start) * size, int(start) * size),
                            dtype=self.token_dtype)
        return {"input_ids": [self.cls_id, *ids.tolist(), self.sep_id]}


def _fingerprint(files: list[Path], tokenizer, max_length: int) -> str:
    parts = [f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    parts += [str(len(tokenizer)), str(sorted(tokenizer.get_vocab().items())[:50]), str(max_length)]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def build_corpus_cache(files: list[str | os.PathLike], tokenizer, max_length: int, directory: Path,
                       show_progress: bool = True) -> CorpusCache:
    """Tokenises the corpus files once (streaming) into ``directory``; reused when unchanged."""
    paths = [Path(f) for f in files]
    for path in paths:
        if not path.is_file():
            raise InputError("corpus file not found", path=path, fix="check the path")
    fingerprint = _fingerprint(paths, tokenizer, max_length)
    meta_path = directory / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("fingerprint") == fingerprint:
        return CorpusCache(directory)
    staging = directory.with_name(directory.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    dtype = np.dtype("<u2") if len(tokenizer) < 2**16 else np.dtype("<u4")
    window = max_length - 2
    examples = 0
    position = 0
    total_bytes = sum(p.stat().st_size for p in paths)
    bar = tqdm(total=total_bytes, desc="tokenising corpus", unit="B", unit_scale=True, disable=not show_progress)
    with open(staging / "tokens.bin", "wb") as tokens_out, open(staging / "offsets.bin", "wb") as offsets_out:
        pending: list[int] = []

        def emit(ids: list[int]) -> None:
            nonlocal examples, position
            tokens_out.write(np.asarray(ids, dtype=dtype).tobytes())
            offsets_out.write(np.asarray([position, position + len(ids)], dtype="<u8").tobytes())
            position += len(ids)
            examples += 1

        def add_line(ids: list[int]) -> None:
            nonlocal pending
            if len(pending) + len(ids) > window and pending:
                emit(pending)
                pending = []
            while len(ids) > window:
                emit(ids[:window])
                ids = ids[window:]
            pending = pending + ids

        for path in paths:
            for lines in _line_batches(path, bar):
                # long lines are windowed below: the tokenizer's length warning does not apply
                encoded = tokenizer([line or "" for line in lines], add_special_tokens=False,
                                    verbose=False)["input_ids"]
                for line, ids in zip(lines, encoded):
                    if line is None:  # a blank line: the document ends
                        if pending:
                            emit(pending)
                            pending = []
                    elif ids:
                        add_line(ids)
            if pending:
                emit(pending)
                pending = []
    bar.close()
    if not examples:
        raise InputError("the corpus has no text", path=paths[0], fix="give plain-text files, one sentence or "
                                                                      "paragraph per line")
    (staging / "meta.json").write_text(json.dumps({
        "fingerprint": fingerprint, "examples": examples, "tokens": position, "dtype": dtype.str,
        "cls_id": tokenizer.cls_token_id, "sep_id": tokenizer.sep_token_id, "max_length": max_length,
        "files": [str(p) for p in paths]}))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(staging, directory)
    logger.info("corpus: %d examples, %d tokens", examples, position)
    return CorpusCache(directory)


def _line_batches(path: Path, bar):
    """Batches of stripped lines, None for a blank line; never the whole file in memory."""
    batch, characters = [], 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            bar.update(len(raw))
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                raise InputError(f"not valid UTF-8 (byte {raw[error.start]:#04x})", path=path, line=number,
                                 fix="convert the corpus to UTF-8") from None
            batch.append(text or None)
            characters += len(text)
            if len(batch) == _LINES_PER_BATCH or characters >= _CHARACTERS_PER_BATCH:
                yield batch
                batch, characters = [], 0
    if batch:
        yield batch


def general_distill(teacher_dir: str | os.PathLike, corpus: list[str | os.PathLike], output_dir: str | os.PathLike,
                    student: str = "tinybert-4l-312", config: GeneralConfig | None = None,
                    show_progress: bool = True) -> dict:
    """Attention + hidden (+ embedding) distillation of a pretrained encoder into a general student
    written to ``output_dir`` (a bare encoder, projections beside it). Re-running the same call
    resumes from the last checkpoint."""
    config = config or GeneralConfig()
    output_dir = Path(output_dir)
    if is_complete(output_dir):
        logger.info("%s is already complete; delete it to train again", output_dir)
        return json.loads((output_dir / STATE_FILE).read_text())
    training = config.training
    accelerator = make_accelerator(training)
    set_seed(training.seed)
    tokenizer = load_tokenizer(teacher_dir)
    with accelerator.main_process_first():
        teacher = AutoModel.from_pretrained(check_model_dir(teacher_dir, "--teacher")).eval()
        dataset = build_corpus_cache(corpus, tokenizer, config.max_length, output_dir / CACHE_DIR,
                                     show_progress=show_progress and accelerator.is_main_process)
    student_model = build_student(student, teacher, None, layers=config.layers)
    layers_s, layers_t = student_model.config.num_hidden_layers, teacher.config.num_hidden_layers
    layer_map = (parse_layer_map(config.layer_map, layers_s, layers_t) if config.layer_map
                 else uniform_layer_map(layers_s, layers_t))
    distiller = Distiller(student_model, teacher.to(accelerator.device), "intermediate", layer_map,
                          config.weights, 1.0, False, config.shared_projection)
    loader = DataLoader(dataset, batch_size=training.batch_size, shuffle=False,
                        collate_fn=DataCollatorWithPadding(tokenizer))
    if config.max_steps:
        steps_per_epoch = len(loader) / training.gradient_accumulation_steps / accelerator.num_processes
        training = TrainingConfig(**{**asdict(training), "epochs": min(training.epochs, config.max_steps / steps_per_epoch)})

    def save(unwrapped, _metrics):
        unwrapped.student.set_attn_implementation("sdpa")
        save_model_dir(unwrapped.student, tokenizer, output_dir)
        save_file(unwrapped.projection_state(), str(output_dir / PROJECTIONS_FILE))

    logger.info("general distillation %s → %d-layer student on %d examples, layer map %s", teacher_dir,
                layers_s, len(dataset), layer_map)
    return run_training(output_dir=output_dir, config=training, module=distiller, train_loader=loader,
                        compute_losses=lambda module, batch: module(batch), on_improved=save,
                        accelerator=accelerator, description="general distillation")
