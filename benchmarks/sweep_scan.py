"""Sweep the element-wise scan's blocks (BT, BD, num_warps) at one shape; prints a table and JSON.

    python benchmarks/sweep_scan.py --batch 4 --length 4096 --width 2048
"""
import argparse
import json

import torch
from triton.testing import do_bench

import recdsl
from recdsl.backends.triton.launch import scan_op


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="examples/hgrn.rec")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    spec = recdsl.load(a.spec, D=a.width)
    B, T, C = a.batch, a.length, a.width
    ins = [torch.randn(B, T, C, device="cuda", dtype=torch.bfloat16) for x in spec.args if x.kind == "input"]
    ins[-1] = torch.nn.functional.logsigmoid(ins[-1].float()).bfloat16() if spec.name == "hgrn" else ins[-1]
    ws = [torch.randn(C, device="cuda") for x in spec.args if x.kind == "weight"]
    rows = []
    for BT in (32, 64, 128, 256):
        for BD in (8, 16, 32):
            for warps in (2, 4, 8):
                op = scan_op(spec, BT, BD, warps)
                fwd = lambda: op(ins, ws, [], None, None, False)
                try:
                    fwd()
                    ms_f = do_bench(fwd, warmup=25, rep=100, return_mode="median")
                    xs = [x.detach().requires_grad_(True) for x in ins]
                    def fb():
                        out, _, _ = op(xs, ws, [], None, None, False)
                        out.backward(torch.ones_like(out))
                    fb()
                    ms_b = do_bench(fb, warmup=25, rep=100, return_mode="median")
                except Exception as e:  # a config the compiler rejects is reported, not fatal
                    print(f"BT={BT} BD={BD} warps={warps}: {type(e).__name__}: {str(e)[:120]}")
                    continue
                rows.append({"BT": BT, "BD": BD, "warps": warps, "fwd_ms": ms_f, "fwdbwd_ms": ms_b})
                print(f"BT={BT:4d} BD={BD:3d} warps={warps}: fwd {ms_f:.4f} ms  fwd+bwd {ms_b:.4f} ms", flush=True)
    best_f = min(rows, key=lambda r: r["fwd_ms"])
    best_b = min(rows, key=lambda r: r["fwdbwd_ms"])
    print("best fwd", best_f, "\nbest fwd+bwd", best_b)
    if a.out:
        with open(a.out, "w") as f:
            for r in rows:
                f.write(json.dumps({"gpu": torch.cuda.get_device_name(), "spec": spec.name, "B": B, "T": T, "C": C, **r}) + "\n")


if __name__ == "__main__":
    main()
