"""Where the host's time goes in an element-wise scan's forward+backward (hgrn by default, bf16): cProfile
of many calls with the backward run on the calling thread (torch.autograd.set_multithreading_enabled(False)
lets cProfile see the Python inside it), top functions by their own and by cumulative time per call.

    python benchmarks/profile_scan_host.py --spec examples/hgrn.rec --out host.jsonl    # a GPU
"""
import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path

import torch

import recdsl
from recdsl.bench import elementwise_args

ROOT = Path(__file__).resolve().parents[1]


def table(prof, key, n, calls):
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, fn), (_, ncalls, tottime, cumtime, _) in st.stats.items():
        where = file.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        rows.append((tottime if key == "tottime" else cumtime, ncalls, f"{where}:{line}({fn})"))
    rows.sort(reverse=True)
    return [f"{1000 * t / calls:8.4f} ms {c / calls:6.1f} calls  {name}" for t, c, name in rows[:n]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "examples" / "hgrn.rec"))
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    spec = recdsl.load(a.spec, D=a.width)
    args = elementwise_args(spec, a.B, a.T, "cuda", torch.bfloat16)
    tensors = list(args.values())
    do = torch.randn(a.B, a.T, a.width, device="cuda", dtype=torch.bfloat16)

    def fwd_bwd():
        for t in tensors:
            t.grad = None
        o, _ = spec.op(**args, backend="triton")
        o.backward(do)
    torch.autograd.set_multithreading_enabled(False)
    for _ in range(5):
        fwd_bwd()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.calls):
        fwd_bwd()
    host = 1000 * (time.perf_counter() - t0) / a.calls
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(a.calls):
        fwd_bwd()
    torch.cuda.synchronize()
    prof.disable()
    row = {"gpu": torch.cuda.get_device_name(), "spec": spec.name, "B": a.B, "T": a.T, "width": a.width,
           "host_ms_per_call": round(host, 4), "own_time": table(prof, "tottime", 35, a.calls),
           "cumulative": table(prof, "cumtime", 50, a.calls)}
    print(json.dumps(row), flush=True)
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
