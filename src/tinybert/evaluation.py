"""Task metrics, model size and CPU latency."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding

from .data import DataOptions, EncodedData, LabelSpace, encode, eval_loader
from .errors import InputError
from .models import count_parameters, label_space_of, load_classifier, load_tokenizer

LATENCY_EXAMPLES = 32
LATENCY_RUNS = 5


def default_metric(label_space: LabelSpace) -> str:
    return "pearson" if label_space.is_regression else "accuracy"


def compute_metrics(logits: np.ndarray, labels: np.ndarray, label_space: LabelSpace) -> dict:
    """accuracy, MCC (+ F1 of label index 1 when binary) for classes; Pearson, Spearman for scores."""
    if label_space.is_regression:
        predictions = logits.reshape(-1)
        constant = np.ptp(predictions) == 0 or np.ptp(labels) == 0
        return {
            "pearson": 0.0 if constant else float(pearsonr(predictions, labels)[0]),
            "spearman": 0.0 if constant else float(spearmanr(predictions, labels)[0]),
            "mse": float(np.mean((predictions - labels) ** 2)),
        }
    predictions = logits.argmax(axis=-1)
    metrics = {"accuracy": float(accuracy_score(labels, predictions)),
               "mcc": float(matthews_corrcoef(labels, predictions))}
    if label_space.num_labels == 2:
        metrics["f1"] = float(f1_score(labels, predictions, pos_label=1, zero_division=0))
    return metrics


@torch.inference_mode()
def predict_logits(model, encoded: EncodedData, tokenizer, batch_size: int = 64,
                   device: torch.device | str = "cpu", show_progress: bool = True) -> np.ndarray:
    """Logits for every example, in file order (batches run sorted by length)."""
    was_training = model.training
    model.eval()
    loader, order = eval_loader(encoded, tokenizer, batch_size)
    outputs = []
    for batch in tqdm(loader, desc="evaluating", unit="batch", disable=not show_progress, leave=False):
        batch.pop("labels", None)
        batch = {key: value.to(device) for key, value in batch.items()}
        outputs.append(model(**batch).logits.float().cpu())
    model.train(was_training)
    logits = torch.cat(outputs).numpy()
    in_file_order = np.empty_like(logits)
    in_file_order[order] = logits
    return in_file_order


def labels_of(encoded: EncodedData) -> np.ndarray:
    return np.array([feature["labels"] for feature in encoded.features])


@torch.inference_mode()
def measure_latency(model, encoded: EncodedData, tokenizer) -> dict:
    """CPU latency at batch 1 (ms per example) and throughput at batch 32 (examples/s), after a
    warm-up, median over several runs, on the first examples of the data."""
    model.eval()
    collate = DataCollatorWithPadding(tokenizer)
    sample = [{k: v for k, v in f.items() if k != "labels"} for f in encoded.features[:LATENCY_EXAMPLES]]
    singles = [collate([feature]) for feature in sample]
    batch32 = collate(sample)

    def run_singles() -> float:
        start = time.perf_counter()
        for inputs in singles:
            model(**inputs)
        return (time.perf_counter() - start) * 1000 / len(singles)

    def run_batch() -> float:
        start = time.perf_counter()
        model(**batch32)
        return len(sample) / (time.perf_counter() - start)

    run_singles()
    run_batch()
    return {
        "latency_ms_batch1": statistics.median(run_singles() for _ in range(LATENCY_RUNS)),
        "examples_per_s_batch32": statistics.median(run_batch() for _ in range(LATENCY_RUNS)),
    }


def model_size_mb(model_dir: str | os.PathLike) -> float:
    """Size of the model's weight files (not of files saved beside them, such as projections)."""
    weights = list(Path(model_dir).glob("model*.safetensors")) or list(Path(model_dir).glob("pytorch_model*.bin"))
    return sum(path.stat().st_size for path in weights) / 1e6


def evaluate(model_dir: str | os.PathLike, data_path: str | os.PathLike, *, max_length: int = 128,
             batch_size: int = 64, latency: bool = True, data_options: DataOptions | None = None,
             show_progress: bool = True) -> dict:
    """Everything `tinybert evaluate` reports for a fine-tuned classifier on a labelled file."""
    label_space = label_space_of(model_dir)
    if label_space is None:
        raise InputError("this is a bare encoder with no task head", path=model_dir,
                         fix="evaluate a model written by `tinybert finetune` or `tinybert distill`")
    tokenizer = load_tokenizer(model_dir)
    model = load_classifier(model_dir)
    data = (data_options or DataOptions()).read(data_path)
    encoded = encode(data, tokenizer, max_length, label_space, show_progress=show_progress)
    logits = predict_logits(model, encoded, tokenizer, batch_size, show_progress=show_progress)
    results = {"model": str(model_dir), "data": str(data_path), "examples": len(encoded)}
    results.update(compute_metrics(logits, labels_of(encoded), label_space))
    results["params"] = count_parameters(model)
    results["size_mb"] = model_size_mb(model_dir)
    if latency:
        results.update(measure_latency(model, encoded, tokenizer))
    return results


def format_table(results: dict) -> str:
    rows = []
    for key, value in results.items():
        if isinstance(value, float):
            value = f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        rows.append((key, str(value)))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def write_json(results: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(temporary, path)
