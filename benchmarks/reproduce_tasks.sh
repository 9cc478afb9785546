#!/usr/bin/env bash
# Issue 6: the seed papers' state-tracking results, trained from .rec specs with `recdsl tasks suite`.
#
#   bash benchmarks/reproduce_tasks.sh [parity] [modarith] [s3] [a5]     (no argument: all four)
#
#   parity:   mamba, mamba_negeig, deltanet, deltanet_negeig; 2 layers, train 3-40, test 40-256
#             (Grazzi et al. 2025, Table 3: [-1,1] variants 1.000, [0,1] at chance)
#   modarith: deltanet_negeig in fla's layer (benchmarks/specs/deltanet_negeig_conv.rec), deltanet on + - *
#             mod 5 without brackets; same lengths (Table 3: 0.971, 0.314)
#   s3:       benchmarks/specs/deltaproduct_nogate.rec (DeltaProduct without gates, as the paper trains it)
#             with n_h = 2 and n_h = 1, one layer, train lengths up to 128, test to 512
#             (Siems et al. 2025: n_h = 2 generalises, n_h = 1 does not)
#   a5:       fp_rnn (one layer, d_model 512; also with the paper's shifted hidden-state dependence,
#             benchmarks/specs/fp_rnn_hdep.rec) against a two-layer mamba, train length 16, test to 48
#             (Movahedi et al. 2025, Fig. 1/4: FP-RNN generalises beyond 16, Mamba does not)
#
# Every (spec, task, seed) case is its own process under `timeout`, with a wall-clock budget
# (MINUTES, default per part below) after which training stops cleanly, checkpointed, and the run is
# evaluated. All cases of all parts asked for run at once, sharing the GPU: each is a small model whose
# training step is one CUDA graph (`--cuda-graph auto`; the fixed point's driver runs eagerly), so one
# case alone leaves the GPU mostly idle. MPS=1 starts NVIDIA's multi-process service first, so the cases'
# kernels can overlap instead of taking turns. Each case writes its log beside its run; the suites merge
# into one table per part (suite.md: ours beside the paper's number, steps done, seconds, device),
# suite.json and one plot per task. Outputs: $OUT/${TAG}_tasks_<part>/. A second invocation with the same
# TAG resumes every unfinished run from its checkpoint (they are kept unless KEEP_CHECKPOINTS=0).
#
# SEEDS (default "0 1 2": the papers report the best of three) picks the seeds, SEEDS_<part> (SEEDS_s3=0)
# a part's own; MODARITH_SPECS the modarith part's specs (default "benchmarks/specs/deltanet_negeig_conv.rec
# deltanet"; a name is an example, a path a spec file), MODARITH_ARGS more options for its runs (later
# ones win: MODARITH_ARGS="--lr 1e-3 --steps 50000"), A5_SPECS and A5_ARGS likewise for the a5 part's
# fixed-point runs (default "fp_rnn benchmarks/specs/fp_rnn_hdep.rec"; A5_BASELINE=0 leaves out the two-layer
# mamba, FP-Mamba is A5_SPECS=benchmarks/specs/fp_mamba_hdep.rec A5_ARGS="-p D=1024 -p N=16"). SMOKE=1 shrinks every
# case to a few steps, tiny models and short lengths (CPU, about a minute): it checks that every part
# runs end to end, not that anything is learnt.
set -u
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then     # the device machine: dependencies come as carried wheels
  pip install -q --no-deps --target /tmp/pydeps .whl/*.whl 2>&1 | grep -v "WARNING: Running pip" | tail -1
  export PYTHONPATH=/tmp/pydeps:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
OUT=${OUT:-benchmarks/results}
SMOKE=${SMOKE:-0}
TAG=${TAG:-$(date +%F)_$([ "$SMOKE" = 1 ] && echo smoke || echo h100)}
PARTS=${*:-parity modarith s3 a5}
SEEDS=${SEEDS:-$([ "$SMOKE" = 1 ] && echo 0 || echo 0 1 2)}
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

if [ "${MPS:-0}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
  nvidia-cuda-mps-control -d && sleep 1
  if python -c "import torch; torch.ones(1, device='cuda').add_(1); torch.cuda.synchronize()" 2>/dev/null; then
    echo "MPS running"
  else
    echo "MPS did not serve a CUDA client: stopped, cases take turns on the GPU"; echo quit | nvidia-cuda-mps-control
  fi
fi

# pick REAL or SMOKE: `$(S 600 3)`
S() { if [ "$SMOKE" = 1 ]; then echo "$2"; else echo "$1"; fi; }

# one case in the background: case DIR TASK MINUTES SPEC [suite options...]. The hard timeout leaves room
# for start-up, Triton compilation and evaluation after the graceful --max-minutes stop.
case_bg() {
  local dir=$1 task=$2 minutes=$3 spec=$4
  shift 4
  local name limit
  name=$(echo "${task}_$(basename "$spec")" | tr -c 'A-Za-z0-9_.-' '_')
  limit=$(python -c "print(int($minutes * 60 + $(S 90 120)))")
  echo "== $(date +%T) $spec on $task: train at most $minutes min (hard limit ${limit}s), log $dir/$name.log"
  ( timeout "$limit" python -m recdsl.cli tasks suite --specs "$spec" --tasks "$task" --max-minutes "$minutes" \
      --cuda-graph "${CUDA_GRAPH:-auto}" \
      --out "$dir" "$@" >"$dir/$name.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || echo "!! $spec on $task ended with exit status $rc (124: the hard time limit)"
    grep "ms/step" "$dir/$name.log" | tail -1 ) &
}

# the Grazzi et al. protocol: 2 layers, train 3-40, test 40-256 (8 lengths, 512 sequences each)
grazzi() {   # grazzi DIR TASK MINUTES SPEC [options...]
  local dir=$1 task=$2 minutes=$3 spec=$4
  shift 4
  case_bg "$dir" "$task" "$(S "$minutes" 0.5)" "$spec" --layers 2 --train-len "$(S 3-40 3-6)" \
    --test-len "$(S 40-256 6-10)" --points "$(S 8 2)" --samples "$(S 512 8)" "$@"
}

DELTA=$(S "-p H=2 -p K=16 -p V=16" "-p H=1 -p K=4 -p V=4")
DELTA_128=$(S "-p H=4 -p K=32 -p V=32" "-p H=1 -p K=4 -p V=4")
MAMBA=$(S "-p D=32 -p N=8" "-p D=4 -p N=2")
dirs=()
for part in $PARTS; do
  dir="$OUT/${TAG}_tasks_$part"
  mkdir -p "$dir"
  dirs+=("$dir")
  eval "seeds=\${SEEDS_$part:-\$SEEDS}"
  echo "######## $(date +%T) part $part (seeds $seeds) -> $dir"
  case $part in
    parity)
      # d_model 32, batch 128, lr 3e-3 and a curriculum (the longest train length grows from 3 to 40 over
      # the first 400 steps; without it mamba_negeig stayed at chance within 1000 steps); the paper's
      # 20k steps. A CPU run of this protocol (seed 1) reached 1.000 on 40-256 with deltanet_negeig after
      # 18.9k steps, 0.27 at length 94 after 1.5k.
      for s in mamba mamba_negeig deltanet deltanet_negeig; do
        for seed in $seeds; do
          grazzi "$dir" parity "${MINUTES:-6}" "examples/$s.rec:seed=$seed" --d-model "$(S 32 8)" \
            --steps "$(S 20000 3)" --batch "$(S 128 8)" --lr 3e-3 --warmup "$(S 50 0)" --curriculum "$(S 400 2)" \
            $([ "${s#mamba}" != "$s" ] && echo $MAMBA || echo $DELTA)
        done
      done ;;
    modarith)
      # the paper's protocol (Grazzi et al. configs): d_model 128, 4 heads, batch 256, weight decay 0.1, 10k
      # warm-up steps then a cosine decay, 100k steps, bf16 autocast, fla's DeltaNet block and layer (short
      # convolutions). Their lr is 1e-3; 5e-4 is the one that met issue 6's bar here. A validation split
      # scored every 1000 steps also picks a model.
      for s in ${MODARITH_SPECS:-benchmarks/specs/deltanet_negeig_conv.rec deltanet}; do
        case $s in */*) path=$s ;; *) path=examples/$s.rec ;; esac
        for seed in $seeds; do
          grazzi "$dir" mod_arithmetic "${MINUTES:-8}" "$path:seed=$seed" --d-model "$(S 128 8)" \
            $DELTA_128 --steps "$(S 100000 3)" --batch "$(S 256 8)" --lr 5e-4 --weight-decay 0.1 \
            --warmup "$(S 10000 1)" --lr-decay cosine --block fla --precision bf16 --val-every "$(S 1000 1)" \
            ${MODARITH_ARGS:-}
        done
      done ;;
    s3)
      # one layer, lengths 16 up to 128 (a curriculum over the first 300 steps: short words are learnt
      # first), test to 512; all-prefix sequence accuracy
      for nh in 2 1; do
        for seed in $seeds; do
          case_bg "$dir" word_S3 "$(S "${MINUTES:-8}" 0.5)" "benchmarks/specs/deltaproduct_nogate.rec:n_h=$nh,seed=$seed" \
            --layers 1 --d-model "$(S 32 8)" $DELTA --steps "$(S 20000 3)" --batch "$(S 256 8)" --lr 3e-3 \
            --train-len "$(S 16-128 2-6)" --curriculum "$(S 300 2)" --test-len "$(S 128-512 6-10)" --points "$(S 4 2)" \
            --samples "$(S 256 8)"
        done
      done ;;
    a5)
      # the paper's protocol (the fp-rnn code's word-problem defaults): one layer, d_model 512, batch 512,
      # lr 1e-4, weight decay 0.01, clipping 1, a cosine decay over 125k steps (5 epochs of 12.8M sequences);
      # train length 16 (every prefix supervised), test to 48, validation every 2500 steps. fp_rnn iterates
      # at most 24 times per training call and 200 at test (the paper: up to 1000 at test, until every
      # sequence has converged); its driver reads residuals on the host, so it trains eagerly. The same
      # with the paper's shifted hidden-state dependence (benchmarks/specs/fp_rnn_hdep.rec, about 2x slower
      # a step). A5_SPECS picks other specs, A5_ARGS adds options (A5_ARGS="--steps 80000"). The
      # two-layer mamba keeps the protocol it was measured with (d_model 64, batch 256, lr 3e-3, 100k steps).
      for s in ${A5_SPECS:-fp_rnn benchmarks/specs/fp_rnn_hdep.rec}; do
        case $s in */*) path=$s ;; *) path=examples/$s.rec ;; esac
        for seed in $seeds; do
          case_bg "$dir" word_A5 "$(S "${MINUTES:-8}" 0.5)" "$path:seed=$seed" --layers 1 \
            --d-model "$(S 512 8)" -p "D=$(S 512 4)" -p "max_iter=$(S 24 4)" -p tol=0.01 --eval-param "max_iter=$(S 200 8)" \
            --steps "$(S 125000 3)" --batch "$(S 512 8)" --lr 1e-4 --weight-decay 0.01 --val-every "$(S 2500 1)" \
            --train-len "$(S 1-16 2-4)" --test-len "$(S 4-48 4-6)" --points "$(S 12 2)" --samples "$(S 256 8)" \
            ${A5_ARGS:-}
        done
      done
      for seed in $([ "${A5_BASELINE:-1}" = 1 ] && echo $seeds); do    # A5_BASELINE=0: the fixed points only
        case_bg "$dir" word_A5 "$(S "${MINUTES:-8}" 0.5)" "examples/mamba.rec:layers=2,seed=$seed" --layers 1 \
          --d-model "$(S 64 8)" -p "D=$(S 64 4)" -p "N=$(S 8 2)" --steps "$(S 100000 3)" --batch "$(S 256 8)" \
          --lr 3e-3 --train-len "$(S 1-16 2-4)" --test-len "$(S 4-48 4-6)" --points "$(S 12 2)" --samples "$(S 256 8)"
      done ;;
    *) echo "unknown part $part (parts: parity modarith s3 a5)"; exit 2 ;;
  esac
done
wait
for dir in "${dirs[@]}"; do
  echo "######## $dir"
  [ -f "$dir/suite.md" ] && cat "$dir/suite.md"
  [ "${KEEP_CHECKPOINTS:-1}" = 1 ] || find "$dir" -name "checkpoint.pt" -delete
done
[ "${MPS:-0}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null && echo quit | nvidia-cuda-mps-control
exit 0
