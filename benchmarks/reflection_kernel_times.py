"""Per-kernel device times of one launch of the reflection kernels (fp_reflection_products,
fp_reflection_finish; fp16x3's row peaks of the iterate are taken by torch here, where no fused launch left
them) at issue 5's shape (benchmarks/specs/fp_rnn_mixer_hdep.rec, B=8, T=2048, D=512, r=2), per fp32
precision, tile config and, optionally, the product kernel's register cap (RECDSL_FP_REFLECTION_MAXNREG, 0 for
none), from torch.profiler over 20 launches.

    python benchmarks/reflection_kernel_times.py --out times.jsonl     # a GPU
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import recdsl
from recdsl.bench import elementwise_args
from overhead import emit      # benchmarks/ is this script's folder

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="tf32x3:64,64,32,4,3;fp16x3:64,64,32,4,3;fp16x3:128,64,32,8,3;"
                                       "fp16x3:64,64,32,4,2;fp16x3:64,64,32,4,4",
                    help="precision:BM,BC,BK,warps,stages[:maxnreg] cases, separated by ';'")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from recdsl.backends.triton.fixed_point import shifted_operands
    from recdsl.backends.triton.fp_fused import match
    B, T, D, r, calls = 8, 2048, 512, 2, 20
    spec = recdsl.load(ROOT / "benchmarks" / "specs" / "fp_rnn_mixer_hdep.rec", D=D, r=r)
    pattern = match(spec.ir)
    for case in args.cases.split(";"):
        prec, blocks, *cap = case.split(":")
        os.environ["RECDSL_FP_REFLECTION_FP32"] = prec
        os.environ["RECDSL_FP_REFLECTION_BLOCKS"] = blocks
        if cap:
            os.environ["RECDSL_FP_REFLECTION_MAXNREG"] = cap[0]
        else:
            os.environ.pop("RECDSL_FP_REFLECTION_MAXNREG", None)
        a = {k: v.detach() for k, v in elementwise_args(spec, B, T, "cuda", torch.float32).items()}
        for w in ("Wa", "Wu"):
            a[w] = a[w] * D ** -0.5
        prev = torch.randn(B, T, 1, D, device="cuda")
        s = torch.rand(B * T, r, device="cuda")
        with torch.no_grad():
            it = shifted_operands(spec, pattern, a, {}, B, T, None, None)
            for _ in range(5):
                it.reflections(prev, s)
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(calls):
                    it.reflections(prev, s)
                torch.cuda.synchronize()
        times = {e.key[:60]: round(e.device_time_total / calls / 1000, 4) for e in prof.key_averages()
                 if e.device_time_total}
        emit({"gpu": torch.cuda.get_device_name(), "B": B, "T": T, "D": D, "r": r, "precision": prec,
              "blocks": blocks, "maxnreg": cap[0] if cap else "default", "kernels_ms": times}, args.out)
    os.environ.pop("RECDSL_FP_REFLECTION_BLOCKS", None)
    os.environ.pop("RECDSL_FP_REFLECTION_MAXNREG", None)


if __name__ == "__main__":
    main()
