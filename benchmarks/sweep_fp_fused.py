"""The fused fixed point's paths and blocks: the no-grad solve of examples/fp_rnn.rec at a fixed iteration
count with many iterations per launch (fp_one_launch.py), one fused launch per iteration (fp_fused.py)
and the unfused path, the fused path with K iterations per driver call (RECDSL_FP_PER_CALL), then the
fused launch for each RECDSL_FP_BLOCKS="BT,BD,warps", JSON lines;
then (--profile) the CUDA time per kernel of the solve and of a training call (solve, step, backward)
with the default blocks, against their wall time: the difference is the host's.

    python benchmarks/sweep_fp_fused.py --blocks "64,16,2;64,8,2;128,16,4" --profile --out sweep.jsonl   # a GPU
    python benchmarks/sweep_fp_fused.py --B 256 --T 16 --D 64 --iters 24 --blocks ""    # the A5 task's shape
"""
from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import torch

import recdsl
from recdsl import RecNotConverged
from recdsl.bench import _fixed_point_mode, elementwise_args
from overhead import emit, fixed_point_shape_args      # benchmarks/ is this script's folder

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fixed_point_shape_args(ap)
    ap.add_argument("--blocks", default="64,16,2;64,8,2;64,32,4;128,16,4;32,16,2")
    ap.add_argument("--per-call", default="1,2,4,8", help="fused iterations per driver call to time")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import triton.testing
    warnings.simplefilter("ignore", RecNotConverged)   # tol = 1e-30: a fixed iteration count
    spec = recdsl.load(ROOT / "examples" / "fp_rnn.rec", D=args.D, r=args.r, max_iter=args.iters, tol=1e-30)
    a = elementwise_args(spec, args.B, args.T, "cuda", torch.float32)
    run = _fixed_point_mode("fused", lambda: spec.op(**a, backend="triton"))
    # many iterations per launch (fp_one_launch.py) against one launch per iteration, planner's blocks
    os.environ["RECDSL_FP_BLOCKS"] = ""
    for mode in ("one_launch", "fused", "unfused"):
        if mode == "one_launch" and args.D > 512:
            continue
        with torch.no_grad():
            ms = triton.testing.do_bench(_fixed_point_mode(mode, lambda: spec.op(**a, backend="triton")), warmup=5,
                                         rep=200)
        emit({"gpu": torch.cuda.get_device_name(), "B": args.B, "T": args.T, "D": args.D, "r": args.r,
              "iters": args.iters, "mode": mode, "solve_ms": ms}, args.out)
    for k in [x for x in args.per_call.split(",") if x]:   # fused iterations per driver call
        os.environ["RECDSL_FP_PER_CALL"] = k
        with torch.no_grad():
            ms = triton.testing.do_bench(run, warmup=5, rep=200)
        emit({"gpu": torch.cuda.get_device_name(), "B": args.B, "T": args.T, "D": args.D, "r": args.r,
              "iters": args.iters, "mode": "fused", "per_call": int(k), "solve_ms": ms}, args.out)
    os.environ.pop("RECDSL_FP_PER_CALL", None)
    for blocks in [""] + [b for b in args.blocks.split(";") if b]:     # "": the planner's own choice
        os.environ["RECDSL_FP_BLOCKS"] = blocks
        with torch.no_grad():
            ms = triton.testing.do_bench(run, warmup=5, rep=200)
        row = {"gpu": torch.cuda.get_device_name(), "B": args.B, "T": args.T, "D": args.D, "r": args.r,
               "iters": args.iters, "blocks": blocks or "default", "solve_ms": ms}
        emit(row, args.out)
    os.environ["RECDSL_FP_BLOCKS"] = ""
    if not args.profile:
        return
    from overhead import kernel_times
    tensors = list(a.values())
    gout = torch.randn_like(run()[0])

    def train():
        torch.autograd.grad((run()[0] * gout).sum(), tensors)

    def solve():
        with torch.no_grad():
            run()
    for mode, fn in (("solve", solve), ("solve+step+bwd", train)):
        times = kernel_times(fn, iters=5)
        wall = triton.testing.do_bench(fn, warmup=5, rep=200)
        emit({"mode": mode, "iters": args.iters, "wall_ms": wall, "kernels_ms": round(sum(times.values()), 4),
              "kernels": {k[:80]: round(v, 4) for k, v in times.items()}}, args.out)
    # where the host's time goes in a training call: the operators by their own CPU time
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        train()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)


if __name__ == "__main__":
    main()
