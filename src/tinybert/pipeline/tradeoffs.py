"""What the report says of size and speed against quality: the test metric of every model (teacher,
students, their int8 exports, the baseline) against its latency and its size, the Pareto front of
each (the models no other model beats on both), and the smallest student that keeps a target share
of the teacher's metric."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened
import matplotlib.pyplot as plt  # noqa: E402

COSTS = {"latency_ms": "latency, ms per example (batch 1, CPU, log scale)", "size_mb": "size, MB (log scale)"}


def _measured(rows: list[dict], cost: str) -> list[dict]:
    return [row for row in rows if row.get("test") is not None and row.get(cost)]


def pareto_front(rows: list[dict], cost: str) -> list[dict]:
    """The rows no other row beats on both ``cost`` (lower) and test metric (higher), cheapest first."""
    measured = _measured(rows, cost)
    front = [row for row in measured
             if not any(other[cost] <= row[cost] and other["test"] >= row["test"]
                        and (other[cost], other["test"]) != (row[cost], row["test"]) for other in measured)]
    return sorted(front, key=lambda row: row[cost])


def smallest_within(rows: list[dict], target: float) -> dict | None:
    """The smallest student (a distilled student or its int8 export) keeping ``target`` of the
    teacher's test metric, or None."""
    kept = [row for row in rows if row["key"].startswith("student") and row.get("retention") is not None
            and row["retention"] >= target and row.get("size_mb")]
    return min(kept, key=lambda row: row["size_mb"], default=None)


def plot_tradeoffs(rows: list[dict], metric: str, path: Path) -> Path | None:
    """Two panels, the test metric against latency and against size, the Pareto front joined."""
    panels = [cost for cost in COSTS if len(_measured(rows, cost)) > 1]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    for axis, cost in zip(axes[0], panels):
        measured = _measured(rows, cost)
        front = pareto_front(rows, cost)
        axis.step([row[cost] for row in front], [row["test"] for row in front], where="post", color="#c44e52",
                  linewidth=1.2, alpha=0.7, label="Pareto front")
        for row in measured:
            teacher = row["key"] == "teacher"
            axis.scatter(row[cost], row["test"], s=60 if teacher else 36, marker="*" if teacher else "o",
                         color="#222222" if teacher else "#c44e52" if row in front else "#4c72b0", zorder=3)
            axis.annotate(row["model"], (row[cost], row["test"]), fontsize=7, xytext=(4, 4),
                          textcoords="offset points")
        axis.set_xscale("log")
        axis.set_xlabel(COSTS[cost])
        axis.set_ylabel(f"test {metric}")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7, loc="lower right")
    figure.suptitle(f"test {metric} against latency and size (the front: no model is both cheaper and better)",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
