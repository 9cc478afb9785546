"""Ahead-of-time compilation of generated kernels for a GPU target, without a GPU.

Catches what the interpreter accepts but the compiler rejects. Run it in a process where
TRITON_INTERPRET is unset (the interpreter replaces @triton.jit functions):

    python -m recdsl.backends.triton.aot examples/*.rec

Element-wise scans build their forward and backward; fixed points of the Fixed-Point RNN form their
fused iteration (fp_fused.py).
"""
from __future__ import annotations

import sys
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from .ints import next_power_of_2

SCAN_FLAGS = {
    "scan_fwd": dict(IS_VARLEN=False, USE_H0=True, STORE_HT=True, STORE_HC=True),
    "scan_bwd": dict(IS_VARLEN=False, USE_H0=True, USE_DHT=True),
    "scan_fwd_tiles": dict(IS_VARLEN=False, USE_H0=True, STORE_HT=True, STORE_HC=True),
    "scan_bwd_tiles": dict(IS_VARLEN=False, USE_H0=True, USE_DHT=True),
}


def signature(fn, constexprs: dict, data: str = "bf16") -> dict:
    """Argument types by recdsl's naming convention: in_*/out/d_* hold data, cu_seqlens and
    chunk_offsets and chunk_seq int32, the look-back's words int64 and its marks int32, sizes int32,
    opt_* fp32 scalars, every other pointer fp32."""
    sig = {}
    for n in fn.arg_names:
        if n in constexprs:
            sig[n] = "constexpr"
        elif n in ("T", "NTOK", "H", "D", "N", "NC"):
            sig[n] = "i32"
        elif n.startswith("opt_"):
            sig[n] = "fp32"
        elif n in ("cu_seqlens", "chunk_offsets", "chunk_seq"):
            sig[n] = "*i32"
        elif n == "words":
            sig[n] = "*i64"
        elif n in ("stale", "mark"):
            sig[n] = "i32"
        elif n.startswith(("in_", "d_")) or n == "out":
            sig[n] = f"*{data}"
        else:
            sig[n] = "*fp32"
    return sig


def aligned_pointers(fn, sig: dict, also: tuple = ()) -> dict:
    """The attributes the JIT gives 16-byte aligned tensors: tt.divisibility 16 on each pointer argument of
    `sig` and on the integer arguments named in `also` (the aot_jobs' fifth field)."""
    return {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names) if sig[a].startswith("*") or a in also}


def compile_scan(spec, capabilities=(80, 90)) -> list[tuple[str, int, int, float]]:
    """Compile the spec's scan kernels; returns (kernel, capability, cubin bytes, seconds) per build."""
    from .cache import load_module
    from recdsl.planner import _scan_plan

    from .launch import kernel_key, scan_geometry
    from .scan import generate
    plan = _scan_plan(spec, None)   # the blocks and backward form a call at full width uses
    src = generate(spec.ir, spec.args, plan.scan_backward)
    mod = load_module(kernel_key(src), src)
    blocks = dict(BT=plan.block_t, BD=plan.block_d, BN=next_power_of_2(scan_geometry(spec)[2]))
    out = []
    for name, flags in SCAN_FLAGS.items():
        warps = (plan.bwd_warps or plan.num_warps) if "bwd" in name else plan.num_warps
        constexprs = {**blocks, **flags}
        fn = getattr(mod, name)
        for cc in capabilities:
            t = time.perf_counter()
            k = triton.compile(ASTSource(fn, signature(fn, constexprs), constexprs), target=GPUTarget("cuda", cc, 32),
                               options=dict(num_warps=warps))
            out.append((name, cc, len(k.asm["cubin"]), time.perf_counter() - t))
    return out


def compile_dplr(spec, capabilities=(80, 90)) -> list[tuple[str, int, int, float]]:
    """Compile the fused recurrent DPLR forward and backward at the spec's K and V (bf16 data)."""
    from .dplr import aot_jobs
    K, V = spec.ir.state[1]
    out = []
    for name, fn, sig, const, attrs, options in aot_jobs(K, V, "bf16"):
        for cc in capabilities:
            t = time.perf_counter()
            k = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", cc, 32), options=options)
            out.append((name, cc, len(k.asm["cubin"]), time.perf_counter() - t))
    return out


def compile_fp_fused(spec, capabilities=(80, 90)) -> list[tuple[str, int, int, float]]:
    """Compile a fixed-point spec's fused iteration (fp_fused.py); as compile_scan."""
    from .fp_fused import aot_jobs_for
    out = []
    for name, fn, sig, const, attrs, opts in aot_jobs_for(spec):
        for cc in capabilities:
            t = time.perf_counter()
            k = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", cc, 32), options=opts)
            out.append((name, cc, len(k.asm["cubin"]), time.perf_counter() - t))
    return out


def main(argv=None) -> int:
    import recdsl
    from recdsl.planner import triton_route
    from .fp_fused import match
    from .scan import eligible
    for path in (argv or sys.argv[1:]):
        spec = recdsl.load(path)
        if triton_route(spec)[0] == "dplr_recurrent":
            for name, cc, size, secs in compile_dplr(spec):
                print(f"ok    {path}: {name} sm_{cc} cubin {size} B in {secs:.1f} s")
            continue
        reason = eligible(spec.ir)
        if reason and spec.ir.solve and not isinstance(match(spec.ir), str):
            builds = compile_fp_fused(spec)
        elif reason:
            fused = f"; fused fixed point: {match(spec.ir)}" if spec.ir.solve else ""
            print(f"skip  {path}: {reason}{fused}")
            continue
        else:
            builds = compile_scan(spec)
        for name, cc, size, secs in builds:
            print(f"ok    {path}: {name} sm_{cc} cubin {size} B in {secs:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
