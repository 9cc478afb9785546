"""Time one launch's operands of the authors' hidden-state dependence (benchmarks/specs/fp_rnn_mixer_hdep.rec,
issue 5's shape by default): fp_shifted.ShiftedIteration.at(prev), which evaluates u, alpha, the coefficients
and the dot products from an iterate, with fp_reflections' kernels under several tile configs
(RECDSL_FP_REFLECTION_BLOCKS) against torch's passes (RECDSL_FP_REFLECTIONS=torch), in fp32 (on FMA units, or
RECDSL_FP_REFLECTION_FP32=tf32x3, tf32x3-triton or fp16x3 for three tensor-core products), TF32 and bf16 (the
iterate in --parts bf16 parts); then the two kernels alone per tile config,
and alpha's narrow product per launch geometry (--narrow).

    python benchmarks/sweep_fp_reflections.py --out sweep.jsonl     # a GPU
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import recdsl
from recdsl.bench import elementwise_args
from overhead import emit, fixed_point_shape_args      # benchmarks/ is this script's folder

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fixed_point_shape_args(ap, iters=False)
    ap.add_argument("--blocks", default="64,64,32,4,3;64,64,32,4,2;64,64,16,4,4;128,64,32,8,3;128,64,32,4,3",
                    help="BM,BC,BK,warps,stages tile configs, separated by ';'")
    ap.add_argument("--precisions", default="fp32,fp32 tf32x3,fp32 fp16x3,fp32 tf32x3-triton,tf32,bf16",
                    help="of fp32, fp32 tf32x3, fp32 fp16x3, fp32 tf32x3-triton, tf32, bf16")
    ap.add_argument("--parts", default="3", help="for bf16: the iterate's bf16 parts (RECDSL_FP_REFLECTION_PARTS)")
    ap.add_argument("--narrow", default="64,64,4;32,64,4;32,128,4;128,64,8;16,128,2",
                    help="BT,BD,warps configs of fp_products.narrow_product (alpha's product), separated by ';'")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from triton.testing import do_bench

    from recdsl.backends.triton.fixed_point import shifted_operands
    from recdsl.backends.triton.fp_fused import match
    spec = recdsl.load(ROOT / "benchmarks" / "specs" / "fp_rnn_mixer_hdep.rec", D=args.D, r=args.r)
    pattern = match(spec.ir)
    cases = [("fp32", torch.float32, False, "ieee", 1), ("fp32 tf32x3", torch.float32, False, "tf32x3", 1),
             ("fp32 fp16x3", torch.float32, False, "fp16x3", 1),
             ("fp32 tf32x3-triton", torch.float32, False, "tf32x3-triton", 1), ("tf32", torch.float32, True, "ieee", 1)]
    cases += [("bf16", torch.bfloat16, False, "ieee", int(n)) for n in args.parts.split(",")]
    for label, dtype, tf32, fp32, parts in cases:
        if label not in args.precisions.split(","):
            continue
        label = label if parts == 1 else f"{label} x{parts}"
        os.environ["RECDSL_FP_REFLECTION_PARTS"] = str(parts)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        os.environ["RECDSL_FP_REFLECTION_FP32"] = fp32
        os.environ.pop("RECDSL_FP_REFLECTION_BLOCKS", None)
        a = {k: v.detach() for k, v in elementwise_args(spec, args.B, args.T, "cuda", dtype).items()}
        for w in ("Wa", "Wu"):
            a[w] = a[w] * args.D ** -0.5
        prev = torch.randn(args.B, args.T, 1, args.D, device="cuda")
        s = torch.rand(args.B * args.T, args.r, device="cuda")
        shape = {"gpu": torch.cuda.get_device_name(), "B": args.B, "T": args.T, "D": args.D, "r": args.r,
                 "precision": label}
        # one launch's operands (host work included: eager calls), torch's passes against the kernels
        for choice in ("torch", "triton"):
            os.environ["RECDSL_FP_REFLECTIONS"] = choice
            with torch.no_grad():
                it = shifted_operands(spec, pattern, a, {}, args.B, args.T, None, None)
                emit({**shape, "what": "at(prev)", "path": choice,
                      "ms": round(do_bench(lambda: it.at(prev), warmup=5, rep=100, return_mode="median"), 4)}, args.out)
        # the two kernels alone, per tile config
        for blocks in args.blocks.split(";"):
            os.environ["RECDSL_FP_REFLECTION_BLOCKS"] = blocks
            row = {**shape, "what": "kernels", "blocks": blocks}
            try:
                with torch.no_grad():
                    it = shifted_operands(spec, pattern, a, {}, args.B, args.T, None, None)
                    row["ms"] = round(do_bench(lambda: it.reflections(prev, s), warmup=5, rep=100,
                                               return_mode="median"), 4)
            except Exception as e:   # noqa: BLE001 (a config that does not build is a row, not the end)
                row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            emit(row, args.out)
    os.environ.pop("RECDSL_FP_REFLECTION_BLOCKS", None)
    os.environ.pop("RECDSL_FP_REFLECTION_PARTS", None)
    # alpha's narrow product of the shifted iterate (fp_products.narrow_product), per launch geometry
    a = {k: v.detach() for k, v in elementwise_args(spec, args.B, args.T, "cuda", torch.float32).items()}
    prev = torch.randn(args.B, args.T, 1, args.D, device="cuda")
    with torch.no_grad():
        sums = shifted_operands(spec, pattern, a, {}, args.B, args.T, None, None).products
    for k in (k for k, narrow in enumerate(sums.narrow) if narrow):
        p = sums.products[k]
        for blocks in args.narrow.split(";"):
            os.environ["RECDSL_FP_NARROW_BLOCKS"] = blocks
            row = {"gpu": torch.cuda.get_device_name(), "B": args.B, "T": args.T, "D": args.D, "r": args.r,
                   "what": "narrow product", "width": p.width, "blocks": blocks}
            row["ms"] = round(do_bench(lambda: sums._narrow(prev, sums.mats[k], sums.biases[k], p.addend is not None),
                                       warmup=5, rep=100, return_mode="median"), 4)
            emit(row, args.out)
    os.environ.pop("RECDSL_FP_NARROW_BLOCKS", None)


if __name__ == "__main__":
    main()
