"""Forward+backward of an element-wise scan (hgrn, bf16) with PyTorch's autograd engine running the
backward on its device thread (the default) and on the calling thread: wall time (do_bench) and host
time per call, for recdsl and fla's chunk_hgrn, JSON lines.

    python benchmarks/autograd_thread.py --out thread.jsonl     # a GPU
"""
import argparse
from pathlib import Path

import torch
from triton.testing import do_bench

import recdsl
from recdsl.bench import elementwise_args
from overhead import emit, host_ms      # benchmarks/ is this script's folder

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    spec = recdsl.load(ROOT / "examples" / "hgrn.rec", D=2048)
    args = elementwise_args(spec, 4, 4096, "cuda", torch.bfloat16)
    tensors = list(args.values())
    do = torch.randn(4, 4096, 2048, device="cuda", dtype=torch.bfloat16)
    runs = {"recdsl": lambda: spec.op(**args, backend="triton")}
    try:
        from fla.ops.hgrn import chunk_hgrn
        runs["fla chunk_hgrn"] = lambda: chunk_hgrn(args["x"], args["g"])
    except ImportError:
        pass
    for threads in (True, False):
        torch.autograd.set_multithreading_enabled(threads)
        for name, run in runs.items():
            def fwd_bwd():
                for t in tensors:
                    t.grad = None
                run()[0].backward(do)
            for _ in range(5):
                fwd_bwd()
            host = host_ms(fwd_bwd, iters=100)
            wall = do_bench(fwd_bwd, warmup=25, rep=200, return_mode="median")
            row = {"gpu": torch.cuda.get_device_name(), "contestant": name, "autograd_threads": threads,
                   "wall_ms": round(wall, 4), "host_ms": round(host, 4)}
            emit(row, a.out)


if __name__ == "__main__":
    main()
