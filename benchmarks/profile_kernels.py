"""Every CUDA kernel of one call, ours beside fla's on the same tensors (torch.profiler), for the cases whose
targets are close: a Householder-family spec through spec.op (l2norm included) against fla's op
(chunk_delta_rule, chunk_gated_delta_rule, chunk_gated_delta_product), and the chunked per-key recurrence
with and without signed decays.

    python benchmarks/profile_kernels.py --case deltaproduct --shape 4,4096,16,128 --n-h 2 --out FILE.jsonl
    python benchmarks/profile_kernels.py --case gated_deltanet --shape 4,4096,16,128 --out FILE.jsonl
    python benchmarks/profile_kernels.py --case signed --shape 4,4096,16,128 --out FILE.jsonl
    python benchmarks/profile_kernels.py --case rwkv7 --shape 4,4096,16,128 --out FILE.jsonl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from overhead import host_ms, kernel_times     # benchmarks/ is this script's folder

ROOT = Path(__file__).resolve().parents[1]
DELTA = ("deltanet", "gated_deltanet", "deltaproduct")


def delta_calls(name, B, T, H, D, n_h, gated):
    """A Householder-family spec through spec.op (l2norm included) beside fla's op on the same tensors."""
    from recdsl.bench_delta import delta_setup
    case = delta_setup(str(ROOT / "examples" / f"{name}.rec"), B, T, H, D,
                       {"n_h": n_h} if name == "deltaproduct" else {},
                       gated=gated if name == "deltaproduct" else None)
    spec, args = case["spec"], case["args"]
    calls = {"recdsl": lambda: spec.op(**args, backend="triton")}
    if case["fla"] is not None:
        calls[case["fla_name"]] = case["fla"]
    return calls, case["tensors"]


def signed_calls(B, T, H, D):
    from recdsl.backends.triton.chunk_launch import chunk_linear_recurrence
    r = lambda *s: torch.randn(*s, device="cuda")
    q, k, v = (r(B, T, H, D).bfloat16().requires_grad_(True) for _ in range(3))
    g = torch.nn.functional.logsigmoid(r(B, T, H, D) + 3).requires_grad_(True)
    sign = torch.where(torch.rand(B, T, H, D, device="cuda") < 0.5, -1, 1).to(torch.int8)
    ins = [q, k, v, g]
    return {"unsigned": lambda: chunk_linear_recurrence(q, k, v, g),
            "signed": lambda: chunk_linear_recurrence(q, k, v, g, sign)}, ins


def rwkv7_calls(B, T, H, D):
    """RWKV-7 through the spec, both forwards (the fused recurrent walk, the chunkwise one), and
    chunk_rwkv7 on the same tensors."""
    import recdsl
    from recdsl.backends.triton.dplr import DPLR_FORWARD_ENV
    from recdsl.bench import _with_env, dplr_args
    spec = recdsl.load(str(ROOT / "examples" / "rwkv7.rec"), H=H, K=D, V=D)
    args = dplr_args(spec, B, T, "cuda", torch.bfloat16)
    ins = list(args.values())
    call = lambda: spec.op(**args, backend="triton")
    calls = {f"recdsl {mode}": _with_env(DPLR_FORWARD_ENV, mode, call) for mode in ("recurrent", "chunk")}
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
        x = [args[n] for n in ("r", "w", "k", "v", "a", "b")]
        calls["fla chunk_rwkv7"] = lambda: chunk_rwkv7(*x, scale=1.0)
    except ImportError:
        pass
    return calls, ins


def _short(times: dict) -> dict:
    """Kernel names cut to 90 characters; torch's templated names that then coincide are summed."""
    out: dict = {}
    for name, ms in times.items():
        out[name[:90]] = round(out.get(name[:90], 0.0) + ms, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=DELTA + ("signed", "rwkv7"), required=True)
    ap.add_argument("--shape", default="4,4096,16,128")
    ap.add_argument("--n-h", type=int, default=2)
    ap.add_argument("--gated", action="store_true", help="deltaproduct: with a gate g")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    B, T, H, D = map(int, a.shape.split(","))
    if a.case in DELTA:
        calls, ins = delta_calls(a.case, B, T, H, D, a.n_h, a.gated)
    else:
        calls, ins = {"signed": signed_calls, "rwkv7": rwkv7_calls}[a.case](B, T, H, D)
    rows = []
    for who, call in calls.items():
        def fwd():
            with torch.no_grad():
                call()

        def fwd_bwd():
            o = call()[0]
            torch.autograd.grad(o.float().sum(), ins)
        for mode, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            try:
                times = kernel_times(fn, iters=5)
            except Exception as e:   # fla refuses some backward passes on Hopper
                print(json.dumps({"case": a.case, "who": who, "mode": mode, "error": str(e)[:200]}), flush=True)
                continue
            from triton.testing import do_bench
            # wall: do_bench's median; host: the time to issue one call (a call whose host time exceeds its
            # kernels' is launch-bound)
            rows.append({"case": a.case, "who": who, "shape": [B, T, H, D], "mode": mode,
                         "n_h": a.n_h if a.case == "deltaproduct" else 1, "gated": a.gated,
                         "gpu": torch.cuda.get_device_name(), "total_ms": round(sum(times.values()), 4),
                         "wall_ms": round(float(do_bench(fn, warmup=25, rep=100, return_mode="median")), 4),
                         "host_ms": round(host_ms(fn, iters=20), 4), "kernels": _short(times)})
            print(json.dumps(rows[-1]), flush=True)
            if a.out:   # each row as it is measured: a time limit loses nothing measured
                with open(a.out, "a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")


if __name__ == "__main__":
    main()
