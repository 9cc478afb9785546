"""Registers, spills, stack and shared memory of generated kernels built for sm_90 on this machine, no GPU
needed: the ahead-of-time jobs a backend's `aot_jobs` lists, compiled by Triton, read back with the
cuobjdump that Triton bundles. Spilled tiles (a stack of kilobytes) are what make a kernel slow long
before a profile can say so.

    python benchmarks/sm90_resources.py recdsl.backends.triton.dplr_chunk K=128 V=128
    python benchmarks/sm90_resources.py recdsl.backends.triton.delta_chunk K=128 V=128 data=fp32
"""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tempfile
import time


def resources(cubin: bytes) -> dict:
    """REG, STACK, SHARED, LOCAL of the one kernel in `cubin` (cuobjdump -res-usage)."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def main(argv: list[str]) -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    module, kwargs = argv[0], {}
    for item in argv[1:]:
        name, _, value = item.partition("=")
        kwargs[name] = int(value) if value.isdigit() else value
    for name, fn, sig, const, attrs, opts in importlib.import_module(module).aot_jobs(**kwargs):
        t = time.time()
        kern = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 32), options=opts)
        print(f"{name:24s} {resources(kern.asm['cubin'])} cubin {len(kern.asm['cubin']) // 1024} KB, "
              f"{time.time() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
