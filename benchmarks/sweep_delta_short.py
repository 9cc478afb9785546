"""Where the planner switches the delta rule from the fused recurrent kernel to the chunked WY kernels for
calls without a gradient (recdsl.planner.RECURRENT_MAX_T): both forwards on the same tensors, bf16, over
call lengths T, n_h reflections per token and batch sizes, in alternating rounds (bench.side_by_side).

    python benchmarks/sweep_delta_short.py --out benchmarks/results/DATE_h100_delta_short.jsonl
"""
import argparse
import json
import time

import torch

from recdsl.backends.triton.delta import delta_recurrent
from recdsl.backends.triton.delta_chunk import chunk_delta_rule
from recdsl.bench import median_ms, side_by_side


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="1,16,32,64,128,256,512")
    ap.add_argument("--n-h", default="1,2,3")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--budget", type=float, default=240, help="seconds; later cases are skipped")
    a = ap.parse_args()
    H, D, t0 = a.heads, a.dim, time.time()
    out = open(a.out, "a")
    for n_h in map(int, a.n_h.split(",")):
        for B in map(int, a.batch.split(",")):
            for T in map(int, a.lengths.split(",")):
                if time.time() - t0 > a.budget:
                    print(f"budget spent: skipping n_h={n_h} B={B} T={T} onwards", flush=True)
                    return
                torch.manual_seed(0)
                unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, device="cuda"), dim=-1).bfloat16()
                q, k = unit(B, T, H, D), unit(B, T, H, n_h, D)
                v = torch.randn(B, T, H, n_h, D, device="cuda").bfloat16()
                beta = torch.rand(B, T, H, n_h, device="cuda").bfloat16()
                with torch.no_grad():
                    runs = {"recurrent": lambda: delta_recurrent(q, k, v, beta, None, D ** -0.5, None, False, None,
                                                                 "none"),
                            "chunk": lambda: chunk_delta_rule(q, k, v, beta, None, D ** -0.5)}
                    diff = float((runs["recurrent"]()[0].float() - runs["chunk"]()[0].float()).abs().max())
                    times = side_by_side(runs)
                row = {"gpu": torch.cuda.get_device_name(), "B": B, "T": T, "H": H, "D": D, "n_h": n_h,
                       **{f"{n}_ms": round(median_ms(t), 5) for n, t in times.items()}, "max_abs_diff": diff}
                row["faster"] = min(("recurrent", "chunk"), key=lambda n: row[f"{n}_ms"])
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")
                out.flush()


if __name__ == "__main__":
    main()
