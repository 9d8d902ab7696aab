#!/usr/bin/env bash
# Device check (the `device` tool's GPU machine): vLLM vs the Python loop at Qwen2.5-7B's shape, random bf16
# weights, one GPU. Prepared, NOT yet run (no task of this project has drawn a GPU since it was written).
#     run(command="bash bench/gpu_vllm_7b.sh", timeout_s=540)      -> $OUT/vllm_rollouts_7b.json
# Budget: writing the random 7B checkpoint (~15 GB bf16) ~2-3 min, vLLM start ~1-2 min, 3 rounds ~2 min.
set -euo pipefail
OUT="${OUT:-/tmp/vitos-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
if ! python -c "import vllm" 2>/dev/null; then
    pip install -q "vllm>=0.32,<0.34" || { echo "no vLLM on this machine and none installable: nothing measured"; exit 3; }
fi
pip install -q -e . 2>/dev/null || pip install -q --no-deps -e .
python -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
python bench/vllm_rollouts.py --shape 7b --device cuda --dtype bfloat16 --questions 8 --group 8 --tokens 128 \
    --rounds 3 --model-dir /tmp/vitos-7b-random --json "$OUT/vllm_rollouts_7b.json" 2>&1 | grep -v " INFO " | tail -20
