"""Where a call's time goes: device time of each kernel (torch.profiler) against the wall time of the call
(do_bench) and the host time to issue it. A wall time far above the kernels' sum means the call is bound by
Python dispatch, not by the GPU.

    python benchmarks/overhead.py --spec examples/hgrn.rec --width 2048
"""
import argparse
import json
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

import recdsl
from recdsl.bench import elementwise_args


def kernel_times(fn, iters=20):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    per = defaultdict(float)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name] += e.device_time_total / iters / 1000
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


def emit(row: dict, out=None) -> None:
    """Print one JSON line and, with `out`, append it to that file."""
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


def fixed_point_shape_args(ap, iters: bool = True) -> None:
    """The fixed-point benchmarks' shape options, issue 5's shape by default."""
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--D", type=int, default=512)
    ap.add_argument("--r", type=int, default=2)
    if iters:
        ap.add_argument("--iters", type=int, default=17)


def cprofiled(fn, calls: int):
    """A cProfile.Profile of `calls` calls of fn, up to the device finishing them (for cprofile_table)."""
    import cProfile
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    return prof


def cprofile_table(prof, key: str, n: int, calls: int, root: str = "") -> list[str]:
    """The n first rows of a cProfile.Profile's table sorted by `key` ("tottime": own time, else
    cumulative), per call: milliseconds, calls, and the frame (paths shortened past site-packages/ and
    `root`)."""
    import io
    import pstats
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, fn), (_, ncalls, tottime, cumtime, _) in st.stats.items():
        if "triton/testing" in file:
            continue
        where = file.split("site-packages/")[-1]
        where = where.replace(root + "/", "") if root else where
        rows.append((tottime if key == "tottime" else cumtime, ncalls, f"{where}:{line}({fn})"))
    rows.sort(reverse=True)
    return [f"{1000 * t / calls:8.4f} ms {c / calls:6.1f} calls  {name}" for t, c, name in rows[:n]]


def host_ms(fn, iters=50):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    t1 = time.perf_counter()   # issued, not necessarily finished
    torch.cuda.synchronize()
    return 1000 * (t1 - t0) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="examples/hgrn.rec")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--width", type=int, default=2048)
    a = ap.parse_args()
    spec = recdsl.load(a.spec, D=a.width)
    args = elementwise_args(spec, a.batch, a.length, "cuda", torch.bfloat16)
    tensors = list(args.values())

    def fwd():
        with torch.no_grad():
            return spec.op(**args, backend="triton")

    def fwd_bwd():
        for t in tensors:
            t.grad = None
        o, _ = spec.op(**args, backend="triton")
        o.backward(torch.ones_like(o))

    for name, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        kt = kernel_times(fn)
        row = {"spec": spec.name, "mode": name, "wall_ms": do_bench(fn, warmup=25, rep=100, return_mode="median"),
               "host_ms": host_ms(fn), "kernels_ms": sum(kt.values()),
               "kernels": {k[:60]: round(v, 4) for k, v in kt.items()}}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
