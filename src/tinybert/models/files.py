"""The files a model directory holds beside what ``save_pretrained`` writes."""

# Distillation-only weights (the projections W_h, W_e), saved beside the student, never inside it.
PROJECTIONS_FILE = "distill_projections.safetensors"

# files a run leaves beside a model: they say how it was made, not what it computes
RUN_RECORDS = ("train_log.jsonl", "training_state.json", "pipeline_stage.json", "pipeline_started.json")
