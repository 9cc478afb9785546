"""The weight products of a fixed-point training call's tail (backends/triton/gemm.py) against cuBLAS at issue 5's
shape: u = h Wu^T with h [B * T, D] and Wu [r * D, D], the iterate's gradient g Wu, the weight gradient g^T h
(which stays on cuBLAS, from bf16 operands for half inputs). Rows per tile config (BM, BN, BK, warps, stages)
and pass count, with the relative error against fp64.

    python benchmarks/tail_weight_products.py --out tail.jsonl       # a GPU
"""
from __future__ import annotations

import argparse

import torch
from triton.testing import do_bench

from overhead import emit      # benchmarks/ is this script's folder

from recdsl.backends.triton import gemm

TILES = ((128, 128, 16, 8, 4), (128, 128, 32, 8, 3), (128, 256, 16, 8, 4), (128, 256, 32, 8, 3), (64, 64, 32, 4, 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8 * 2048)
    ap.add_argument("--D", type=int, default=512)
    ap.add_argument("--r", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    M, K, N = args.tokens, args.D, args.r * args.D
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(M, K, device="cuda", generator=g)
    w = torch.randn(N, K, device="cuda", generator=g) * K ** -0.5
    w_half = w.bfloat16().float()
    du = torch.randn(M, N, device="cuda", generator=g)
    shape = {"gpu": torch.cuda.get_device_name(), "M": M, "K": K, "N": N}

    def row(what, fn, ref, **extra):
        ms = do_bench(fn, warmup=10, rep=60, return_mode="median")
        err = ((fn().double() - ref).norm() / ref.norm()).item()
        emit({**shape, "what": what, **extra, "ms": round(ms, 4), "rel_err": float(f"{err:.3g}")}, args.out)

    forward, forward_half = h.double() @ w.double().t(), h.double() @ w_half.double().t()
    grad_h, grad_w = du.double() @ w.double(), du.double().t() @ h.double()
    chosen = gemm.blocks
    for tiles in TILES:
        gemm.blocks = lambda tiles=tiles: tiles
        label = ",".join(map(str, tiles))
        row("forward", lambda: gemm.mm(h, w.t()), forward, passes=3, blocks=label)
        row("forward", lambda: gemm.mm(h, w_half.t(), b_exact=True), forward_half, passes=2, blocks=label)
        row("grad h", lambda: gemm.mm(du, w), grad_h, passes=3, blocks=label)
    gemm.blocks = chosen
    row("forward", lambda: h @ w.t(), forward, passes="cublas fp32")
    row("grad h", lambda: du @ w, grad_h, passes="cublas fp32")
    row("grad w", lambda: du.t() @ h, grad_w, passes="cublas fp32")
    # half inputs (WeightProduct.backward): the operands cast to bf16, the product in fp32
    row("grad w", lambda: (du.bfloat16().t() @ h.bfloat16()).float(), grad_w, passes="cublas bf16 operands")
    torch.backends.cuda.matmul.allow_tf32 = True
    row("forward", lambda: gemm.mm(h, w.t()), forward, passes=1, blocks=",".join(map(str, chosen())))
    row("forward", lambda: h @ w.t(), forward, passes="cublas tf32")
    row("grad w", lambda: du.t() @ h, grad_w, passes="cublas tf32")


if __name__ == "__main__":
    main()
