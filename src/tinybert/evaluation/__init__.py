"""Evaluation: task metrics, spans (entities, answers) from a model's outputs, and `tinybert
evaluate` (metrics, size and latency of a model)."""
