"""The look-back's two tile forms side by side at one shape, in one process, with a device copy of the same
bytes: "scan" (a [BT, BD] tile through tl.associative_scan, which Triton lays out with rows across lanes)
and "rows" (the tile one token row at a time, rows unrolled, the scan a multiply-add per element in each
thread; two passes, the second reading the rows again from cache). Kernel times from torch.profiler,
wall times from do_bench, and each output's largest difference from the walk's.

    python benchmarks/sweep_scan_tile_form.py --spec examples/hgrn.rec --out rows.jsonl \
        --configs scan:32,32,1,2 rows:16,32,1 rows:16,64,1
"""
import argparse
import json

import torch
from triton.testing import do_bench

import recdsl
from recdsl.backends.triton.launch import scan_op
from recdsl.bench import elementwise_args

from overhead import emit, kernel_times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="examples/hgrn.rec")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--configs", nargs="+", default=["scan:32,32,1,2", "rows:16,32,1", "rows:16,64,1"],
                    help="FORM:BT,BD,warps[,backward warps]")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    spec = recdsl.load(a.spec, D=a.width)
    args = elementwise_args(spec, a.batch, a.length, "cuda", torch.bfloat16)
    names = [x.name for x in spec.args if x.kind == "input"]
    ins = [args[n].flatten(2) for n in names]
    moved = sum(x.numel() * x.element_size() for x in ins) + ins[0].numel() * 2   # inputs read, output written
    src = torch.empty(moved // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=100, return_mode="median")
    emit({"contestant": "device copy", "ms": copy_ms, "bytes": moved, "gpu": torch.cuda.get_device_name()}, a.out)
    walk = scan_op(spec, 128, 16, 2, "output", "walk")
    leaves = [x.detach().requires_grad_(True) for x in ins]
    o_ref, _, _ = walk(leaves, [], [], None, None, False)
    dy = torch.randn_like(o_ref)
    ref = [o_ref, *torch.autograd.grad(o_ref, leaves, dy)]
    for cfg in a.configs:
        form, blocks = cfg.split(":")
        BT, BD, warps, *bw = map(int, blocks.split(","))
        op = scan_op(spec, BT, BD, warps, "output", "look_back", bw[0] if bw else 0, tile_form=form)

        def fwd():
            with torch.no_grad():
                return op(ins, [], [], None, None, False)

        def fwd_bwd():
            o, _, _ = op(leaves, [], [], None, None, False)
            return torch.autograd.grad(o, leaves, dy)

        o, _, _ = op(leaves, [], [], None, None, False)
        got = [o, *torch.autograd.grad(o, leaves, dy)]
        err = [float((x.float() - y.float()).abs().max()) for x, y in zip(got, ref)]
        kf, kfb = kernel_times(fwd), kernel_times(fwd_bwd)
        row = {"form": form, "BT": BT, "BD": BD, "warps": warps, "bwd_warps": bw[0] if bw else warps,
               "fwd_ms": do_bench(fwd, warmup=25, rep=100, return_mode="median"),
               "fwdbwd_ms": do_bench(fwd_bwd, warmup=25, rep=100, return_mode="median"),
               "fwd_kernel_ms": sum(v for k, v in kf.items() if "scan_fwd_tiles" in k),
               "bwd_kernel_ms": sum(v for k, v in kfb.items() if "scan_bwd_tiles" in k),
               "kernels_fwdbwd": {k[:40]: round(v, 4) for k, v in kfb.items()},
               "max_diff_from_walk": err}
        row["fwd_over_copy"] = row["fwd_ms"] / copy_ms
        emit(row, a.out)


if __name__ == "__main__":
    main()
