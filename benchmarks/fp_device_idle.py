"""When the device waits in a fused fixed-point call: for each of a few calls (issue 5's shape by default), from
a torch.profiler timeline of host and device, the call's span (from entering it to the device finishing it),
the time some kernel or copy ran on any stream, and the idle rest split into the lead (the host's work before
the first kernel, with the labelled host stages that ran in it), the gaps between kernels and the tail (after
the last); then the largest gaps with the kernels on either side and the host stage and innermost host op
running at each gap's middle.

    python benchmarks/fp_device_idle.py --spec benchmarks/specs/fp_rnn_mixer_hdep.rec --out idle.jsonl   # a GPU

Profiling slows the host (a few microseconds an op), so the idle times are upper bounds; `wall_ms` is the
unprofiled median of the same call (do_bench).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    from profile_fp_host import calls, shape_options, shape_record
    from overhead import emit
    from triton.testing import do_bench
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shape_options(ap)
    ap.add_argument("--calls", type=int, default=4, help="profiled calls per mode")
    ap.add_argument("--gaps", type=int, default=8, help="largest gaps listed per mode")
    ap.add_argument("--out", default=None)
    ap.add_argument("--trace", default=None, help="write each mode's Chrome trace as <trace>_<mode>.json")
    args = ap.parse_args()
    spec, solve, train = calls(args)
    _label_stages()
    shape = shape_record(spec, args)
    for mode, fn in (("solve", solve), ("solve+step+bwd", train)):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        wall = do_bench(fn, warmup=5, rep=100, return_mode="median")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(-1, args.calls):       # call -1: the profiler's own start-up (ms of host time), not counted
                with record_function(f"call {i}"):
                    fn()
                    torch.cuda.synchronize()
        if args.trace:
            prof.export_chrome_trace(f"{args.trace}_{mode.replace('+', '_')}.json")
        rows = [timeline(prof.events(), f"call {i}") for i in range(args.calls)]
        summary = {k: round(sorted(r[k] for r in rows)[len(rows) // 2], 4)
                   for k in ("span_ms", "busy_ms", "lead_ms", "gaps_ms", "tail_ms")}
        worst = sorted((g for r in rows for g in r["gaps"]), key=lambda g: -g["ms"])[:args.gaps]
        emit({**shape, "mode": mode, "wall_ms": round(wall, 4), "median_of_calls": summary,
              "calls": [{k: v for k, v in r.items() if k != "gaps"} for r in rows], "largest_gaps": worst}, args.out)


def timeline(events, label: str) -> dict:
    """The idle breakdown of the call under the record_function `label` (its span ends with a device sync)."""
    call = next(e for e in events if e.name == label and e.device_type == DeviceType.CPU)
    c0, c1 = call.time_range.start, call.time_range.end
    device = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                    if e.device_type == DeviceType.CUDA and c0 <= e.time_range.start < c1 and not _annotation(e))
    host = [e for e in events if e.device_type == DeviceType.CPU and c0 <= e.time_range.start < c1 and e is not call]
    busy, gaps, end, before = 0.0, [], None, "(call start)"
    for s, t, name in device:
        if end is not None and s > end:
            gaps.append(_gap(end, s, before, name, host))
        if end is None or t > end:
            busy += t - max(s, end) if end is not None else t - s
            end, before = t, name
    if end is None:
        end = c0
    lead = (device[0][0] - c0) if device else c1 - c0
    # the host's labelled stages during the lead (nested stages each count their own overlap)
    in_lead: dict = {}
    for e in host:
        if e.name.startswith("recdsl:"):
            o = min(e.time_range.end, c0 + lead) - e.time_range.start
            if o > 0:
                in_lead[e.name] = in_lead.get(e.name, 0.0) + o
    ms = lambda us: round(us / 1000, 4)
    return {"span_ms": ms(c1 - c0), "busy_ms": ms(busy), "lead_ms": ms(lead), "gaps_ms": ms(sum(g["us"] for g in gaps)),
            "tail_ms": ms(c1 - end), "kernels": len(device), "first_kernel": device[0][2][:60] if device else "",
            "lead_stages_ms": {k: ms(v) for k, v in sorted(in_lead.items(), key=lambda kv: -kv[1])},
            "gaps": [{"ms": ms(g.pop("us")), **g} for g in gaps]}


def _annotation(e) -> bool:
    """Whether a device event is a record_function range drawn on the device's row (spanning the kernels it
    launched), not work of the device's own."""
    return bool(getattr(e, "is_user_annotation", False)) or e.name.startswith(("call ", "recdsl:"))


def _gap(s: float, t: float, before: str, after: str, host) -> dict:
    """A gap from s to t (us): its length, the kernels around it, and the host's labelled stage and innermost
    op at its middle."""
    mid = (s + t) / 2
    running = sorted((e for e in host if e.time_range.start <= mid < e.time_range.end),
                     key=lambda e: e.time_range.end - e.time_range.start)
    stage = next((e.name for e in running if e.name.startswith("recdsl:")), "")
    return {"us": t - s, "after_kernel": before[:60], "before_kernel": after[:60], "host_stage": stage,
            "host_op": running[0].name[:60] if running else ""}


def _label_stages() -> None:
    """Wrap the solve's host stages in record_function("recdsl:<name>") ranges."""
    from profile_fp_host import wrap_stages

    from recdsl import opcall, planner, solve
    from recdsl.backends.triton import fixed_point, fp_graph

    def labelled(label, inner):
        def in_range(*a, **k):
            with record_function(label):
                return inner(*a, **k)
        return in_range
    stages = [(opcall, "call_op"), (fixed_point, "run_fixed_point"), (opcall, "prepare"), (planner, "plan"),
              (solve, "fixed_point"), (solve, "_copy_to_host"), (fixed_point, "_readout"),
              (fp_graph.SolveGraphs, "bind"), (fp_graph.SolveGraphs, "run")]
    wrap_stages([(owner, name, f"recdsl:{name}") for owner, name in stages], labelled)


if __name__ == "__main__":
    main()
