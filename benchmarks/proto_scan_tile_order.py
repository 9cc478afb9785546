"""Prototype: the look-back scan's tiles ordered by program id instead of an atomic counter (hgrn at
B=4, T=4096, width 2048 by default, bf16). Runs against the generator of the commit it came in with,
whose look-back kernels took each tile's place from an atomic counter (`tile = _tile_index(counter)`).

CUB's single-pass scan (the one behind torch.cumsum on CUDA) takes the block index instead, relying on
blocks being dispatched in increasing order. The hand-written prototype timed the counter at
0.008-0.019 ms of a 0.11 ms forward (2026-11-26zg_h100_proto_scan_look_back.jsonl). This script times the
generated kernels both ways (the counter line rewritten into a program id), in one process, in
alternating rounds, beside a device copy of the forward's bytes and fla's chunk_hgrn.

    python benchmarks/proto_scan_tile_order.py --out rows.jsonl
"""
import argparse
import json

import torch
import triton
from triton.testing import do_bench

import recdsl
from recdsl.backends.triton.cache import load_module
from recdsl.backends.triton.launch import _register, kernel_key, scan_geometry
from recdsl.backends.triton.scan import generate

COUNTER_LINE = "tile = _tile_index(counter)"


def op_for(spec, order, BT, BD, warps, backward="output"):
    src = generate(spec.ir, spec.args, backward)
    assert COUNTER_LINE in src
    if order == "program_id":
        src = src.replace(COUNTER_LINE, "tile = tl.program_id(0)  # blocks start in increasing order")
    key = f"proto_order_{kernel_key(src)}_{BT}_{BD}_{warps}"
    return _register(load_module(kernel_key(src), src), key, spec.name, BT, BD, warps, scan_geometry(spec),
                     "look_back", backward)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--blocks", default="64,32,2;64,32,1;32,32,1;32,64,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    B, T, D = a.batch, a.length, a.width
    spec = recdsl.load("examples/hgrn.rec", D=D)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, T, D, device="cuda", generator=gen).bfloat16()
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, D, device="cuda", generator=gen)).bfloat16()
    do = torch.randn_like(x)
    xr, gr = x.float().requires_grad_(True), g.float().requires_grad_(True)
    ref = spec.op(xr, gr, backend="reference")
    ref = ref[0] if isinstance(ref, tuple) else ref
    ref_dx, ref_dg = torch.autograd.grad(ref, [xr, gr], do.float())
    rel = lambda u, w: ((u.float() - w).norm() / w.norm()).item()
    bench = lambda f: do_bench(f, warmup=25, rep=100, return_mode="median")
    moved = 3 * x.numel() * x.element_size()
    src = torch.empty(moved // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "B": B, "T": T, "D": D, "dtype": "bfloat16"}
    rows = []

    def emit(row):
        row = {**env, **row}
        rows.append(row)
        print(json.dumps(row), flush=True)

    contestants = {}
    for blocks in a.blocks.split(";"):
        BT, BD, w = map(int, blocks.split(","))
        for order in ("counter", "program_id"):
            op = op_for(spec, order, BT, BD, w)
            xs = [x.detach().requires_grad_(True), g.detach().requires_grad_(True)]

            def fwd(op=op):
                return op([x, g], [], [], None, None, False)[0].view(B, T, D)

            def fb(op=op, xs=xs):
                for t in xs:
                    t.grad = None
                op(xs, [], [], None, None, False)[0].view(B, T, D).backward(do)
            out = fwd()
            fb()
            err = {"rel_o": rel(out, ref), "rel_dx": rel(xs[0].grad, ref_dx), "rel_dg": rel(xs[1].grad, ref_dg)}
            contestants[(order, BT, BD, w)] = (fwd, fb, err)
    try:
        from fla.ops.hgrn import chunk_hgrn
        ys = [x.detach().requires_grad_(True), g.detach().requires_grad_(True)]

        def fla_fb():
            for t in ys:
                t.grad = None
            chunk_hgrn(*ys)[0].backward(do)
        contestants[("fla chunk_hgrn",)] = (lambda: chunk_hgrn(x, g), fla_fb, {})
    except ImportError:
        pass
    times = {k: {"fwd": [], "fwd+bwd": []} for k in contestants}
    copy = []
    for r in range(a.rounds):   # alternating rounds: drift between contestants shows as spread, not bias
        copy.append(bench(lambda: dst.copy_(src)))
        for k, (fwd, fb, _) in contestants.items():
            times[k]["fwd"].append(bench(fwd))
            times[k]["fwd+bwd"].append(bench(fb))
        print(f"round {r + 1}/{a.rounds} done", flush=True)
    copy_ms = sorted(copy)[len(copy) // 2]
    emit({"contestant": "device copy", "ms": copy_ms, "rounds_ms": copy, "bytes": moved})
    for k, (_, _, err) in contestants.items():
        for mode, ts in times[k].items():
            ms = sorted(ts)[len(ts) // 2]
            head = {"contestant": k[0]} if len(k) == 1 else {"contestant": f"generated look_back, {k[0]}",
                                                             "BT": k[1], "BD": k[2], "warps": k[3]}
            emit({**head, "mode": mode, "ms": ms, "rounds_ms": ts,
                  **({"x_copy": ms / copy_ms} if mode == "fwd" else {}), **err})
    if a.out:
        with open(a.out, "a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
