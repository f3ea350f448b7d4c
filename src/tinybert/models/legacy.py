"""Checkpoints in the layouts of the TinyBERT reference code and its simplified fork.

Huawei's General_TinyBERT releases and the fork's outputs have a ``config.json`` (or
``bert_config.json``) without ``model_type``/``architectures``, weights in
``pytorch_model.bin`` (or ``step_N_`` / ``epoch_N_`` / ``N_pytorch_model.bin``) with ``bert.*``
keys, sometimes a ``fit_dense`` projection, and only a ``vocab.txt``. ``convert`` turns such a
directory into a plain save_pretrained one; every loader of ours goes through
``resolve_model_dir``, which does that once into a cache, so those directories work as they are.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, BertForSequenceClassification, BertTokenizer

from ..artifacts import build_directory, cache_root, digest, digest_files, staged_directory
from .files import PROJECTIONS_FILE
from ..errors import InputError
from ..settings import option
from .tokenizer import load_tokenizer_files

logger = logging.getLogger(__name__)

_WEIGHT_NAME = re.compile(r"^(?:(?:step|epoch)_)?(\d+)_pytorch_model\.bin$")
_CONFIG_NAMES = ("config.json", "bert_config.json")
_STANDARD_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
CONVERTED_STAMP = "tinybert_converted_from.json"


def legacy_weights(path: Path) -> Path | None:
    """The weights file of a reference-code directory: pytorch_model.bin, else the highest N of
    the fork's step_N_ / epoch_N_ / N_pytorch_model.bin."""
    if (path / "pytorch_model.bin").is_file():
        return path / "pytorch_model.bin"
    numbered = [(int(match.group(1)), item) for item in path.iterdir() if (match := _WEIGHT_NAME.match(item.name))]
    return max(numbered)[1] if numbered else None


def is_legacy_dir(path: Path) -> bool:
    if any((path / name).is_file() for name in _STANDARD_WEIGHTS):
        return False
    config_file = next((path / name for name in _CONFIG_NAMES if (path / name).is_file()), None)
    if config_file is None:
        return False
    if "model_type" not in read_config_json(config_file):
        return True
    # a complete config: only the fork's numbered weight files make it ours to convert
    return not (path / "pytorch_model.bin").is_file() and legacy_weights(path) is not None


def read_config_json(path: Path) -> dict:
    """A config file's JSON object; anything else is one message naming the file (and the line)."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON ({error.msg})", path=path, line=error.lineno,
                         fix="repair the config file") from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path=path, fix="repair the config file") from None
    if not isinstance(values, dict):
        raise InputError(f"a config is a JSON object, not {type(values).__name__}", path=path,
                         fix="repair the config file")
    return values


def load_legacy_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: ``weights_only=True``; a file that needs full unpickling is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as error:
        raise InputError(
            "this file needs full unpickling (it stores Python objects, not only tensors), which can run "
            f"arbitrary code, so it is refused ({str(error).splitlines()[0][:120]})", path=path,
            fix="re-save it as a plain state_dict (torch.save(model.state_dict(), ...)) or as safetensors "
                "with the code that wrote it") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError("not a state_dict of tensors", path=path,
                         fix="give a file written by torch.save(model.state_dict(), ...)")
    return state


def _rename(key: str) -> str:
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    return key


@dataclass
class ConvertArguments:
    input: str | None = option(None, "directory in the TinyBERT reference code's layout", required=True)
    output: str | None = option(None, "output directory (safetensors, config, tokenizer)", required=True)
    tokenizer_from: str | None = option(None, "take the tokenizer from this model directory when the input has "
                                              "no vocab.txt (e.g. the teacher)")

    def run(self) -> Path:
        return convert(self.input, self.output, tokenizer_from=self.tokenizer_from)


# what to do about an output converting must not replace
_NEW_OUTPUT = "name a new directory (or an earlier conversion's), e.g. --output converted"


def convert(input_dir: str | os.PathLike, output_dir: str | os.PathLike,
            tokenizer_from: str | os.PathLike | None = None) -> Path:
    """Writes a plain save_pretrained directory (safetensors, complete config, tokenizer files;
    a ``fit_dense`` projection beside it) from a reference-code directory."""
    output = Path(output_dir)
    _check_output(output)
    with staged_directory(output.resolve()) as staging:
        _convert_into(Path(input_dir), staging, tokenizer_from)
        # replacing the output deletes what it holds: only what this conversion writes anew
        foreign = sorted(item.name for item in output.iterdir() if not (staging / item.name).exists()) \
            if output.is_dir() else []
        if foreign:
            raise InputError(f"the output directory holds files a conversion does not write ({', '.join(foreign[:3])}"
                             f"{', …' if len(foreign) > 3 else ''}), which converting would delete", path=output,
                             fix=_NEW_OUTPUT)
    return output


def _check_output(output: Path) -> None:
    """The output is replaced whole: never the directory the user is in (or one above it), or a file."""
    if output.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise InputError("converting would replace the directory you are in", path=output, fix=_NEW_OUTPUT)
    if output.exists() and not output.is_dir():
        raise InputError("the output is a file, not a directory", path=output, fix=_NEW_OUTPUT)


def _convert_into(source: Path, staging: Path, tokenizer_from) -> None:
    if not source.is_dir():
        raise InputError("directory not found", path=source, fix="check the path")
    config_file = next((source / name for name in _CONFIG_NAMES if (source / name).is_file()), None)
    if config_file is None:
        raise InputError("no config.json or bert_config.json", path=source,
                         fix="point at a directory written by the TinyBERT code or by save_pretrained")
    weights_file = legacy_weights(source)
    raw_config = read_config_json(config_file)
    known = set(BertConfig().to_dict())
    config = BertConfig(**{k: v for k, v in raw_config.items() if k in known and k not in ("model_type", "architectures")})
    state = {_rename(k): v for k, v in load_legacy_state_dict(weights_file).items()} if weights_file else {}

    classifier = "classifier.weight" in state
    if classifier:
        labels = state["classifier.weight"].shape[0]
        config.num_labels = labels
        config.id2label = {i: str(i) for i in range(labels)}
        config.label2id = {str(i): i for i in range(labels)}
        if labels == 1:
            config.problem_type = "regression"
        model = BertForSequenceClassification(config)
        weights = {k: v for k, v in state.items() if k.startswith(("bert.", "classifier."))}
    else:
        model = BertModel(config)
        weights = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
    if weights_file:
        result = model.load_state_dict(weights, strict=False)
        missing = [k for k in result.missing_keys if "pooler" not in k and "position_ids" not in k]
        if missing:
            raise InputError(f"{len(missing)} weights missing from {weights_file.name} (e.g. {missing[0]})",
                             path=weights_file, fix="check that this is a BERT-family checkpoint")
    else:
        logger.info("%s has no weights (a configuration only): the model is newly initialised", source)

    model.save_pretrained(staging)
    _save_tokenizer(source, staging, tokenizer_from)
    if "fit_dense.weight" in state:
        save_file({"hidden.weight": state["fit_dense.weight"].contiguous(),
                   "hidden.bias": state["fit_dense.bias"].contiguous()}, str(staging / PROJECTIONS_FILE))


def _save_tokenizer(source: Path, output: Path, tokenizer_from) -> None:
    if (source / "vocab.txt").is_file():
        BertTokenizer.from_pretrained(source).save_pretrained(output)
    elif tokenizer_from is not None:
        logger.warning("%s has no vocab.txt: taking the tokenizer from %s", source, tokenizer_from)
        load_tokenizer_files(resolve_model_dir(tokenizer_from), shown=tokenizer_from).save_pretrained(output)
    else:
        logger.info("%s has no vocab.txt: it will use its teacher's tokenizer", source)


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """``path`` itself, or for a reference-code directory its converted copy (made once per
    content of the directory's files, kept in the cache)."""
    path = Path(path)
    if not path.is_dir() or not is_legacy_dir(path):
        return path
    target = cache_root() / "converted" / digest(str(path.resolve()))[:16]
    source = {"files": digest_files((item for item in path.iterdir() if item.is_file()), root=path)}

    def build(staging: Path) -> dict:
        logger.warning("%s is in the TinyBERT reference code's layout: converting it once into %s "
                       "(`tinybert convert` writes such a copy where you choose)", path, target)
        _convert_into(path, staging, None)
        return {"source_dir": str(path)}
    build_directory(target, CONVERTED_STAMP, source, build)
    return target
