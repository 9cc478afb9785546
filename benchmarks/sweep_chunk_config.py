"""Tile configs of the chunkwise kernels (chunk_launch.configs: BK, BV, num_warps, num_stages per kernel)
for one matrix-state spec's forward, against fla in the same process, JSON lines. Each config row sets
chunk_launch.CONFIG_OVERRIDES (what RECDSL_CHUNK_CONFIG sets at import) for the named kernels; first the
kernels' own times under the default config, and both forwards of calls without a gradient (the
two-launch and the one-launch one, whatever the planner would pick) under it.

    python benchmarks/sweep_chunk_config.py --spec examples/mamba2.rec --out sweep.jsonl     # a GPU
"""
import argparse
import os
from pathlib import Path

import torch
from triton.testing import do_bench

import recdsl
from recdsl.backends.triton import chunk_launch

ROOT = Path(__file__).resolve().parents[1]

# kernel -> configs tried (BK, BV, num_warps, num_stages)
SWEEP = {
    "chunk_fwd_h": [(32, 32, 4, 2), (64, 64, 4, 2), (64, 32, 4, 3), (32, 64, 4, 3), (64, 64, 8, 2),
                    (128, 32, 4, 2), (32, 128, 4, 2)],
    "chunk_fwd_o": [(64, 128, 8, 2), (64, 64, 4, 2), (128, 64, 4, 2), (128, 128, 8, 2), (64, 128, 4, 3),
                    (32, 128, 8, 3), (128, 64, 8, 3)],
    # the one-launch forward of calls without a gradient (BK is raised to every key)
    "chunk_fwd_fused": [(128, 16, 4, 2), (128, 32, 4, 3), (128, 32, 8, 2), (128, 64, 4, 2), (128, 64, 8, 2),
                        (128, 64, 8, 3), (128, 16, 2, 2)],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "examples" / "mamba2.rec"))
    ap.add_argument("--shape", default="4,4096,16,128", help="B,T,H,D")
    ap.add_argument("--out", default=None)
    ap.add_argument("--kernels", default=",".join(SWEEP), help="comma-separated kernels whose configs to sweep")
    a = ap.parse_args()
    B, T, H, D = map(int, a.shape.split(","))
    spec = recdsl.load(a.spec, H=H, K=D, V=D)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(3))
    args = {"q": q, "k": k, "v": v}
    gate = next((x for x in spec.args if x.name == "g"), None)
    if gate is not None:
        g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, *gate.shape, device="cuda", generator=gen))
        args["g"] = g.clamp_min(-5) if gate.shape else g
    base = {"gpu": torch.cuda.get_device_name(), "spec": spec.name, "B": B, "T": T, "H": H, "D": D}

    def ours():
        with torch.no_grad():
            return spec.op(**args, backend="triton")

    def forward(inference):   # the forward of a call without a gradient, as the planner's env override picks it
        def run():
            os.environ["RECDSL_CHUNK_INFERENCE"] = inference
            try:
                return ours()
            finally:
                del os.environ["RECDSL_CHUNK_INFERENCE"]
        return run
    fla = None
    try:
        import fla.ops as F
        fla = (lambda: F.chunk_gla(q, k, v, args["g"])) if gate is not None and gate.shape else (
            lambda: F.chunk_simple_gla(q, k, v, args.get("g")))
    except ImportError:
        pass
    from overhead import emit, kernel_times      # benchmarks/ is this script's folder
    for inference in ("chunk", "fused"):
        emit({**base, "config": "default", "forward": inference,
              "kernels": {n[:40]: round(t, 4) for n, t in kernel_times(forward(inference)).items()}}, a.out)
    for rnd in range(2):        # fla and the default again at the end: drift over the process shows
        if fla is not None:
            with torch.no_grad():
                emit({**base, "contestant": "fla", "round": rnd,
                      "ms": do_bench(lambda: fla(), warmup=25, rep=200, return_mode="median")}, a.out)
        chunk_launch.CONFIG_OVERRIDES.clear()
        emit({**base, "contestant": "recdsl", "config": "default", "round": rnd,
              "ms": do_bench(ours, warmup=25, rep=200, return_mode="median")}, a.out)
        for inference in ("chunk", "fused"):
            emit({**base, "contestant": f"recdsl {inference} forward", "config": "default", "round": rnd,
                  "ms": do_bench(forward(inference), warmup=25, rep=200, return_mode="median")}, a.out)
        if rnd:
            break
        for kernel in a.kernels.split(","):
            run = forward("fused" if kernel == "chunk_fwd_fused" else "chunk")
            for c in SWEEP[kernel]:
                chunk_launch.CONFIG_OVERRIDES.clear()
                chunk_launch.CONFIG_OVERRIDES[kernel] = c
                try:
                    ms = do_bench(run, warmup=25, rep=200, return_mode="median")
                    # the kernels' own time as well: small shapes' wall time is the host's
                    emit({**base, "contestant": "recdsl", "config": {kernel: list(c)}, "ms": ms,
                          "kernels_ms": round(sum(kernel_times(run).values()), 4)}, a.out)
                except Exception as e:     # noqa: BLE001 (a config that does not compile is a row)
                    emit({**base, "contestant": "recdsl", "config": {kernel: list(c)},
                          "error": f"{type(e).__name__}: {e}"[:300]}, a.out)
    chunk_launch.CONFIG_OVERRIDES.clear()


if __name__ == "__main__":
    main()
