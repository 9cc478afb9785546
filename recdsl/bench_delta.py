"""`recdsl bench` for the Householder family (deltanet, deltanet_negeig, gated_deltanet, deltaproduct):
the chunked WY kernels side by side with flash-linear-attention's chunk_delta_rule,
chunk_gated_delta_rule and chunk_gated_delta_product on the same tensors, forward and forward+backward.

Keys and queries are l2-normalised by both contestants (the spec declares it; fla is asked for it with
use_qk_l2norm_in_kernel), beta comes through a sigmoid scaled to the spec's interval, the gate is a
logsigmoid. fla 0.6.0 refuses some gated backward passes on Hopper with Triton 3.6; the row then
records its error.
"""
from __future__ import annotations

import torch

import recdsl

from .bench import _recorder, time_contestants


def _fla_op(name: str, n_h: int, gated: bool):
    """fla's counterpart as a function of (q, k, v, beta, g) in recdsl's layouts, or None."""
    try:
        from fla.ops import chunk_delta_rule, chunk_gated_delta_rule
        from fla.ops.gated_delta_product import chunk_gated_delta_product
    except ImportError:
        return None, None

    def product(q, k, v, beta, g):
        B, T, H, NH, K = k.shape
        flat = lambda x: x.transpose(2, 3).reshape(B, T * NH, H, *x.shape[4:])
        return chunk_gated_delta_product(q, flat(k), flat(v), g, beta.transpose(2, 3).reshape(B, T * NH, H),
                                         num_householder=NH, use_qk_l2norm_in_kernel=True)
    if name == "deltaproduct":
        return f"fla chunk_gated_delta_product{'' if gated else ' (g=None)'}", product
    if gated:
        return "fla chunk_gated_delta_rule", (lambda q, k, v, beta, g: chunk_gated_delta_rule(
            q, k, v, g, beta, use_qk_l2norm_in_kernel=True))
    return "fla chunk_delta_rule", (lambda q, k, v, beta, g: chunk_delta_rule(
        q, k, v, beta, use_qk_l2norm_in_kernel=True))


def delta_setup(path: str, B: int, T: int, H: int, D: int, params: dict | None = None, gated: bool | None = None,
                dtype=torch.bfloat16) -> dict:
    """The spec, its arguments on the GPU and fla's counterpart for one shape of a Householder-family
    spec. `gated` (deltaproduct only): pass a gate g (the spec's g defaults to 0, which is the ungated
    DeltaProduct)."""
    spec = recdsl.load(path, H=H, K=D, V=D, **(params or {}))
    names = {a.name for a in spec.args}
    n_h = int(dict(spec.params).get("n_h", 1)) if spec.name == "deltaproduct" else 1
    gated = ("g" in names) if gated is None else gated
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    rnd = lambda *shape: torch.randn(shape, device=dev, generator=gen)
    kv = (n_h,) if spec.name == "deltaproduct" else ()
    beta_hi = 2.0 if spec.analysis.eig_range.lo < 0 else 1.0
    q = rnd(B, T, H, D).to(dtype).requires_grad_(True)
    k = rnd(B, T, H, *kv, D).to(dtype).requires_grad_(True)
    v = rnd(B, T, H, *kv, D).to(dtype).requires_grad_(True)
    beta = (beta_hi * torch.sigmoid(rnd(B, T, H, *kv))).to(dtype).requires_grad_(True)
    args = {"q": q, "k": k, "v": v, "beta": beta}
    g = None
    if gated:
        g = torch.nn.functional.logsigmoid(rnd(B, T, H)).requires_grad_(True)   # fp32, as fla's benchmarks
        args["g"] = g
    shape = {"B": B, "T": T, "H": H, "D": D, "n_h": n_h, "gated": gated, "dtype": str(dtype).replace("torch.", ""),
             "algorithm": spec.plan("triton", on_cuda=True, tokens=T).algorithm}
    fla_name, fla = _fla_op(spec.name, n_h, gated)
    return {"spec": spec, "args": args, "tensors": list(args.values()), "shape": shape,
            "fla_name": fla_name, "fla": None if fla is None else (lambda: fla(q, k, v, beta, g))}


def delta_case(path: str, B: int, T: int, H: int, D: int, params: dict | None = None, gated: bool | None = None,
               dtype=torch.bfloat16, with_fla: bool = True) -> list[dict]:
    """One shape of a Householder-family spec against fla: forward, then forward+backward, each timed in
    alternating rounds (bench.side_by_side), the median reported beside every round's time."""
    case = delta_setup(path, B, T, H, D, params, gated, dtype)
    spec, args, shape = case["spec"], case["args"], case["shape"]
    ours = lambda: spec.op(**args, backend="triton")
    runs = {"recdsl": ours}
    if with_fla and case["fla"] is not None:
        runs[case["fla_name"]] = case["fla"]
    rows = []

    def refused(name, mode, e):   # fla 0.6.0 refuses its gated backward passes on Hopper with Triton 3.6
        rows.append({"case": spec.name, "contestant": name, "mode": mode, "error": str(e)[:200], **shape})
        print(rows[-1], flush=True)
    time_contestants(runs, case["tensors"], _recorder(rows, spec.name, shape), refused)
    if len(runs) > 1:
        with torch.no_grad():
            o1 = ours()[0].float()
            o2 = case["fla"]()[0].float()
        rows.append({"case": spec.name, "check": f"recdsl vs {case['fla_name']} ({shape['dtype']})",
                     "rel_rmse": float((o1 - o2).norm() / o2.norm()), **shape})
        print(rows[-1], flush=True)
    return rows

