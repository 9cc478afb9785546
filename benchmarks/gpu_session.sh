#!/usr/bin/env bash
# One device session: install the carried wheels, run the GPU test tier and the benchmarks, results to $OUT.
#   part scan:   the scans' GPU tests (the look-back against the walk), hgrn's block sweep for the look-back
#                schedule and the walk's best blocks, `recdsl bench` on hgrn with the best blocks
#   part mamba:  the matrix-state scan's block sweep, `recdsl bench` on mamba with its best blocks
#   part tests:  the GPU test tier, `recdsl bench` on mamba with the planner's blocks
#   part matrix: `recdsl bench` on gla and mamba2 (against fla's chunk_gla and chunk_simple_gla)
#   part recurrent: block_diagonal, fp_rnn (17 iterations) against the loop
#   part delta:  the GPU tests of the chunked delta rule (about 6.5 minutes of compiles on a fresh machine)
#   part delta-bench: issue 4's table against fla in one process (bench_delta_all.py), about 100 s per case
#                on a fresh machine (fla's autotuning, our compiles): pick SHAPES, CASES and NH to fit a call
# A folder .tcache, named in `run`'s carry, becomes the Triton cache: compiled kernels and fla's autotuning
# results then survive between calls (TCACHE_OUT=1 returns it as $OUT/tcache.tgz.part-*, to join into .tcache).
#   part fp:     the fixed-point GPU tests, the fused paths and iterations per call with a profile at issue 5's
#                shape and at the A5 task's, the authors' FP-RNN side by side (fp_rnn_peer.py; needs .peer/)
set -u
export PYTHONUNBUFFERED=1
pip install -q --no-deps --target /tmp/pydeps .whl/*.whl 2>&1 | grep -v "WARNING: Running pip" | tail -1
export PYTHONPATH=/tmp/pydeps:$PWD
OUT=${OUT:-benchmarks/results}
TAG=${TAG:-$(date +%F)_h100}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [ -d .tcache ]; then export TRITON_CACHE_DIR=$PWD/.tcache; fi

best() {  # the sweep's fastest forward+backward blocks as "BT,BD,warps"
  python -c "import json,sys; r=min(map(json.loads, open(sys.argv[1])), key=lambda r: r['fwdbwd_ms']); print(f\"{r['BT']},{r['BD']},{r['warps']}\")" "$1"
}

if [ "${1:-scan}" = scan ]; then
  timeout 240 python -m pytest -q tests/test_gpu.py -k "look_back or scan_against_reference or varlen" 2>&1 | tail -4
  # both schedules' blocks, each against a device copy in the same process
  timeout 200 python benchmarks/sweep_scan.py --spec examples/hgrn.rec --schedules look_back --bt 32,64,128 \
    --bd 16,32,64 --warps 2,4 --out "$OUT/${TAG}_sweep_hgrn_look_back.jsonl" | tail -3
  timeout 90 python benchmarks/sweep_scan.py --spec examples/hgrn.rec --schedules walk --bt 128 --bd 16 \
    --warps 2 --out "$OUT/${TAG}_sweep_hgrn_walk.jsonl" | tail -2
  b=$(best "$OUT/${TAG}_sweep_hgrn_look_back.jsonl"); echo "hgrn blocks: $b"
  RECDSL_SCAN_BLOCKS=$b timeout 150 python -m recdsl.cli bench examples/hgrn.rec --out "$OUT" --tag "${TAG}_hgrn"
  # few sequences and channels, a long sequence: where walking programs are too few to stream
  RECDSL_SCAN_BLOCKS=$b timeout 90 python benchmarks/sweep_scan.py --spec examples/hgrn.rec --batch 1 --length 65536 \
    --width 256 --schedules walk,look_back --bt 64,128 --bd 16,32 --warps 2 --out "$OUT/${TAG}_sweep_hgrn_long.jsonl" | tail -1
elif [ "$1" = mamba ]; then
  timeout 120 python benchmarks/sweep_scan.py --spec examples/mamba.rec --schedules walk --bt 16,32 --bd 8,16 \
    --warps 4 --out "$OUT/${TAG}_sweep_mamba.jsonl" | tail -3
  b=$(best "$OUT/${TAG}_sweep_mamba.jsonl"); echo "mamba blocks: $b"
  RECDSL_SCAN_BLOCKS=$b timeout 120 python -m recdsl.cli bench examples/mamba.rec --width 2048 --no-cold-start \
    --out "$OUT" --tag "${TAG}_mamba"
elif [ "$1" = tests ]; then
  timeout 300 python -m pytest -q tests/test_gpu.py tests/test_gpu_fixed_point.py 2>&1 | tail -6
  timeout 150 python -m recdsl.cli bench examples/mamba.rec --width 2048 --no-cold-start --out "$OUT" \
    --tag "${TAG}_mamba"
elif [ "$1" = recurrent ]; then
  # issue 5's shapes: block diagonal b=8 at width 512; FP-RNN d_inner=512, r=2, 17 iterations (tol never met)
  timeout 200 python -m recdsl.cli bench examples/block_diagonal.rec --batch 8 --length 2048 -p NB=64 -p b=8 \
    --out "$OUT" --tag "${TAG}_block_diagonal"
  timeout 300 python -m recdsl.cli bench examples/fp_rnn.rec --batch 8 --length 2048 -p D=512 -p r=2 \
    -p max_iter=17 -p tol=1e-30 --out "$OUT" --tag "${TAG}_fp_rnn"
elif [ "$1" = delta ]; then
  # the chunked WY kernels' GPU tests (a time guard that stops pytest loses its summary: -rA names each test)
  timeout 560 python -m pytest -q -rA tests/test_gpu.py -k delta_chunk 2>&1 | tail -22
elif [ "$1" = delta-bench ]; then
  # e.g. SHAPES="4,4096,16,128" CASES=deltanet,gated_deltanet,deltaproduct NH=2 (five cases)
  timeout 560 python benchmarks/bench_delta_all.py --out "$OUT/${TAG}_delta.jsonl" --shapes "${SHAPES:-4,4096,16,128}" \
    ${CASES:+--cases $CASES} ${NH:+--n-h $NH}
elif [ "$1" = fp ]; then
  timeout 150 python -m pytest -q tests/test_gpu_fixed_point.py 2>&1 | tail -3
  timeout 100 python benchmarks/sweep_fp_fused.py --blocks "" --profile --out "$OUT/${TAG}_fp_fused_sweep.jsonl" \
    | cut -c1-200
  timeout 60 python benchmarks/sweep_fp_fused.py --B 256 --T 16 --D 64 --iters 24 --blocks "" --per-call 1,4 \
    --out "$OUT/${TAG}_fp_fused_sweep_a5_shape.jsonl"
  timeout 170 python benchmarks/fp_rnn_peer.py --budget 4 --out "$OUT/${TAG}_fp_rnn_peer.jsonl" | grep contestant
else
  for s in gla mamba2; do
    timeout 280 python -m recdsl.cli bench examples/$s.rec --no-cold-start --out "$OUT" --tag "${TAG}_$s"
  done
fi
# the device returns files of at most 16 MiB (one delta-bench cache was 29 MB): parts of 15 MB, to join
# with `cat tcache.tgz.part-* | tar xz -C .tcache`
if [ "${TCACHE_OUT:-0}" = 1 ] && [ -n "${TRITON_CACHE_DIR:-}" ]; then
  tar czf - -C "$TRITON_CACHE_DIR" . | split -b 15M - "$OUT/tcache.tgz.part-"
fi
