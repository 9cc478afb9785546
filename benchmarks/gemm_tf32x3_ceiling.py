"""What a plain Triton GEMM reaches at the shape of the reflection products (fp_reflections.py) at issue 5's
shape: M = B * T = 16384 tokens, K = D = 512, N = r * D = 1024. It has no shifted read, no bias and no
epilogue of shares, so the gap to `sweep_fp_reflections.py`'s kernels is what those cost. Rows, per tile config
(BM, BN, BK, warps, stages), with the error against fp64 (max and relative rms):

- split 1: 3xTF32 as fp_reflections does it (the iterate split in the kernel, the weight split once);
- split 2: one TF32 product of the TF32 parts, the two corrections in bf16 (half the tensor-core cycles of
  a TF32 one each): a cheaper form, if tensor-core cycles were what bounds the kernel;
- split 0: one TF32 product (TF32's accuracy);
- tma: split 1 with both operands read through tensor descriptors (Hopper's tensor memory accelerator), the
  rows of `a` one back as fp_reflections reads the iterate (row -1 reads zeros);
- torch: cuBLAS in fp32 (FMA units) and in TF32.

    python benchmarks/gemm_tf32x3_ceiling.py --out ceiling.jsonl       # a GPU
"""
from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from overhead import emit      # benchmarks/ is this script's folder


@triton.jit
def tile(M, N: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, GROUP: tl.constexpr):
    """(row block, column block) of this program: GROUP row blocks at a time share the column blocks."""
    pid = tl.program_id(0)
    width = GROUP * (N // BN)
    first = (pid // width) * GROUP
    size = min(tl.cdiv(M, BM) - first, GROUP)
    return first + (pid % width) % size, (pid % width) // size


@triton.jit
def gemm(a, wh, wl, wh_bf16, wl_bf16, c, M, N: tl.constexpr, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
         BK: tl.constexpr, SPLIT: tl.constexpr, GROUP: tl.constexpr, STAGES: tl.constexpr):
    """c [M, N] = a [M, K] @ w^T, w [N, K] given as its TF32 part wh and remainder wl (and both in bf16);
    programs in groups of GROUP row blocks that share the weight's column blocks."""
    pm, pn = tile(M, N, BM, BN, GROUP)
    om = pm * BM + tl.arange(0, BM)
    on = pn * BN + tl.arange(0, BN)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in tl.range(0, K, BK, num_stages=STAGES):
        ok = k0 + tl.arange(0, BK)
        x = tl.load(a + om.to(tl.int64)[:, None] * K + ok[None, :])
        nk = on[None, :] * K + ok[:, None]     # K-major weight tiles
        w = tl.load(wh + nk)
        if SPLIT > 0:   # the TF32 part of the row (low mantissa bits cut) and its remainder
            x_tf32 = (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
            x_rest = x - x_tf32
            if SPLIT == 2:
                acc = tl.dot(x_rest.to(tl.bfloat16), tl.load(wh_bf16 + nk), acc)
                acc = tl.dot(x_tf32.to(tl.bfloat16), tl.load(wl_bf16 + nk), acc)
            else:
                acc = tl.dot(x_rest, w, acc, input_precision="tf32")
                acc = tl.dot(x_tf32, tl.load(wl + nk), acc, input_precision="tf32")
            x = x_tf32
        acc = tl.dot(x, w, acc, input_precision="tf32")
    tl.store(c + om.to(tl.int64)[:, None] * N + on[None, :], acc)


@triton.jit
def gemm_tma(a_desc, wh_desc, wl_desc, c, M, N: tl.constexpr, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
             BK: tl.constexpr, GROUP: tl.constexpr, STAGES: tl.constexpr):
    """gemm's split 1 with a [M, K] read one row back (c row m = a row m - 1 @ w^T) through tensor descriptors
    (blocks [BM, BK] and [BN, BK])."""
    pm, pn = tile(M, N, BM, BN, GROUP)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in tl.range(0, K, BK, num_stages=STAGES):
        x = a_desc.load([pm * BM - 1, k0])
        w = wh_desc.load([pn * BN, k0]).T
        x_tf32 = (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
        acc = tl.dot(x - x_tf32, w, acc, input_precision="tf32")
        acc = tl.dot(x_tf32, wl_desc.load([pn * BN, k0]).T, acc, input_precision="tf32")
        acc = tl.dot(x_tf32, w, acc, input_precision="tf32")
    om = pm * BM + tl.arange(0, BM)
    on = pn * BN + tl.arange(0, BN)
    tl.store(c + om.to(tl.int64)[:, None] * N + on[None, :], acc)


def errors(c: torch.Tensor, ref: torch.Tensor) -> dict:
    e = c.double() - ref
    return {"err": e.abs().max().item(), "rms": (e.norm() / ref.norm()).item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--M", type=int, default=16384)
    ap.add_argument("--K", type=int, default=512)
    ap.add_argument("--N", type=int, default=1024)
    ap.add_argument("--blocks", default="64,128,32,4,3;128,128,32,8,3;128,256,32,8,3;128,128,16,8,4;256,128,32,8,3",
                    help="BM,BN,BK,warps,stages tile configs, separated by ';'")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from triton.testing import do_bench
    M, K, N = args.M, args.K, args.N
    a = torch.randn(M, K, device="cuda")
    w = torch.randn(N, K, device="cuda") * K ** -0.5
    wh = (w.view(torch.int32) & -8192).view(torch.float32)
    wl = w - wh
    ref = a.double() @ w.double().t()
    shape = {"gpu": torch.cuda.get_device_name(), "M": M, "K": K, "N": N}
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        ms = do_bench(lambda: a @ w.t(), warmup=10, rep=200, return_mode="median")
        emit({**shape, "what": "torch", "tf32": tf32, "ms": round(ms, 4), **errors(a @ w.t(), ref)}, args.out)
    torch.backends.cuda.matmul.allow_tf32 = False
    c = torch.empty(M, N, device="cuda")
    wh_bf16, wl_bf16 = wh.bfloat16(), wl.bfloat16()
    for split in (1, 2, 0):
        for blocks in args.blocks.split(";"):
            BM, BN, BK, warps, stages = map(int, blocks.split(","))
            row = {**shape, "what": "triton", "split": split, "blocks": blocks}
            try:
                def run():
                    return gemm[(triton.cdiv(M, BM) * (N // BN),)](a, wh, wl, wh_bf16, wl_bf16, c, M, N, K, BM, BN,
                                                                   BK, split, 8, stages, num_warps=warps)
                row["spills"] = run().n_spills
                row.update(errors(c, ref))
                row["ms"] = round(do_bench(run, warmup=10, rep=200, return_mode="median"), 4)
            except Exception as e:   # noqa: BLE001 (a config that does not build is a row, not the end)
                row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            emit(row, args.out)
    from triton.tools.tensor_descriptor import TensorDescriptor
    shifted = torch.cat([a.new_zeros(1, K), a[:-1]]).double() @ w.double().t()
    for blocks in args.blocks.split(";"):
        BM, BN, BK, warps, stages = map(int, blocks.split(","))
        row = {**shape, "what": "triton tma", "split": 1, "blocks": blocks}
        try:
            descs = (TensorDescriptor.from_tensor(a, [BM, BK]), TensorDescriptor.from_tensor(wh, [BN, BK]),
                     TensorDescriptor.from_tensor(wl, [BN, BK]))

            def run():
                return gemm_tma[(triton.cdiv(M, BM) * (N // BN),)](*descs, c, M, N, K, BM, BN, BK, 8, stages,
                                                                   num_warps=warps)
            row["spills"] = run().n_spills
            row.update(errors(c, shifted))
            row["ms"] = round(do_bench(run, warmup=10, rep=200, return_mode="median"), 4)
        except Exception as e:   # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
        emit(row, args.out)


if __name__ == "__main__":
    main()
