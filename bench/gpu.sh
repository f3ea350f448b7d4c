#!/usr/bin/env bash
# Every GPU figure (issues 15 and 22) on a GPU machine that has PyTorch, transformers and accelerate
# installed and no network: one JSON line per figure on standard output (and in $OUT/gpu.jsonl
# when OUT is set), and the profile of one general-distillation step in $OUT/profile_general.txt.
# Its timeouts add up to about 14 minutes.
#
#   bench/gpu.sh data DIR        # on a machine with ../shared and the demo teacher: fill DIR
#   bench/gpu.sh run DIR         # on the GPU machine (DIR carried along): build models, measure
#
# DIR holds sst2_train.tsv (SST-2 train), corpus.txt (WikiText-2 valid), vectors.bin (the demo's
# word2vec) and tokenizer/ (the demo teacher's, BERT's uncased vocabulary). Each group of figures
# runs in its own process under a timeout, most important first; a group that fails or runs out
# of time says so on one line and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: bench/gpu.sh data|run DIR}
dir=${2:?usage: bench/gpu.sh data|run DIR}
python=${PYTHON:-python3}

if [ "$mode" = data ]; then
    mkdir -p "$dir/tokenizer"
    cp ../shared/datasets/sst2/train.tsv "$dir/sst2_train.tsv"
    cp ../shared/datasets/corpus/wikitext2_valid.txt "$dir/corpus.txt"
    .venv/bin/python - "$dir" <<'PY'
import shutil, sys
from pathlib import Path
from tinybert.resources import demo_teacher_dir, demo_word_vectors
target = Path(sys.argv[1])
shutil.copy(demo_word_vectors(), target / "vectors.bin")
for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(demo_teacher_dir() / name, target / "tokenizer" / name)
PY
    exit
fi

export PYTHONPATH=$PWD/src:${PYTHONPATH:-} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
work=$(mktemp -d)
log=${OUT:-$work}/gpu.jsonl
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>/dev/null | sed 's/^/# /'
group() {  # group NAME SECONDS: one group of figures, under a timeout
    local name=$1 seconds=$2; shift 2
    local started=$SECONDS
    timeout "$seconds" "$python" bench/gpu_figures.py "$name" --work "$work" "$@" 2>"$work/$name.err" | tee -a "$log"
    local status=${PIPESTATUS[0]}
    [ "$status" = 0 ] || { echo "{\"group\": \"$name\", \"failed\": $status}" | tee -a "$log"; tail -5 "$work/$name.err"; }
    echo "# $name: $((SECONDS - started)) s" >&2
}
"$python" -c 'import sys, torch, transformers, accelerate; print("#", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "accelerate", accelerate.__version__)'
group prepare 120 --data "$dir" ${TINY:+--tiny}
# most important first; each group in its own process (inductor's cache on disk serves the later ones)
group intermediate 180   # stage 1 at batch 32: reference style, compiled fp32 and bf16, eager; batch 256
group prediction 120     # the same for stage 2
group general 150        # length 128, batch 256: compiled and eager, bf16 and fp32
group profile 60 --output "${OUT:-$work}/profile_general.txt" ${TINY:+--batch-size 8}
# host ms per step at negligible arithmetic (CUDA graphs against eager), stage 1 only for time
timeout 60 "$python" bench/step_overhead.py --stages intermediate --steps 30 2>"$work/overhead.err" | tail -1 \
    | tee -a "$log" || echo '{"bench/step_overhead.py": "failed"}'
# stage 2 with the teacher's outputs cached against running the teacher (issue 25)
timeout 120 "$python" bench/stage2_speed.py --data "$dir/sst2_train.tsv" --tokenizer "$dir/tokenizer" --rows 8192 \
    --steps 100 2>"$work/stage2_speed.err" | tail -1 | tee -a "$log" || echo '{"bench/stage2_speed.py": "failed"}'
group augment 60
