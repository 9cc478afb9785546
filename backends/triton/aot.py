"""Ahead-of-time compilation of generated kernels for a GPU target, without a GPU.

Catches what the interpreter accepts but the compiler rejects. Run it in a process where
TRITON_INTERPRET is unset (the interpreter replaces @triton.jit functions):

    python -m recdsl.backends.triton.aot examples/*.rec
"""
from __future__ import annotations

import sys
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

SCAN_CONSTEXPRS = {
    "scan_fwd": dict(BT=64, BD=32, IS_VARLEN=False, USE_H0=True, STORE_HT=True, STORE_HC=True),
    "scan_bwd": dict(BT=64, BD=32, IS_VARLEN=False, USE_H0=True, USE_DHT=True),
}


def signature(fn, constexprs: dict, data: str = "bf16") -> dict:
    """Argument types by recdsl's naming convention: in_*/out/d_* hold data, cu_seqlens and
    chunk_offsets int32, T/C int32, opt_* fp32 scalars, every other pointer fp32."""
    sig = {}
    for n in fn.arg_names:
        if n in constexprs:
            sig[n] = "constexpr"
        elif n in ("T", "C"):
            sig[n] = "i32"
        elif n.startswith("opt_"):
            sig[n] = "fp32"
        elif n in ("cu_seqlens", "chunk_offsets"):
            sig[n] = "*i32"
        elif n.startswith(("in_", "d_")) or n == "out":
            sig[n] = f"*{data}"
        else:
            sig[n] = "*fp32"
    return sig


def compile_scan(spec, capabilities=(80, 90)) -> list[tuple[str, int, int, float]]:
    """Compile the spec's scan kernels; returns (kernel, capability, cubin bytes, seconds) per build."""
    from .cache import load_module
    from .launch import kernel_key
    from .scan import generate
    src = generate(spec.ir, spec.args)
    mod = load_module(kernel_key(src), src)
    out = []
    for name, constexprs in SCAN_CONSTEXPRS.items():
        fn = getattr(mod, name)
        for cc in capabilities:
            t = time.perf_counter()
            k = triton.compile(ASTSource(fn, signature(fn, constexprs), constexprs), target=GPUTarget("cuda", cc, 32))
            out.append((name, cc, len(k.asm["cubin"]), time.perf_counter() - t))
    return out


def main(argv=None) -> int:
    import recdsl
    from .scan import eligible
    for path in (argv or sys.argv[1:]):
        spec = recdsl.load(path)
        reason = eligible(spec.ir)
        if reason:
            print(f"skip  {path}: {reason}")
            continue
        for name, cc, size, secs in compile_scan(spec):
            print(f"ok    {path}: {name} sm_{cc} cubin {size} B in {secs:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
