#!/usr/bin/env bash
# The GPU rows of the speed table, ours next to PyTorch eager, in one command:
#   benchmarks/gpu.sh OUTDIR [PYTHON]
# ResNet-50 and ViT-S/16 at 224 (benchmarks/workloads.py): bfloat16 at batch
# 64 and 256, then float32 at batch 64; each line of OUTDIR/*.jsonl is one
# benchmarks.train_step or benchmarks/torch_gpu.py record, stderr beside it.
# Each job has its own time limit, so one that hangs costs only its slot.
set -u
out=${1:?usage: benchmarks/gpu.sh OUTDIR [PYTHON]}
py=${2:-python3}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu \
  --format=csv >"$out/nvidia_smi.csv" 2>&1

job() {  # job NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.jsonl" 2>"$out/$name.err"
  echo "== $name: exit $?, $((SECONDS - t0)) s"
  grep -v '^\s*$' "$out/$name.err" | tail -n 2
  cut -c1-400 "$out/$name.jsonl"
}

job ours_bf16_b64 200 "$py" -m benchmarks.train_step --model=resnet50,vit_s16 \
  --dtype=bfloat16 --json
job torch_bf16_b64 100 "$py" benchmarks/torch_gpu.py --dtype=bfloat16
job ours_bf16_b256 200 "$py" -m benchmarks.train_step --model=resnet50,vit_s16 \
  --dtype=bfloat16 --batch_size=256 --json
job torch_bf16_b256 100 "$py" benchmarks/torch_gpu.py --dtype=bfloat16 \
  --batch_size=256
job ours_f32_b64 200 "$py" -m benchmarks.train_step --model=resnet50,vit_s16 \
  --dtype=float32 --json
job torch_f32_b64 100 "$py" benchmarks/torch_gpu.py --dtype=float32
