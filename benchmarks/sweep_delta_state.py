"""The chunked delta rule's sequential state passes (chunk_fwd_h, chunk_bwd_dh, delta variant) under each
(BV, warps, stages) of a grid: CUDA time per kernel from torch.profiler for one forward+backward of
chunk_delta_rule, each row appended to --out as it is measured.

    python benchmarks/sweep_delta_state.py --shape 8,1024,8,64 --n-h 2 --out FILE.jsonl
"""
from __future__ import annotations

import argparse
import itertools
import json
import os

import torch

from overhead import kernel_times     # benchmarks/ is this script's folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4,4096,16,128")
    ap.add_argument("--n-h", type=int, default=1)
    ap.add_argument("--bv", default="32,64")
    ap.add_argument("--warps", default="2,4,8")
    ap.add_argument("--stages", default="1,2,3,4")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from recdsl.backends.triton.delta_chunk import chunk_delta_rule
    B, T, H, D = map(int, a.shape.split(","))
    r = lambda *s: torch.randn(*s, device="cuda")
    kv = (a.n_h,) if a.n_h > 1 else ()
    q = r(B, T, H, D).bfloat16().requires_grad_(True)
    k = torch.nn.functional.normalize(r(B, T, H, *kv, D), dim=-1).bfloat16().requires_grad_(True)
    v = r(B, T, H, *kv, D).bfloat16().requires_grad_(True)
    beta = torch.rand(B, T, H, *kv, device="cuda").requires_grad_(True)
    ins = [q, k, v, beta]

    def fwd_bwd():
        o, _ = chunk_delta_rule(q, k, v, beta)
        torch.autograd.grad(o.float().sum(), ins)

    grid = itertools.product(*(map(int, x.split(",")) for x in (a.bv, a.warps, a.stages)))
    for bv, warps, stages in grid:
        os.environ["RECDSL_DELTA_BLOCKS"] = f"{bv},{warps},4,{stages}"
        try:
            times = kernel_times(fwd_bwd, iters=5)
            row = {n: round(times.get(n, float("nan")), 4) for n in ("chunk_fwd_h", "chunk_bwd_dh")}
        except Exception as e:   # a tile that does not fit
            row = {"error": f"{type(e).__name__}: {e}"[:200]}
        row = {"gpu": torch.cuda.get_device_name(), "shape": [B, T, H, D], "n_h": a.n_h, "BV": bv, "warps": warps,
               "stages": stages, **row}
        print(json.dumps(row), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
