"""The delta rule's forward state pass alone, bf16, one process: recdsl's chunk_fwd_h as the planner
launches it, fla's chunk_gated_delta_rule_fwd_h, and the layout variants of delta_fwd_h_variants.py over
value blocks, warps and pipeline stages; ungated and with a scalar gate, at DeltaNet's (4, 4096, 16, 128)
and at DeltaProduct n_h = 2's 8192 steps. Each row carries the largest difference from recdsl's h and v'.

    python benchmarks/sweep_delta_fwd_h.py --out benchmarks/results/DATE_h200_fwdh_sweep.jsonl
"""
import argparse
import json
import time

import torch
from triton.testing import do_bench

from delta_fwd_h_variants import fwd_h_variant      # benchmarks/ is this script's folder
from recdsl.backends.triton.delta_chunk import BT, _launch_config


def inputs(B, T, H, D):
    torch.manual_seed(0)
    unit = lambda: torch.nn.functional.normalize(torch.randn(B, T, H, D, device="cuda"), dim=-1)
    k, w, u = unit().bfloat16(), (0.5 * unit()).bfloat16(), torch.randn(B, T, H, D, device="cuda").bfloat16()
    G = torch.cumsum(-0.01 * torch.rand(B, T // BT, BT, H, device="cuda"), 2).reshape(B, T, H).contiguous()
    return k, w, u, G


def recdsl_pass(k, w, u, G):
    B, T, H, K = k.shape
    lc = _launch_config(k.unsqueeze(3), u.unsqueeze(3), G, None)
    h, vn = k.new_empty(lc.NS, H, K, K), torch.empty_like(u)
    run = lambda: lc.chunk.chunk_fwd_h[(1, K // lc.BVF, lc.N * H)](
        k, u, G, None, None, h, None, None, None, T, w, vn, H=H, K=K, V=K, BT=BT, BK=lc.BK, BV=lc.BVF,
        USE_H0=False, STORE_HT=False, IS_VARLEN=False, PREC="ieee", num_warps=lc.warps, num_stages=lc.stages)
    return run, h, vn


def variant_pass(k, w, u, G, BV, ksplit, kt, warps, stages):
    B, T, H, K = k.shape
    h, vn = k.new_empty(B * (T // BT), H, K, K), torch.empty_like(u)
    run = lambda: fwd_h_variant[(K // BV, B * H)](k, u, w, G, h, vn, T, H=H, K=K, V=K, BT=BT, BV=BV, KSPLIT=ksplit,
                                                   KT=kt, USE_G=G is not None, num_warps=warps, num_stages=stages)
    return run, h, vn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=230, help="seconds; later configurations are skipped")
    a = ap.parse_args()
    from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_fwd_h
    out, t0 = open(a.out, "w"), time.time()
    emit = lambda row: (print(json.dumps(row), flush=True), out.write(json.dumps(row) + "\n"), out.flush())
    for B, T, H, D in [(4, 8192, 16, 128), (4, 4096, 16, 128)]:
        k, w, u, G0 = inputs(B, T, H, D)
        for gated in (False, True):
            G = G0 if gated else None
            base = dict(gpu=torch.cuda.get_device_name(), shape=[B, T, H, D], gated=gated)
            run, h_ref, vn_ref = recdsl_pass(k, w, u, G)
            run()
            emit({**base, "who": "recdsl", "ms": do_bench(run, warmup=20, rep=100)})
            fla = lambda: chunk_gated_delta_rule_fwd_h(k, w, u, g=None if G is None else G / 0.6931471805599453)
            emit({**base, "who": "fla", "ms": do_bench(fla, warmup=20, rep=100)})
            for wa, st in [(4, 2), (4, 3), (8, 2), (2, 2)]:
                for bv in (32, 64):
                    for ks in (1, 2):
                        for kt in (0, 1):
                            if gated and wa != 4:
                                continue
                            if time.time() - t0 > a.budget:
                                return emit({"stopped": "budget"})
                            cfg = dict(BV=bv, KSPLIT=ks, KT=kt, warps=wa, stages=st)
                            run, h, vn = variant_pass(k, w, u, G, bv, ks, kt, wa, st)
                            run()
                            err = max((h.float() - h_ref.float()).abs().max().item(),
                                      (vn.float() - vn_ref.float()).abs().max().item())
                            emit({**base, "who": "variant", **cfg, "ms": do_bench(run, warmup=20, rep=100),
                                  "err": err})


if __name__ == "__main__":
    main()
