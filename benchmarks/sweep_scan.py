"""Sweep the element-wise scan's blocks (BT, BD, num_warps) at one shape; prints a table and JSON lines.

    python benchmarks/sweep_scan.py --spec examples/hgrn.rec --batch 4 --length 4096 --width 2048
    python benchmarks/sweep_scan.py --spec examples/mamba.rec --width 2048 --bt 16,32 --bd 4,8,16 --warps 4,8
    python benchmarks/sweep_scan.py --schedules walk,look_back   # both schedules side by side
    python benchmarks/sweep_scan.py --warps 1,2 --bwd-warps 1,2,4 --graphs   # device time, the host left out

--graphs times each call replayed from a CUDA graph (recdsl.bench.graph_replayed), the copy too: on a host
that takes longer to issue a call than the device takes to run it, plain calls time the host.
"""
import argparse
import itertools
import json

import torch
from triton.testing import do_bench

import recdsl
from recdsl.backends.triton.launch import scan_op
from recdsl.bench import graph_replayed
from recdsl.planner import _scan_plan


def ints(text):
    return [int(x) for x in text.split(",")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="examples/hgrn.rec")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--width", type=int, default=2048, help="the spec's D")
    ap.add_argument("--bt", type=ints, default=[32, 64, 128, 256])
    ap.add_argument("--bd", type=ints, default=[8, 16, 32])
    ap.add_argument("--warps", type=ints, default=[2, 4, 8])
    ap.add_argument("--bwd-warps", type=ints, default=[0], help="the backward kernel's warps (0: as the forward)")
    ap.add_argument("--graphs", action="store_true", help="time calls replayed from CUDA graphs")
    ap.add_argument("--backward", default=None, choices=["exclusive", "shifted", "output"],
                    help="the backward scans' form (default: the planner's choice)")
    ap.add_argument("--schedules", default="look_back",
                    help="comma-separated: walk (a program per sequence walks the tokens), look_back (a program per tile)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    spec = recdsl.load(a.spec, D=a.width)
    backward = a.backward or _scan_plan(spec, None).scan_backward
    B, T = a.batch, a.length
    gen = torch.Generator(device="cuda").manual_seed(0)
    ins, ws = [], []
    for x in spec.args:
        if x.kind == "weight":
            ws.append(0.5 * torch.randn(x.shape, device="cuda", generator=gen).reshape(-1))
            continue
        t = torch.randn((B, T) + x.shape, device="cuda", generator=gen)
        cons = {c[0] for c in next(n for n in spec.ir.leaves("input") if n.args[0] == x.name).args[1]}
        t = torch.nn.functional.logsigmoid(t) if "log" in cons else torch.sigmoid(t) if "interval" in cons else \
            torch.nn.functional.softplus(t - 3) if "positive" in cons else t
        ins.append(t.bfloat16())
    if len(spec.ir.state[1]) == 1:
        ins = [x.flatten(2) for x in ins]
    # a device copy moving as many bytes as the forward reads and writes (the memory roofline)
    moved = sum(x.numel() * x.element_size() for x in ins) + ins[0].numel() * ins[0].element_size()
    src = torch.empty(moved // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    timed = graph_replayed if a.graphs else (lambda f: f)
    copy_ms = do_bench(timed(lambda: dst.copy_(src)), warmup=25, rep=100, return_mode="median")
    print(f"device copy of {moved / 1e6:.0f} MB: {copy_ms:.4f} ms")
    rows = []
    for schedule, BT, BD, warps, bwd_warps in itertools.product(a.schedules.split(","), a.bt, a.bd, a.warps,
                                                                 a.bwd_warps):
        op = scan_op(spec, BT, BD, warps, backward, schedule, bwd_warps)

        def fwd():
            with torch.no_grad():
                op(ins, ws, [], None, None, False)
        try:
            fwd()
            ms_f = do_bench(timed(fwd), warmup=25, rep=100, return_mode="median")
            xs = [x.detach().requires_grad_(True) for x in ins]

            upstream = []

            def fb():   # as recdsl bench: no gradient accumulation, the output's gradient made once
                for x in xs:
                    x.grad = None
                out, _, _ = op(xs, ws, [], None, None, False)
                if not upstream:
                    upstream.append(torch.ones_like(out))
                out.backward(upstream[0])
            fb()
            ms_b = do_bench(timed(fb), warmup=25, rep=100, return_mode="median")
        except Exception as e:  # a config the compiler rejects is reported, not fatal
            print(f"{schedule} BT={BT} BD={BD} warps={warps}/{bwd_warps}: {type(e).__name__}: {str(e)[:120]}")
            continue
        rows.append({"schedule": schedule, "BT": BT, "BD": BD, "warps": warps, "bwd_warps": bwd_warps,
                     "backward": backward, "graphs": a.graphs, "fwd_ms": ms_f, "fwdbwd_ms": ms_b, "copy_ms": copy_ms})
        print(f"{schedule:9s} BT={BT:4d} BD={BD:3d} warps={warps}/{bwd_warps}: fwd {ms_f:.4f} ms ({ms_f / copy_ms:.2f}x copy)  "
              f"fwd+bwd {ms_b:.4f} ms", flush=True)
    best_f = min(rows, key=lambda r: r["fwd_ms"])
    best_b = min(rows, key=lambda r: r["fwdbwd_ms"])
    print("best fwd", best_f, "\nbest fwd+bwd", best_b)
    if a.out:
        with open(a.out, "w") as f:
            for r in rows:
                f.write(json.dumps({"gpu": torch.cuda.get_device_name(), "spec": spec.name, "B": B, "T": T,
                                    "D": a.width, "state": list(spec.ir.state[1]), **r}) + "\n")


if __name__ == "__main__":
    main()
