#!/usr/bin/env bash
# Same-run A/B of two checkpoints on the image path: `lenet predict DIR` (5,600 PNG scans, a
# fresh process, start-up included) and `lenet serve` under load at concurrency 1 and 16.
#   bash scripts/bench_weights.sh OLD.pt NEW.pt [DATA_DIR]
# (the earlier bundled weights: git show 8f1c2fb:src/lenet/weights/lenet5-relu.pt > old.pt)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: bash scripts/bench_weights.sh A.pt B.pt [DATA_DIR]" >&2; exit 2; }
A=$1 B=$2 DATA=${3:-data}
PY=${PYTHON:-python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$PY -c "
import sys; from pathlib import Path
from lenet.bench.image_path import write_scans
write_scans(Path(sys.argv[1]), 5600, sys.argv[2])" "$work/scans" "$DATA"
for round in 1 2; do
  for ck in "$A" "$B"; do
    t0=$(date +%s.%N)
    $PY -m lenet predict "$work/scans" --model "$ck" --format csv > /dev/null 2>&1
    t1=$(date +%s.%N)
    echo "round $round $ck: lenet predict 5600 scans $($PY -c "print(round(5600 / ($t1 - $t0)))") img/s"
    $PY -m lenet.bench.serve_load --model "$ck" --concurrency 1 16 --requests 1000 \
      --data-dir "$DATA" --json | $PY -c "
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    print(f\"round $round $ck: serve c{d['concurrency']} p50 {d['p50_ms']:.2f} ms \"
          f\"p99 {d['p99_ms']:.2f} ms {d['requests_per_s']:.0f} req/s errors {d['errors']}\")"
  done
done
