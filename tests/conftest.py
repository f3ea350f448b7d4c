import contextlib
import itertools
import logging
import os
import subprocess
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# caches shared between runs (token caches of evaluate/export, converted checkpoints) never land in ~/.cache
os.environ.setdefault("TINYBERT_CACHE", tempfile.mkdtemp(prefix="tinybert-tests-"))

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertModel  # noqa: E402

from tinybert.cli import main  # noqa: E402
from tinybert.resources import demo_teacher_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TINYBERT_SHARED", REPO.parent / "shared"))
DATASETS = SHARED / "datasets"


@contextlib.contextmanager
def killed_after(module, batches: int):
    """Within it, ``module.run_training`` stops with KeyboardInterrupt (as a kill would) when it
    reaches batch ``batches + 1``; the block must be stopped so."""
    real = module.run_training

    def run_training(**options):
        seen, compute = itertools.count(1), options["compute_losses"]

        def compute_or_die(trained, batch):
            if next(seen) > batches:
                raise KeyboardInterrupt
            return compute(trained, batch)
        return real(**{**options, "compute_losses": compute_or_die})
    module.run_training = run_training
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        module.run_training = real


def shared_dataset(relative: str) -> Path:
    path = DATASETS / relative
    if not path.exists():
        pytest.skip(f"shared dataset {path} is not present")
    return path


def tiny_bert_config(**overrides) -> BertConfig:
    settings = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=128)
    settings.update(overrides)
    return BertConfig(**settings)


@pytest.fixture(autouse=True)
def quick_speed_figures(monkeypatch):
    """Speed figures from a few milliseconds of calls: the tests check their form, not the speed."""
    monkeypatch.setattr("tinybert.evaluation.measure.LATENCY_SECONDS", 0.01)


@pytest.fixture(scope="session")
def real_tokenizer():
    return AutoTokenizer.from_pretrained(demo_teacher_dir())


@pytest.fixture
def tiny_model_dir(tmp_path, real_tokenizer):
    """A bare 2-layer, 32-wide BERT encoder (like a pretrained one) with the real uncased tokenizer."""
    torch.manual_seed(0)
    path = tmp_path / "tiny"
    BertModel(tiny_bert_config()).save_pretrained(path)
    real_tokenizer.save_pretrained(path)
    return path


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def tinybert_cli(capsys, caplog):
    """Runs ``tinybert ARGS`` in this process (a subprocess pays ~6 s of imports each time):
    its exit code, standard output, and standard error with the log lines in it. Tests that must
    see a real process (an uncaught error's traceback, a kill) start one themselves."""
    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tinybert"):
            try:
                code = main([str(arg) for arg in args])
            except SystemExit as exit:  # argparse's own refusals
                code = exit.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err + caplog.text)
    return run
