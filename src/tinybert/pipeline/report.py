"""The run's report: report.md and report.html with PNG plots (matplotlib), written from the
pipeline's results and each stage's training log."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened
import matplotlib.pyplot as plt  # noqa: E402

from ..artifacts import atomic_write  # noqa: E402
from ..monitoring import still_rising  # noqa: E402
from .tradeoffs import plot_tradeoffs, smallest_within  # noqa: E402

MODEL_NAMES = {"teacher": "teacher", "student": "distilled student",
               "student_original_data": "distilled student, no augmentation",
               "baseline": "same student fine-tuned without distillation"}
LOSS_STAGES = {"teacher": "teacher fine-tuning", "intermediate": "distillation stage 1 (intermediate)",
               "student": "distillation stage 2 (prediction)",
               "intermediate_original_data": "stage 1, no augmentation",
               "student_original_data": "stage 2, no augmentation", "baseline": "baseline fine-tuning",
               "general": "general distillation"}

# the headline metric of each task type: classification, regression, tagging and QA (F1)
REPORTED_METRICS = ("accuracy", "pearson", "f1")
SECONDARY_METRICS = ("exact_match", "f1_strict")  # shown beside QA's F1, and NER's
SMOOTHING = 0.8  # weight of the past in the loss curves' moving average, as TensorBoard's slider

LOSS_PARTS = {"loss": "total", "att": "attention", "hid": "hidden states", "emb": "embeddings", "pred": "logits",
              "gold": "gold labels"}


def model_names(results: dict) -> dict[str, str]:
    """Each evaluated model's key and name: the fixed ones, the students of `students:`, and an int8
    export of each student."""
    names = dict(MODEL_NAMES)
    names.update({f"student_{name}": f"student {name}" for name in results.get("students") or {}})
    names = {key: name for key, name in names.items() if key != "baseline"} | {"baseline": names["baseline"]}
    names.update({f"{key}_onnx_int8": f"{name}, ONNX int8" for key, name in list(names.items())
                  if key.startswith("student")})
    return names


def model_rows(results: dict) -> tuple[str, list[dict]]:
    """The metric name and one row per evaluated model: dev and test metric, retention, size, latency."""
    evaluated = results.get("evaluation", {})
    teacher = evaluated.get("teacher", {})
    metric = next((m for m in REPORTED_METRICS if m in teacher), None) or "accuracy"
    rows = []
    for key, name in model_names(results).items():
        figures = evaluated.get(key)
        if not figures:
            continue
        dev = (figures.get("dev") or {}).get(metric)
        if key.endswith("_onnx_int8"):  # the int8 copy's dev figure is its export's check
            export = (results.get("exports") or {}).get(key.removesuffix("_onnx_int8"), {})
            dev = export.get("int8_metric_value")
        row = {"key": key, "model": name, "dev": dev, "test": figures.get(metric), "params": figures.get("params"),
               "size_mb": figures.get("size_mb"), "latency_ms": figures.get("latency_ms_batch1"),
               **{f"test {extra}": figures[extra] for extra in SECONDARY_METRICS if extra in figures}}
        if teacher.get(metric):
            row["retention"] = figures.get(metric) / teacher[metric]
        rows.append(row)
    return metric, rows


def warnings_of(results: dict, teacher_training: dict | None, finetune: dict) -> list[str]:
    """What the report warns of, in words, naming the settings to change: a teacher whose dev metric
    was still rising when its training ended (``teacher_training``: its training summary, when the
    pipeline trained it), and a baseline that beats the teacher (fine-tuned here, or given as
    ``finetune.teacher_dir``)."""
    found = []
    metric = (teacher_training or {}).get("metric")
    rising = still_rising(teacher_training.get("history") or [], metric) if metric else None
    if rising:
        stop = (f"finetune.patience (now {finetune['patience']}) then stops it" if finetune["patience"] else
                "set finetune.patience (e.g. 2) to stop it")
        found.append(f"The teacher's dev {metric} was still rising at its last evaluation ({rising[0]:.4f} → "
                     f"{rising[1]:.4f}): the teacher is probably under-trained, and distillation cannot exceed it. "
                     f"Raise finetune.epochs (now {finetune['epochs']:g}); {stop} once dev stops improving.")
    metric, rows = model_rows(results)
    test = {row["key"]: row["test"] for row in rows if row["test"] is not None}
    if "teacher" in test and test.get("baseline", -math.inf) > test["teacher"]:
        found.append(f"The baseline (the student fine-tuned on the labels alone) beats the teacher on test ({metric} "
                     f"{test['baseline']:.4f} against {test['teacher']:.4f}): the teacher is under-trained: "
                     "distillation cannot exceed it. " + (
                         "Train the teacher of finetune.teacher_dir longer or harder, or leave finetune.teacher_dir "
                         "out to fine-tune one here (finetune.model, finetune.epochs)." if finetune.get("teacher_dir")
                         else "Train the teacher longer or harder (finetune.epochs, finetune.lr), or start it from a "
                              "stronger model (finetune.model)."))
    return found


def _cell(value, kind: str = "") -> str:
    if value is None:
        return "–"
    if kind == "percent":
        return f"{100 * value:.1f} %"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if kind == "metric" else f"{value:,.1f}"
    return str(value)


def _table(results: dict) -> tuple[list[str], list[list[str]]]:
    metric, rows = model_rows(results)
    teacher = next((row for row in rows if row["key"] == "teacher"), None)
    extras = [f"test {extra}" for extra in SECONDARY_METRICS if teacher and f"test {extra}" in teacher]
    header = ["model", f"dev {metric}", f"test {metric}", *extras, "retention (test)", "parameters", "size MB",
              "latency ms (batch 1, CPU)", "smaller / faster than teacher"]
    body = []
    for row in rows:
        ratio = "–"
        if teacher and row["key"] != "teacher":
            ratio = " / ".join(f"{teacher[field] / row[field]:.1f}×" if teacher.get(field) and row.get(field) else "–"
                               for field in ("size_mb", "latency_ms"))
        body.append([row["model"], _cell(row["dev"], "metric"), _cell(row["test"], "metric"),
                     *(_cell(row.get(extra), "metric") for extra in extras), _cell(row.get("retention"), "percent"),
                     _cell(row["params"]), _cell(row["size_mb"]), _cell(row["latency_ms"]), ratio])
    return header, body


def summary_table(results: dict) -> str:
    """The model table as aligned plain text, for the terminal."""
    header, body = _table(results)
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in [header] + body]
    return "\n".join(lines)


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plot_losses(run_dir: Path, plots: Path) -> Path | None:
    logs = {stage: [r for r in _read_log(run_dir / stage / "train_log.jsonl") if "loss" in r]
            for stage in LOSS_STAGES}
    logs = {stage: records for stage, records in logs.items() if records}
    if not logs:
        return None
    columns = min(3, len(logs))
    rows = -(-len(logs) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.3 * rows), squeeze=False)
    for axis, (stage, records) in zip(axes.flat, logs.items()):
        steps = [r["step"] for r in records]
        parts = [k for k in records[0] if k not in ("step", "epoch", "lr")]
        for part, colour in zip(parts, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2):
            values = [r.get(part) for r in records]
            axis.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8,
                      marker="o" if len(steps) < 20 else None, markersize=2)
            axis.plot(steps, smoothed(values), color=colour, label=LOSS_PARTS.get(part, part), linewidth=1.5)
        axis.set_title(LOSS_STAGES[stage], fontsize=9)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("loss")
        axis.grid(alpha=0.3)
        if len(parts) > 1:
            axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(logs):]:
        axis.set_visible(False)
    figure.tight_layout()
    path = plots / "losses.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def smoothed(values: list[float | None], weight: float = SMOOTHING) -> list[float | None]:
    """An exponential moving average that starts unbiased (as TensorBoard's): the trend of a
    noisy loss curve."""
    average, total, out = 0.0, 0.0, []
    for value in values:
        if value is None:
            out.append(None)
            continue
        average, total = weight * average + (1 - weight) * value, weight * total + (1 - weight)
        out.append(average / total)
    return out


def metric_axis(values: list[float]) -> tuple[float, float]:
    """An axis that starts a little below the lowest value, so that 0.83 and 0.89 look different."""
    low, high = min(values), max(values)
    margin = max(high - low, 0.02 * max(abs(high), 1e-9))
    return low - margin, high + 0.6 * margin


def _plot_bars(rows: list[dict], field: str, title: str, path: Path, fmt: str = "{:.1f}",
               is_metric: bool = False) -> Path | None:
    """Horizontal bars; a metric's axis starts near its lowest value and each bar says its retention."""
    rows = [row for row in rows if row.get(field) is not None and math.isfinite(row[field])]
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(7, 0.55 * len(rows) + 1.2))
    values = [row[field] for row in rows]
    labels = [fmt.format(v) for v in values]
    if is_metric:
        teacher = next((row[field] for row in rows if row["key"] == "teacher"), None)
        if teacher and teacher > 0:  # a share of a negative correlation means nothing
            labels = [label if row["key"] == "teacher" else f"{label} ({100 * row[field] / teacher:.1f} % of teacher)"
                      for label, row in zip(labels, rows)]
        low, high = metric_axis(values)
        axis.set_xlim(low, high + 0.45 * (high - low))  # room for the labels
        axis.set_xlabel(f"axis starts at {low:.3f}, not 0", fontsize=8)
    else:
        axis.set_xlim(0, max(max(values) * 1.2, 1e-9))
    bars = axis.barh([row["model"] for row in rows], values, color="#4c72b0")
    axis.bar_label(bars, labels=labels, fontsize=8, padding=3)
    axis.invert_yaxis()
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(run_dir: str | os.PathLike, results: dict, title: str = "TinyBERT distillation report") -> Path:
    """Writes RUN/report.md and RUN/report.html (plots in RUN/plots) and returns the .md path."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    metric, rows = model_rows(results)
    blocks: list[tuple] = [("h1", title), ("p", f"Run directory: {run_dir}. Data: "
                                                + ", ".join(f"{k} {v}" for k, v in results.get("data", {}).items()))]
    header, body = _table(results)
    if results.get("warnings"):
        blocks += [("h2", "Warnings")] + [("p", warning) for warning in results["warnings"]]
    blocks += [("h2", "Models"), ("table", header, body),
               ("p", "Retention is the student's test metric as a share of the teacher's. Latency: median "
                     "milliseconds per example at batch 1 on this machine's CPU.")]
    for name, field, label, fmt in (("dev", "dev", f"dev {metric}", "{:.4f}"),
                                    ("metric", "test", f"test {metric}", "{:.4f}"),
                                    ("size", "size_mb", "size (MB)", "{:.1f}"),
                                    ("latency", "latency_ms", "latency, ms per example (batch 1)", "{:.1f}"),
                                    ("params", "params", "parameters (millions)", "{:.1f}")):
        shown = [dict(row, params=row["params"] / 1e6) if field == "params" and row["params"] else row for row in rows]
        plot = _plot_bars(shown, field, label, plots / f"{name}.png", fmt, is_metric=field in ("dev", "test"))
        if plot:
            blocks.append(("img", plot.relative_to(run_dir).as_posix(), label))
    tradeoffs = plot_tradeoffs(rows, metric, plots / "tradeoffs.png")
    if tradeoffs:
        target = results.get("target_retention", 0.97)
        smallest = smallest_within(rows, target)
        teacher = next((row for row in rows if row["key"] == "teacher"), {})
        named = (f"The smallest student keeping {100 * target:.0f} % of the teacher's test {metric}: {smallest['model']}"
                 f" ({100 * smallest['retention']:.1f} %, {smallest['size_mb']:.1f} MB"
                 + (f", {teacher['size_mb'] / smallest['size_mb']:.1f}× smaller" if teacher.get("size_mb") else "")
                 + (f", {smallest['latency_ms']:.1f} ms per example" if smallest.get("latency_ms") else "") + ")."
                 if smallest else f"No student keeps {100 * target:.0f} % of the teacher's test {metric} "
                                  "(report.target_retention).")
        blocks += [("h2", "Size and speed against quality"), ("img", tradeoffs.relative_to(run_dir).as_posix(),
                                                               "test metric against latency and size"),
                   ("p", named)]
    losses = _plot_losses(run_dir, plots)
    if losses:
        blocks += [("h2", "Training losses"), ("img", losses.relative_to(run_dir).as_posix(), "loss curves"),
                   ("p", f"Lines: moving average (smoothing {SMOOTHING}); faint: the logged values.")]
    export = results.get("export")
    if export:
        lines = [["fp32: largest logit difference from PyTorch", f"{export['fp32_max_abs_logit_diff']:.2e} on "
                  f"{export['fp32_parity_examples']} dev examples",
                  "passed" if export["fp32_parity_passed"] else "FAILED (allowed 1e-3)"]]
        if "int8_metric_drop_points" in export:
            lines.append([f"int8 dev {export['int8_metric']}", f"{export['int8_metric_value']:.4f} vs PyTorch "
                          f"{export['pytorch_metric_value']:.4f} ({-export['int8_metric_drop_points']:+.2f} points)",
                          "passed" if export["int8_parity_passed"] else "FAILED (allowed 1 point)"])
        sizes = f"ONNX fp32 {export['onnx_size_mb']:.1f} MB"
        if "int8_size_mb" in export:
            sizes += f", int8 {export['int8_size_mb']:.1f} MB"
        latency = ", ".join(f"{k} {v:.1f} ms" for k, v in export.get("latency_ms_batch1", {}).items())
        blocks += [("h2", "ONNX export of the student"), ("table", ["check", "result", "verdict"], lines),
                   ("p", f"{sizes}" + (f"; latency at batch 1: {latency}." if latency else "."))]
    seconds = results.get("stage_seconds")
    if seconds:
        blocks += [("h2", "Stage wall times"),
                   ("table", ["stage", "seconds"], [[k, f"{v:,.0f}"] for k, v in seconds.items()]),
                   ("p", f"Total {sum(seconds.values()) / 60:.1f} minutes (stages skipped on a re-run keep the time "
                         "of the run that did them).")]
    markdown = run_dir / "report.md"
    atomic_write(markdown, _markdown(blocks))
    atomic_write(run_dir / "report.html", _html(blocks, title))
    return markdown


def _markdown(blocks) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n")
        elif kind == "table":
            header, body = block[1], block[2]
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in body]
            out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def _html(blocks, title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}img{max-width:100%}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "img":
            out.append(f"<p><img src='{html.escape(block[1])}' alt='{html.escape(block[2])}'></p>")
        elif kind == "table":
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block[2])
            head = "".join(f"<th>{html.escape(c)}</th>" for c in block[1])
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
    out.append("</body></html>")
    return "\n".join(out)
