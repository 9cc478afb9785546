"""The chunked matrix-state kernels over many head sizes on a GPU: packed sequences (one of a single token,
one ending mid-chunk), an initial and a final state, bf16 data, forward and every gradient against the
fp64 loop on the host (tests/test_triton_chunk.reference), plus the one-launch forward where it applies.
One JSON line per (decay, K, V); a faulting launch kills the process's CUDA context, so the row before
the fault is the last one and the next case is the culprit. Head sizes below a tile (masked blocks)
are where Triton 3.6's sm_90 builds faulted (benchmarks/results/2026-11-26zv_h100_chunk_fwd_o_fault.txt)
and computed wrong gradients (2026-11-26zz_h100_stress_chunk_shapes.txt).

    python benchmarks/stress_chunk_shapes.py --decays none,scalar,perkey --sizes 16,24,32,40,48,64,96 --out rows.jsonl
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_triton_chunk import packed_errors  # noqa: E402  (against the fp64 loop)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decays", default="none,scalar,perkey")
    ap.add_argument("--sizes", default="16,24,32,40,48,64,96")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from overhead import emit
    sizes = [int(s) for s in a.sizes.split(",")]
    for decay in a.decays.split(","):
        for K in sizes:
            for V in sizes:
                row = packed_errors(decay, K, V, signed=decay != "none")
                torch.cuda.synchronize()
                ok = all(v < 5e-2 for v in row.values())     # NaN fails
                emit({"gpu": torch.cuda.get_device_name(), "decay": decay, "signed": decay != "none", "K": K,
                      "V": V, **row, "ok": ok}, a.out)


if __name__ == "__main__":
    main()
