"""Inference: ONNX export with its parity checks, and predictions for new text."""
