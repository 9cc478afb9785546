"""The chunked delta rule's sequential state passes (chunk_fwd_h, chunk_bwd_dh, delta variant) under each
(BV, warps, stages) of a grid: CUDA time per kernel from torch.profiler for one forward+backward of
chunk_delta_rule. Each configuration runs in its own process (one that faults cannot take the others
down) and its row is appended to --out as it is measured. --check then compares the fastest
configuration's fp32 outputs and gradients with the default configuration's (which the GPU tests check
against the reference).

    python benchmarks/sweep_delta_state.py --shape 4,4096,16,128 --warps 4,8 --check --out FILE.jsonl
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys

import torch

from overhead import kernel_times     # benchmarks/ is this script's folder


def _inputs(B, T, H, D, n_h, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=gen)
    kv = (n_h,) if n_h > 1 else ()
    q = r(B, T, H, D).to(dtype).requires_grad_(True)
    k = torch.nn.functional.normalize(r(B, T, H, *kv, D), dim=-1).to(dtype).requires_grad_(True)
    v = r(B, T, H, *kv, D).to(dtype).requires_grad_(True)
    beta = torch.rand(B, T, H, *kv, device="cuda", generator=gen).requires_grad_(True)
    return [q, k, v, beta]


def _time_one(shape, n_h) -> dict:
    from recdsl.backends.triton.delta_chunk import chunk_delta_rule
    ins = _inputs(*shape, n_h, torch.bfloat16)

    def fwd_bwd():
        o, _ = chunk_delta_rule(*ins)
        torch.autograd.grad(o.float().sum(), ins)
    times = kernel_times(fwd_bwd, iters=5)
    return {n: round(times.get(n, float("nan")), 4) for n in ("chunk_fwd_h", "chunk_bwd_dh")}


def _outputs(shape, n_h) -> list[torch.Tensor]:
    """fp32 output and gradients of one forward+backward (for --check)."""
    from recdsl.backends.triton.delta_chunk import chunk_delta_rule
    ins = _inputs(*shape, n_h, torch.float32, seed=1)
    o, _ = chunk_delta_rule(*ins)
    do = torch.randn(o.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(2))
    return [o.detach()] + list(torch.autograd.grad((o * do).sum(), ins))


def _child(args: list[str], env: dict) -> dict:
    cmd = [sys.executable, __file__, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1][:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4,4096,16,128")
    ap.add_argument("--n-h", type=int, default=1)
    ap.add_argument("--bv", default="32,64")
    ap.add_argument("--warps", default="2,4,8")
    ap.add_argument("--stages", default="1,2,3,4")
    ap.add_argument("--check", action="store_true", help="compare the fastest configuration with the default")
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)        # child: time this configuration
    ap.add_argument("--dump", default=None, help=argparse.SUPPRESS)       # child: save fp32 outputs here
    a = ap.parse_args()
    shape = tuple(map(int, a.shape.split(",")))
    if a.one:
        print(json.dumps(_time_one(shape, a.n_h)))
        return
    if a.dump:
        torch.save([t.cpu() for t in _outputs(shape, a.n_h)], a.dump)
        print(json.dumps({"saved": a.dump}))
        return
    rows = []
    for bv, warps, stages in itertools.product(*(map(int, x.split(",")) for x in (a.bv, a.warps, a.stages))):
        blocks = f"{bv},{warps},4,{stages}"
        row = {"gpu": torch.cuda.get_device_name(), "shape": list(shape), "n_h": a.n_h, "BV": bv, "warps": warps,
               "stages": stages, **_child(["--shape", a.shape, "--n-h", str(a.n_h), "--one", blocks],
                                          {"RECDSL_DELTA_BLOCKS": blocks})}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    if a.check:
        ok = [r for r in rows if "error" not in r]
        best = min(ok, key=lambda r: r["chunk_fwd_h"] + r["chunk_bwd_dh"])
        blocks = f"{best['BV']},{best['warps']},4,{best['stages']}"
        small = "1,1024,4," + a.shape.split(",")[3]
        got = _child(["--shape", small, "--n-h", str(a.n_h), "--dump", "/tmp/sweep_best.pt"],
                     {"RECDSL_DELTA_BLOCKS": blocks})
        ref = _child(["--shape", small, "--n-h", str(a.n_h), "--dump", "/tmp/sweep_default.pt"], {})
        row = {"check": blocks, "against": "default blocks", "shape": small, "dtype": "float32"}
        if "error" in got or "error" in ref:
            row["error"] = got.get("error") or ref.get("error")
        else:
            x, y = torch.load("/tmp/sweep_best.pt"), torch.load("/tmp/sweep_default.pt")
            row["rel"] = [float((p - q).norm() / q.norm()) for p, q in zip(x, y)]
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
