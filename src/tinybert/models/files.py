"""The files a model directory holds beside what ``save_pretrained`` writes."""

# Distillation-only weights (the projections W_h, W_e), saved beside the student, never inside it.
PROJECTIONS_FILE = "distill_projections.safetensors"

# How the model was made and the settings later commands default to (window length, doc stride,
# task, labels, stage, teacher). Part of the model's fingerprint: it changes what evaluate,
# predict, export and the next stage do with the model.
RECORD_FILE = "tinybert.json"

# The model card (the Hub's README.md with its metadata block): written from the record and, in a
# pipeline, the evaluation.
CARD_FILE = "README.md"

# files a run leaves beside a model: they say how it was made, not what it computes
RUN_RECORDS = ("train_log.jsonl", "training_state.json", "pipeline_stage.json", "pipeline_started.json", CARD_FILE)
