#!/usr/bin/env bash
# One device session: install the carried wheels, run the GPU test tier and the benchmarks, results to $OUT.
#   part 1: GPU tests, the matrix-state scan's block sweep, `recdsl bench` on mamba
#   part 2: `recdsl bench` on mamba2 (against fla's chunk_simple_gla) and hgrn
set -u
export PYTHONUNBUFFERED=1
pip install -q --no-deps --target /tmp/pydeps .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/pydeps:$PWD
OUT=${OUT:-benchmarks/results}
TAG=${TAG:-$(date +%F)_h100}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [ "${1:-1}" = 1 ]; then
  timeout 240 python -m pytest -q tests/test_gpu.py -k "${TESTS:-mamba or compile or chunked}" 2>&1 | tail -25
  timeout 150 python benchmarks/sweep_scan.py --spec examples/mamba.rec --width 2048 --bt 16,32 --bd 4,8,16 \
    --warps 4,8 --out "$OUT/${TAG}_sweep_mamba.jsonl" | tail -16
  best=$(python -c "import json,sys; r=min(map(json.loads, open(sys.argv[1])), key=lambda r: r['fwdbwd_ms']); print(f\"{r['BT']},{r['BD']},{r['warps']}\")" "$OUT/${TAG}_sweep_mamba.jsonl")
  echo "best matrix-scan blocks (fwd+bwd): $best"
  RECDSL_MATRIX_SCAN_BLOCKS=$best timeout 150 python -m recdsl.cli bench examples/mamba.rec \
    --width 2048 --out "$OUT" --tag "${TAG}_mamba"
else
  timeout 300 python -m recdsl.cli bench examples/mamba2.rec --no-cold-start --out "$OUT" \
    --tag "${TAG}_mamba2"
  timeout 150 python -m recdsl.cli bench examples/hgrn.rec --no-cold-start --out "$OUT" \
    --tag "${TAG}_hgrn_rerun"
fi
