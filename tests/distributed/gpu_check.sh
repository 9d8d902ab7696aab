#!/usr/bin/env bash
# Distributed paths that cannot run on a CPU (docs/distributed.md, "What was run"): accelerate FSDP2,
# DeepSpeed ZeRO-2 and ZeRO-3 on 2 GPUs, tiny model, full fine-tuning in float32.
# Per engine: a 4-step run, a run stopped at step 2 and resumed to 4; the resumed metrics must equal the
# uninterrupted run's (to float tolerance on GPU) and both branches' logprob_diff_max must stay <= 1e-3.
#   bash tests/distributed/gpu_check.sh [OUT_DIR]        (needs 2 GPUs; pip install deepspeed for ZeRO)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/vitos_gpu_check}
rm -rf "$OUT" && mkdir -p "$OUT"
python - "$OUT" <<'EOF'
import sys, yaml
out = sys.argv[1]
for name in ("fsdp", "deepspeed_zero2", "deepspeed_zero3"):
    cfg = yaml.safe_load(open(f"configs/accelerate/{name}.yaml"))
    cfg["num_processes"] = 2
    if "fsdp_config" in cfg:
        cfg["fsdp_config"]["fsdp_state_dict_type"] = "SHARDED_STATE_DICT"
    if "deepspeed_config" in cfg:
        cfg["deepspeed_config"]["gradient_accumulation_steps"] = 1
    yaml.safe_dump(cfg, open(f"{out}/{name}.yaml", "w"))
EOF
COMMON=(model.lora=false model.dtype=float32 model.freeze_vision=true logging.progress=false device=auto)
status=0
for engine in fsdp deepspeed_zero2 deepspeed_zero3; do
  for run in full cut; do
    steps=4; [ "$run" = cut ] && steps=2
    accelerate launch --config_file "$OUT/$engine.yaml" -m vitos.cli train --config configs/tiny_cpu.yaml \
      "${COMMON[@]}" schedule.total_steps=$steps checkpoint.out_dir="$OUT/$engine-$run"
  done
  accelerate launch --config_file "$OUT/$engine.yaml" -m vitos.cli train --resume "$OUT/$engine-cut" \
    schedule.total_steps=4 checkpoint.out_dir="$OUT/$engine-cut" logging.progress=false
  python - "$OUT/$engine-full" "$OUT/$engine-cut" "$engine" <<'EOF' || status=1
import json, math, sys
a, b, engine = (open(f"{sys.argv[1]}/metrics.jsonl"), open(f"{sys.argv[2]}/metrics.jsonl"), sys.argv[3])
a, b = [json.loads(l) for l in a], [json.loads(l) for l in b]
assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4], engine
for ra, rb in zip(a, b):
    for k in ("grounding/reward", "sparse/reward", "grounding/loss", "sparse/loss"):
        if ra[k] is not None:
            assert math.isclose(ra[k], rb[k], rel_tol=1e-3, abs_tol=1e-5), (engine, ra["step"], k, ra[k], rb[k])
    for br in ("grounding", "sparse"):
        d = ra[f"{br}/logprob_diff_max"]
        assert d is None or d <= 1e-3, (engine, ra["step"], br, d)
print(f"{engine}: resume reproduces the run, log-prob alarm <= 1e-3")
EOF
done
exit $status
