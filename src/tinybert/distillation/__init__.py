"""Distillation: attention capture, the losses, the two objectives, and the commands that train
with them (task distillation's two stages, general distillation)."""
