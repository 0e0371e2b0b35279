#!/usr/bin/env bash
# One prepared GPU check (≤ 10 minutes on one H100/H200): step time, MFU and peak memory per method at
# Llama-3 shapes in bf16, then a two-stage mini pipeline (teacher SFT → TD distillation) under DeepSpeed
# ZeRO-3. Every figure is appended to benchmarks/RESULTS.md (step_time.py records its own tables).
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repository root
#   GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh  # the same commands at toy sizes on CPU (does it start?)
#
# Needs an environment with this package, a CUDA torch, deepspeed and (for the Liger column)
# liger-kernel: `pip install -e '.[deepspeed,liger]'`. Each step has its own time limit, so one slow or
# failing step cannot eat the budget of the others; a failure is reported and the script goes on.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-$(mktemp -d)}
RESULTS=benchmarks/RESULTS.md
status=0

if [ -n "${GPU_CHECK_CPU:-}" ]; then  # toy sizes: check that every command starts and finishes on CPU
  SHAPES="tiny"; DTYPE=float32; STEPS=2; LENGTH=128; LIMIT=900; RECORD=(--no-record); RESULTS=-
  MINI=(--set launcher.accelerate_config=recipes/accelerate/cpu_zero3.yaml --set launcher.num_processes=1
        --set sft.teacher.num_train_epochs=1 --set distill.steps_per_stage=2 --set task.options.num_train=64)
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (GPU_CHECK_CPU=1 for the CPU dry run)')" || exit 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  SHAPES="llama-1b-3b"; DTYPE=bfloat16; STEPS=10; LENGTH=512; LIMIT=270; RECORD=()
  MINI=(--set launcher.deepspeed_config=recipes/deepspeed/zero3.json --set launcher.mixed_precision=bf16
        --set sft.teacher.num_train_epochs=10)
fi
DK=$("$PY" -c "import distillkit" 2>/dev/null && echo --distillkit)

run() {  # run LIMIT_SECONDS WHAT COMMAND...: time-limited, reported, never fatal
  local limit=$1 what=$2; shift 2
  echo "== $what"
  local start=$SECONDS
  timeout "$limit" "$@"; local rc=$?
  echo "== $what: exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || status=1
  return 0
}

# 1. Step time vs floor, sequential (peak memory per method, MFU against the GPU's dense bf16 peak),
#    at 8 × 512 tokens (2,048 label tokens): SFT, teacher forward, TD, TAID, AW, cached top-64, Liger
#    (compiled on CUDA), DistillKit where installed. Llama 3.2 1B student, 3B teacher, V = 128,256.
run "$LIMIT" "step_time" "$PY" benchmarks/step_time.py --shapes $SHAPES --dtype $DTYPE --steps $STEPS --batch 8 \
    --length "$LENGTH" $DK "${RECORD[@]}"

# 2. A two-stage mini pipeline under ZeRO-3 (teacher SFT, then TD from its checkpoints) on the quickstart
#    task with its tiny models: checks the launch path, ZeRO-3 saves and in-place checkpoint swaps.
run "$LIMIT" "mini pipeline (ZeRO-3)" "$PY" -m distillkit_scd run distillkit_scd/recipes/quickstart.yaml \
    --set output_dir="$OUT/mini" --set distill.methods=[td] --set evaluation.zero_shot=false "${MINI[@]}" \
    --only sft-teacher sft-student distill-td
"$PY" - "$OUT/mini" "$RESULTS" "${GPU_CHECK_CPU:+CPU dry run}" <<'EOF'
import datetime, json, sys
from pathlib import Path
run, results, cpu = Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""
rows = []
for stamp in sorted((run / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime):  # in run order
    s = json.loads(stamp.read_text())
    if "stage" not in s:  # the run summary
        continue
    rows.append(f"| {s.get('stage', stamp.stem)} | {s.get('status')} | {s.get('seconds', float('nan')):.1f} |")
try:
    import torch
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
except Exception:
    device = "?"
text = (f"\n### GPU check: mini pipeline under ZeRO-3 — {datetime.date.today()} — {device}{' — ' + cpu if cpu else ''}\n\n"
        "`bash benchmarks/gpu_check.sh` (quickstart task and tiny models; stages sft-teacher, sft-student, distill-td)\n\n"
        "| stage | status | seconds |\n|---|---|---:|\n" + ("\n".join(rows) or "| (no stage ran) | | |") + "\n")
print(text)
if results != "-":  # the CPU dry run records nothing
    with Path(results).open("a", encoding="utf-8") as fh:
        fh.write(text)
EOF
echo "gpu_check: done (status $status); figures appended to $RESULTS ('-': not recorded); run folder $OUT"
exit $status
