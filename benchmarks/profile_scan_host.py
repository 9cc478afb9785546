"""Where the host's time goes in an element-wise scan's forward+backward (hgrn by default, bf16): cProfile
of many calls with the backward run on the calling thread (torch.autograd.set_multithreading_enabled(False)
lets cProfile see the Python inside it), top functions by their own and by cumulative time per call.

    python benchmarks/profile_scan_host.py --spec examples/hgrn.rec --out host.jsonl    # a GPU
"""
import argparse
from pathlib import Path

import torch

import recdsl
from recdsl.bench import elementwise_args
from overhead import cprofile_table, cprofiled, emit, host_ms      # benchmarks/ is this script's folder

ROOT = Path(__file__).resolve().parents[1]


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
    host = host_ms(fwd_bwd, iters=a.calls)
    prof = cprofiled(fwd_bwd, a.calls)
    row = {"gpu": torch.cuda.get_device_name(), "spec": spec.name, "B": a.B, "T": a.T, "width": a.width,
           "host_ms_per_call": round(host, 4),
           "own_time": cprofile_table(prof, "tottime", 35, a.calls, str(ROOT)),
           "cumulative": cprofile_table(prof, "cumtime", 50, a.calls, str(ROOT))}
    emit(row, a.out)


if __name__ == "__main__":
    main()
