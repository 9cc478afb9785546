"""The bare fp16x3 product of issue 5's reflection vectors (u = Wu @ h for 16384 tokens, K = 512, 2 x 512
outputs) from an iterate already in fp16 parts, with no bias, dot or Gram products: how much of
fp_reflection_products' time its epilogue takes, and whether one accumulator over both reflections' channel
blocks ([BM, 2 BC], one tl.dot a pass) beats the kernel's one accumulator per reflection ([BM, BC] each, as
backends/triton/fp_reflections.py has it), per tile config. Random values: it times, and checks only that the
layouts agree.

    python benchmarks/fp16x3_product_layouts.py --out layouts.jsonl     # a GPU
"""
from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from overhead import emit      # benchmarks/ is this script's folder


@triton.jit
def product(hi, lo, wh, wl, u, M, D: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
            JOINT: tl.constexpr):
    """u [M, 2 D] = the three fp16 products of hi, lo [M, D] (the iterate's parts) with wh, wl [2 D, D] (the
    weight's); a program takes BM tokens and BC channels of each of the two reflections."""
    i_c, i_m = tl.program_id(0), tl.program_id(1)
    p = i_m * BM + tl.arange(0, BM)
    m_t = p < M
    if JOINT:   # the weight rows of both reflections' channel blocks side by side
        j = tl.arange(0, 2 * BC)
        rows = (j // BC) * D + i_c * BC + (j % BC)
        acc = tl.zeros([BM, 2 * BC], dtype=tl.float32)
    else:
        o_c = i_c * BC + tl.arange(0, BC)
        acc0 = tl.zeros([BM, BC], dtype=tl.float32)
        acc1 = tl.zeros([BM, BC], dtype=tl.float32)
    for k0 in range(0, D, BK):
        o_k = k0 + tl.arange(0, BK)
        off = p.to(tl.int64)[:, None] * D + o_k[None, :]
        a_main = tl.load(hi + off, mask=m_t[:, None], other=0.0)
        a_rest = tl.load(lo + off, mask=m_t[:, None], other=0.0)
        a = (a_main.to(tl.float32) * 2048.0).to(tl.float16)
        if JOINT:
            kc = rows[None, :] * D + o_k[:, None]
            w = tl.load(wh + kc)
            acc = tl.dot(a_rest, w, acc)
            acc = tl.dot(a_main, tl.load(wl + kc), acc)
            acc = tl.dot(a, w, acc)
        else:
            kc = o_c[None, :] * D + o_k[:, None]
            w0 = tl.load(wh + kc)
            acc0 = tl.dot(a_rest, w0, acc0)
            acc0 = tl.dot(a_main, tl.load(wl + kc), acc0)
            acc0 = tl.dot(a, w0, acc0)
            w1 = tl.load(wh + kc + D * D)
            acc1 = tl.dot(a_rest, w1, acc1)
            acc1 = tl.dot(a_main, tl.load(wl + kc + D * D), acc1)
            acc1 = tl.dot(a, w1, acc1)
    if JOINT:
        tl.store(u + p.to(tl.int64)[:, None] * (2 * D) + rows[None, :], acc, mask=m_t[:, None])
    else:
        row = p.to(tl.int64)[:, None] * (2 * D) + o_c[None, :]
        tl.store(u + row, acc0, mask=m_t[:, None])
        tl.store(u + row + D, acc1, mask=m_t[:, None])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--M", type=int, default=16384)
    ap.add_argument("--D", type=int, default=512)
    ap.add_argument("--blocks", default="64,64,32,4,3;64,64,64,4,3;128,64,32,8,3;128,64,64,8,3;128,64,32,4,3;"
                                        "64,128,32,4,3;64,128,32,8,3;128,128,32,8,3;64,64,64,4,4",
                    help="BM,BC,BK,warps,stages tile configs, separated by ';'")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from triton.testing import do_bench
    M, D = args.M, args.D
    hi, lo = (torch.randn(M, D, device="cuda").half() for _ in range(2))
    wh, wl = (torch.randn(2 * D, D, device="cuda").half() for _ in range(2))
    u = torch.empty(M, 2 * D, device="cuda")
    first = None
    for joint in (False, True):
        for blocks in args.blocks.split(";"):
            BM, BC, BK, warps, stages = map(int, blocks.split(","))
            row = {"gpu": torch.cuda.get_device_name(), "M": M, "K": D, "N": 2 * D, "joint": int(joint),
                   "blocks": blocks}
            launch = lambda: product[(triton.cdiv(D, BC), triton.cdiv(M, BM))](  # noqa: E731
                hi, lo, wh, wl, u, M, D=D, BM=BM, BC=BC, BK=BK, JOINT=joint, num_warps=warps, num_stages=stages)
            try:
                launch()
                torch.cuda.synchronize()
                first = u.clone() if first is None else first
                row["match"] = bool(torch.allclose(u, first, rtol=1e-3, atol=1e-1))
                row["ms"] = round(do_bench(launch, warmup=5, rep=50, return_mode="median"), 4)
            except Exception as e:   # noqa: BLE001 (a config that does not fit is a row, not the end)
                row["error"] = f"{type(e).__name__}: {str(e)[:120]}"
            emit(row, args.out)


if __name__ == "__main__":
    main()
