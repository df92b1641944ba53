#!/usr/bin/env bash
# The GPU benchmark run (one prepared script, < 10 minutes): `lenet bench --device cuda`, plus
# the CPU training loop pinned to 2 cores with 1 vs 2 threads (a quiet stand-in for the 2-core box).
# Usage: OUT=results-dir DATA=mnist-dir bash scripts/bench_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-bench-out}; DATA=${DATA:-data}
mkdir -p "$OUT"
{ nvidia-smi -L; python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  python -c "import onnxruntime; print('onnxruntime', onnxruntime.__version__)"; nproc; } 2>&1
timeout 200 python -m lenet bench --device cuda --data-dir "$DATA" --json "$OUT/bench-cuda.json"
for t in 1 2; do
  timeout 60 taskset -c 0,1 python -m lenet -q bench --device cpu --threads $t --only train-throughput \
    --models lenet5-relu --data-dir "$DATA" --json "$OUT/cpu-2cores-threads$t.json"
done
timeout 40 taskset -c 0,1 python -m lenet -q bench --device cpu --threads 2 --only inference-throughput \
  predict-latency data-load --data-dir "$DATA" --json "$OUT/cpu-2cores-infer.json"
