"""Where the chunked delta rule's time goes: CUDA time per kernel (torch.profiler) for one forward and
one forward+backward of chunk_delta_rule, beside fla's chunk_delta_rule on the same tensors.

    python benchmarks/profile_delta.py [--shape 4,4096,16,128] [--gated] [--n-h 1] [--out FILE.jsonl]
"""
from __future__ import annotations

import argparse
import json

import torch

from overhead import kernel_times     # benchmarks/ is this script's folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4,4096,16,128")
    ap.add_argument("--gated", action="store_true")
    ap.add_argument("--n-h", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from recdsl.backends.triton.delta_chunk import chunk_delta_rule
    B, T, H, D = map(int, a.shape.split(","))
    r = lambda *s: torch.randn(*s, device="cuda")
    kv = (a.n_h,) if a.n_h > 1 else ()
    q = r(B, T, H, D).bfloat16().requires_grad_(True)
    k = torch.nn.functional.normalize(r(B, T, H, *kv, D), dim=-1).bfloat16().requires_grad_(True)
    v = r(B, T, H, *kv, D).bfloat16().requires_grad_(True)
    beta = torch.rand(B, T, H, *kv, device="cuda").requires_grad_(True)
    g = torch.nn.functional.logsigmoid(r(B, T, H)).requires_grad_(True) if a.gated else None
    ins = [x for x in (q, k, v, beta, g) if x is not None]

    def fwd():
        with torch.no_grad():
            chunk_delta_rule(q, k, v, beta, g)

    def fwd_bwd():
        o, _ = chunk_delta_rule(q, k, v, beta, g)
        torch.autograd.grad(o.float().sum(), ins)

    rows = []
    for mode, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        times = kernel_times(fn, iters=5)
        row = {"shape": [B, T, H, D], "gated": a.gated, "n_h": a.n_h, "mode": mode,
               "total_ms": round(sum(times.values()), 4), "kernels": {k: round(v, 4) for k, v in times.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.out:
        with open(a.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
