"""Where the host's time goes in the fused fixed-point solve and training call of examples/fp_rnn.rec
(or --spec; issue 5's shape by default): wall time (do_bench), the kernels' sum (torch.profiler), the host's time to
return from a call, then cProfile's top functions by their own time and by cumulative time, and a
Chrome trace of two calls (CPU and CUDA rows: the gaps in the CUDA row are the device waiting for the host).

    python benchmarks/profile_fp_host.py --out host.jsonl --trace trace.json     # a GPU
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

import recdsl
from recdsl import RecNotConverged
from recdsl.bench import _fixed_point_mode, elementwise_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shape_options(ap)
    ap.add_argument("--calls", type=int, default=20, help="calls under cProfile")
    ap.add_argument("--out", default=None)
    ap.add_argument("--trace", default=None, help="write a Chrome trace of two training calls here")
    args = ap.parse_args()
    from overhead import cprofile_table, cprofiled, emit, host_ms, kernel_times
    from triton.testing import do_bench
    spec, solve, train = calls(args)
    stages = _host_stages()
    shape = shape_record(spec, args)
    for mode, fn in (("solve", solve), ("solve+step+bwd", train)):
        fn()
        torch.cuda.synchronize()
        wall = do_bench(fn, warmup=5, rep=200, return_mode="median")
        kernels = kernel_times(fn, iters=5)
        returned = host_ms(fn, iters=args.calls)
        stages.clear()
        for _ in range(args.calls):
            fn()
        torch.cuda.synchronize()
        host = {k: round(1000 * v / args.calls, 4) for k, v in stages.items()}
        prof = cprofiled(fn, args.calls)
        emit({**shape, "mode": mode, "wall_ms": round(wall, 4), "kernels_ms": round(sum(kernels.values()), 4),
              "host_return_ms": round(returned, 4), "host_stages_ms": host,
              "kernels": _short_names(kernels),
              "own_time": cprofile_table(prof, "tottime", 30, args.calls, str(ROOT)),
              "cumulative": cprofile_table(prof, "cumtime", 45, args.calls, str(ROOT))}, args.out)
    if args.trace:
        from torch.profiler import ProfilerActivity, profile
        train()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=False) as p:
            for _ in range(2):
                train()
            torch.cuda.synchronize()
        p.export_chrome_trace(args.trace)


def shape_options(ap) -> None:
    """The spec, shape, iteration count and dtype options (issue 5's shape by default)."""
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--D", type=int, default=512)
    ap.add_argument("--spec", default=str(ROOT / "examples" / "fp_rnn.rec"),
                    help="a fixed-point spec with D and r; its weights are drawn with std 1/sqrt(D)")
    ap.add_argument("--r", type=int, default=2)
    ap.add_argument("--iters", type=int, default=17)
    ap.add_argument("--dtype", default="float32")


def shape_record(spec, args) -> dict:
    """The GPU and shape_options' values, the head of each emitted row."""
    return {"gpu": torch.cuda.get_device_name(), "spec": spec.name, "B": args.B, "T": args.T, "D": args.D,
            "r": args.r, "iters": args.iters, "dtype": args.dtype}


def calls(args):
    """(spec, solve, train) at the options' shape: the fused path's no-grad solve and its training call (solve,
    step and backward), the weights scaled by 1/sqrt(D) as benchmarks/fp_rnn_peer.py --hdep draws them."""
    warnings.simplefilter("ignore", RecNotConverged)   # tol = 1e-30: a fixed iteration count
    spec = recdsl.load(args.spec, D=args.D, r=args.r, max_iter=args.iters, tol=1e-30)
    a = elementwise_args(spec, args.B, args.T, "cuda", getattr(torch, args.dtype))
    for w in (w.name for w in spec.args if w.kind == "weight"):
        a[w] = (a[w].detach() * args.D ** -0.5).requires_grad_(True)
    run = _fixed_point_mode("fused", lambda: spec.op(**a, backend="triton"))
    gout = torch.randn_like(run()[0])

    def train():
        for t in a.values():
            t.grad = None
        run()[0].backward(gout)

    def solve():
        with torch.no_grad():
            run()
    return spec, solve, train


def _host_stages() -> dict:
    """Wrap the solve's stages so that each call adds its host seconds (inclusive, no device sync of its
    own) to the returned dict under the stage's name."""
    from recdsl import opcall, planner, solve
    from recdsl.backends.triton import fixed_point, fp_fused, fp_graph, fp_shifted
    seconds: dict = {}

    def timed(label, inner):
        def timed_stage(*a, **k):
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - t0
        return timed_stage
    wrap_stages([(opcall, "prepare", "opcall.prepare"), (planner, "plan", "planner.plan"),
                 (opcall, "call_op", "opcall.call_op (all)"), (fixed_point, "run_fixed_point", "run_fixed_point"),
                 (fp_fused.FusedIteration, "build", "FusedIteration.build"),
                 (fp_shifted.ShiftedIteration, "at", "ShiftedIteration.at"),
                 (fp_graph.SolveGraphs, "bind", "SolveGraphs.bind"),
                 (solve, "fixed_point", "solve.fixed_point (waits included)"),
                 (solve, "_copy_to_host", "solve._copy_to_host"), (fixed_point, "_readout", "_readout")], timed)
    return seconds


def wrap_stages(stages, around) -> None:
    """Replace each (owner, name, label) of `stages`, a module's function or a class's method, by
    around(label, the original)."""
    for owner, name, label in stages:
        setattr(owner, name, around(label, getattr(owner, name)))


def _short_names(kernels: dict) -> dict:
    """Kernel times by name cut to 80 characters, the times of names that the cut makes equal added up (the
    torch element-wise kernels differ only after it)."""
    out: dict = {}
    for k, v in kernels.items():
        out[k[:80]] = out.get(k[:80], 0.0) + v
    return {k: round(v, 4) for k, v in out.items()}


if __name__ == "__main__":
    main()
