"""`recdsl bench`: side-by-side timings per DESIGN section 7, written as JSON lines plus a plot.

Medians of triton.testing.do_bench (warmup 25 ms, rep 100 ms) after warm-up calls, forward and
forward+backward separately, bf16 inputs, the same tensors for every contestant in one process. The GPU
is brought to its clocks once per process before the first timing, and `side_by_side` alternates the
contestants over several rounds, so that a drift over the process falls on both sides.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import recdsl


# the reference loop's forward+backward is timed only where its forward took at most this long
REFERENCE_BACKWARD_MS = 500.0


@functools.cache
def _spin_up(seconds: float = 1.0) -> None:
    """Matrix products for about `seconds`, once per process: the first contestant timed must not pay
    for the GPU's ramp from idle clocks (the first case of a process once read 2x slow)."""
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            x @ x
        torch.cuda.synchronize()


def _bench(fn, warmup_calls: int = 3) -> float:
    for _ in range(warmup_calls):
        fn()
    if not torch.cuda.is_available():   # the CPU tier only checks that a case runs end to end
        return _once(fn)
    from triton.testing import do_bench
    _spin_up()
    torch.cuda.synchronize()
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def side_by_side(fns: dict, rounds: int = 3) -> dict:
    """{name: [ms per round]}: `rounds` alternating _bench runs of the contestants (A B A B ..), so that
    host load or clocks drifting over the process fall on every side. A contestant that raises is
    dropped with its error as {name: exception}. Report the median of each list."""
    times: dict = {n: [] for n in fns}
    for _ in range(rounds if torch.cuda.is_available() else 1):
        for n, fn in fns.items():
            if isinstance(times[n], Exception):
                continue
            try:
                times[n].append(_bench(fn, warmup_calls=1))
            except Exception as e:   # fla refuses some backward passes on Hopper with Triton 3.6
                times[n] = e
    return times


def median_ms(per_round: list) -> float:
    return float(statistics.median(per_round))


def time_contestants(runs: dict, tensors: list, add, on_error, graphs: bool = False) -> None:
    """Forward (no gradient), then forward+backward through `tensors`, of every contestant in `runs`
    ({name: fn}), each mode in alternating rounds (side_by_side): add(name, mode, median, peak,
    rounds_ms=[..]) per contestant, on_error(name, mode, exception) for one that raises. With `graphs`,
    also both modes replayed from CUDA graphs ("fwd graph", "fwd+bwd graph"): the device's time alone,
    where calls cost the host more than the kernels take."""
    for mode in ("fwd", "fwd+bwd") + (("fwd graph", "fwd+bwd graph") if graphs else ()):
        fns = ({n: _no_grad(f) for n, f in runs.items()} if mode.split()[0] == "fwd"
               else {n: _fwd_bwd(f, tensors) for n, f in runs.items()})
        if mode.endswith("graph"):
            fns = {n: graph_replayed(f) for n, f in fns.items()}
        for name, times in side_by_side(fns).items():
            if isinstance(times, Exception):
                on_error(name, mode, times)
            else:
                add(name, mode, median_ms(times), _peak(fns[name]), rounds_ms=[round(t, 5) for t in times])


def graph_replayed(fn):
    """fn replayed from a CUDA graph, captured at its first call (after warm-up calls on a side stream, as
    torch.cuda.graphs asks): one launch of the host per call. A capture that fails raises from that call,
    which side_by_side records as the contestant's error."""
    replay = []

    def f():
        if not replay:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            replay.append(graph)
        replay[0].replay()
    return f


def _once(fn) -> float:
    """Milliseconds of one call, for contestants too slow to repeat (the PyTorch loops)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0)


def _peak(fn) -> int | None:
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def _recorder(rows: list, case: str, shape: dict):
    """add(contestant, mode, ms, peak, **extra): append one timing row and print it as a JSON line."""
    def add(contestant, mode, ms, peak=None, **extra):
        rows.append({"case": case, "contestant": contestant, "mode": mode, "ms": round(ms, 5),
                     "peak_bytes": peak, **shape, **extra})
        print(json.dumps(rows[-1]), flush=True)
    return add


def environment() -> dict:
    import triton
    env = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
           "torch": torch.__version__, "triton": triton.__version__, "recdsl": recdsl.__version__,
           "python": platform.python_version()}
    try:
        import fla
        env["fla"] = getattr(fla, "__version__", "?")
    except ImportError:
        env["fla"] = None
    return env


def _fwd_bwd(run, tensors):
    """Forward and backward of run() with the gradients of `tensors` cleared first. The output's gradient
    (ones) is made once, outside the timed call, as the upstream layer would hand it over: filling it
    inside added a 64 MiB write and an allocation to every call of the hgrn case."""
    upstream = {}

    def f():
        for t in tensors:
            t.grad = None
        o = run()
        o = o[0] if isinstance(o, tuple) else o
        key = (tuple(o.shape), o.dtype, o.device)
        if key not in upstream:
            upstream[key] = torch.ones_like(o)
        o.backward(upstream[key])
    return f


def elementwise_args(spec, B: int, T: int, dev: str, dtype) -> dict:
    """Random arguments for an element-wise spec, each inside its declared constraint (log gates as
    logsigmoid, intervals through a sigmoid, positive through softplus), inputs in `dtype`, weights fp32."""
    g = torch.Generator(device=dev).manual_seed(0)
    heads = (spec.heads,) if spec.heads else ()
    args = {}
    for a in spec.args:
        shape = heads + a.shape if a.kind == "weight" else (B, T) + heads + a.shape
        x = torch.randn(shape, device=dev, generator=g, dtype=torch.float32)
        node = next(n for n in spec.ir.leaves(a.kind) if n.args[0] == a.name)
        cons = {c[0]: c for c in node.args[1]}
        if "log" in cons:
            x = torch.nn.functional.logsigmoid(x)
        elif "interval" in cons:
            lo, hi = cons["interval"][1:3]
            x = lo + (hi - lo) * torch.sigmoid(x)
        elif "positive" in cons:
            x = torch.nn.functional.softplus(x - 3)
        args[a.name] = (x.to(dtype) if a.kind == "input" else x).requires_grad_(True)
    return args


def elementwise_case(path: str, B: int, T: int, width: int, dtype=torch.bfloat16, with_fla: bool = True) -> list[dict]:
    """An element-wise diagonal spec (inputs [B, T, *shape], D = width; hgrn, lru, mamba) against fla's
    hgrn kernels, a device copy of the same bytes and, once, the sequential reference."""
    spec = recdsl.load(path, D=width)
    dev = "cuda"
    args = elementwise_args(spec, B, T, dev, dtype)
    tensors = list(args.values())
    shape = {"B": B, "T": T, "width": width, "dtype": str(dtype).replace("torch.", "")}
    if len(spec.ir.state[1]) == 2:
        shape["state"] = list(spec.ir.state[1])
    rows = []

    add = _recorder(rows, spec.name, shape)

    ours = lambda: spec.op(**args, backend="triton")
    runs = {"recdsl": ours}
    chunk_hgrn = None
    if with_fla and spec.name == "hgrn":
        try:
            from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn
        except ImportError:
            chunk_hgrn = None
        if chunk_hgrn is not None:
            x, gg = args["x"], args["g"]
            runs["fla chunk_hgrn"] = lambda: chunk_hgrn(x, gg)
            runs["fla fused_recurrent_hgrn"] = lambda: fused_recurrent_hgrn(x, gg)
    # element-wise scans take the device tens of microseconds: the graphs show it without the host's time
    time_contestants(runs, tensors, add, lambda name, mode, e: rows.append(
        {"case": spec.name, "contestant": name, "mode": mode, "error": str(e)[:200], **shape}),
        graphs=torch.cuda.is_available())
    # the sequential reference (a PyTorch loop over T), one forward call
    if T * B <= 65536:
        with torch.no_grad():
            ref_args = {k: v.float() for k, v in args.items()}
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            spec.op(**ref_args, backend="reference")
            torch.cuda.synchronize()
            add("reference (PyTorch loop)", "fwd", 1000 * (time.perf_counter() - t0), None, calls=1)
    # a device copy moving the same bytes as the forward (inputs read + output written)
    out_elems = B * T
    for d in spec.ir.node(spec.ir.roots_with("output:")[0][1]).shape:
        out_elems *= d
    moved = sum(t.numel() * t.element_size() for t in tensors if t.dim() >= 3) + out_elems * torch.finfo(dtype).bits // 8
    src = torch.empty(moved // 2, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    add("device copy", "fwd", _bench(lambda: dst.copy_(src)), None, bytes=moved)
    if chunk_hgrn is not None:
        with torch.no_grad():
            o1, _ = spec.op(**args, backend="triton")
            o2, _ = chunk_hgrn(x, gg)
        rows.append({"case": spec.name, "check": "recdsl vs fla chunk_hgrn (bf16)",
                     "rel_rmse": float((o1.float() - o2.float()).norm() / o2.float().norm())})
    return rows


def dplr_args(spec, B: int, T: int, dev: str, dtype) -> dict:
    """RWKV-7's inputs as its layer makes them (a = -kappa, b = kappa * iclr with kappa of unit norm, iclr in
    (0, 1), log decays in (-0.6065, 0)), so the transition stays contractive over long sequences."""
    g = torch.Generator(device=dev).manual_seed(0)
    lead = (B, T) + ((spec.heads,) if spec.heads else ())
    K, V = spec.ir.state[1]
    rnd = lambda n: torch.randn(lead + (n,), device=dev, generator=g)
    kappa = torch.nn.functional.normalize(rnd(K), dim=-1)
    iclr = torch.sigmoid(rnd(K))
    args = {"r": rnd(K), "w": -0.6065 * torch.sigmoid(rnd(K)), "k": rnd(K) * (1 - iclr) * K ** -0.5, "v": rnd(V),
            "a": -kappa, "b": kappa * iclr}
    return {n: x.to(dtype).requires_grad_(True) for n, x in args.items()}


def recurrent_case(path: str, B: int, T: int, params: dict, dtype=torch.float32, device: str = "cuda",
                   with_fla: bool = True) -> list[dict]:
    """A spec run by a fused recurrent or fixed-point path (block_diagonal, fp_rnn, the Householder family,
    RWKV-7) against the reference loop on the same device and tensors: forward, and forward+backward where
    the kernel has a backward. The loop is timed once per mode (it is slow). RWKV-7 also against fla's
    chunk_rwkv7 and fused_recurrent_rwkv7."""
    spec = recdsl.load(path, **params)
    algorithm = spec.plan("triton", needs_grad=False).algorithm
    if algorithm == "dplr_recurrent" and [a.name for a in spec.args] == ["r", "w", "k", "v", "a", "b"]:
        args = dplr_args(spec, B, T, device, dtype)
    else:
        args = elementwise_args(spec, B, T, device, dtype)
    tensors = list(args.values())
    shape = {"B": B, "T": T, **{k: v for k, v in spec.params}, "dtype": str(dtype).replace("torch.", ""),
             "algorithm": algorithm}
    rows = []

    add = _recorder(rows, spec.name, shape)

    ours = lambda: spec.op(**args, backend="triton")
    loop = lambda: spec.op(**args, backend="reference")
    # a fixed point that fits the fused iteration (the planner's choice) is timed on the unfused path too
    if algorithm.startswith("fixed_point"):
        from recdsl.backends.triton.fp_fused import match as match_fused
    fits = algorithm.startswith("fixed_point") and not isinstance(match_fused(spec.ir), str)
    # a second path of the same spec, timed beside the planner's: the unfused fixed point where the fused
    # iteration fits; for DPLR the fused recurrent forward where the chunkwise one (dplr_chunk.py) runs
    second = ("recdsl unfused", _fixed_point_mode("unfused", ours), "fixed_point_scan") if fits else None
    if algorithm == "dplr_recurrent":
        from .backends.triton.dplr import DPLR_FORWARD_ENV, chunked_forward, match as match_dplr
        if chunked_forward(match_dplr(spec.ir).decay, spec.ir.state[1][0], T):
            shape["forward"] = "chunk"
            second = ("recdsl recurrent forward", _with_env(DPLR_FORWARD_ENV, "recurrent", ours), "dplr_recurrent")
    runs = {"recdsl": ours}
    extra = {}
    if second:
        runs[second[0]] = second[1]
        extra[second[0]] = {"algorithm": second[2]}
    fla_x = _fla_rwkv7(args) if with_fla and spec.name == "rwkv7" else None
    if fla_x is not None:
        from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7
        for name, fn in (("fla chunk_rwkv7", chunk_rwkv7), ("fla fused_recurrent_rwkv7", fused_recurrent_rwkv7)):
            runs[name] = (lambda fn=fn: fn(*fla_x, scale=1.0, output_final_state=False))
    # fla's fused_recurrent_rwkv7 has no backward: its row records the error
    time_contestants(runs, tensors, lambda name, mode, ms, peak, **kw: add(name, mode, ms, peak, **kw, **extra.get(name, {})),
                     lambda name, mode, e: rows.append({"case": spec.name, "contestant": name, "mode": mode,
                                                        "error": str(e)[:200], **shape}))
    loop_ms = _once(_no_grad(loop))
    add("reference (PyTorch loop)", "fwd", loop_ms, calls=1)
    if loop_ms <= REFERENCE_BACKWARD_MS:
        add("reference (PyTorch loop)", "fwd+bwd", _once(_fwd_bwd(loop, tensors)), calls=1,
            note="differentiates every iteration" if algorithm.startswith("fixed_point") else None)
    else:   # autograd through T steps takes 50-100x the forward loop (67 s for rwkv7 at 4x4096x16x128)
        rows.append({"case": spec.name, "contestant": "reference (PyTorch loop)", "mode": "fwd+bwd",
                     "skipped": f"its forward took {loop_ms:.0f} ms", **shape})
    if fla_x is not None:   # how far our output is from chunk_rwkv7's
        from fla.ops.rwkv7 import chunk_rwkv7
        with torch.no_grad():
            o = ours()[0]
            ref = chunk_rwkv7(*fla_x, scale=1.0)[0]
        rows.append({"case": spec.name, "check": f"recdsl vs fla chunk_rwkv7 ({str(o.dtype).replace('torch.', '')})",
                     "rel_rmse": float((o.float() - ref.float()).norm() / ref.float().norm())})
    return rows


def _fla_rwkv7(args: dict):
    """fla's RWKV-7 arguments from ours (same layout [B, T, H, K], same DPLR convention
    S_t = (diag(exp(w)) + b a^T) S_(t-1) + k v^T), or None where fla does not import."""
    try:
        import fla.ops.rwkv7  # noqa: F401
    except ImportError:
        return None
    return [args[n] for n in ("r", "w", "k", "v", "a", "b")]


def _no_grad(fn):
    def f():
        with torch.no_grad():
            return fn()
    return f


def _fixed_point_mode(mode: str, run):
    """run() with RECDSL_FIXED_POINT=mode for the duration of each call (the planner reads it per call)."""
    from .planner import FIXED_POINT_ENV
    return _with_env(FIXED_POINT_ENV, mode, run)


def _with_env(name: str, value: str, run):
    """run() with the environment variable `name` set to `value` for the duration of each call."""
    def f():
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return run()
        finally:
            if old is None:
                del os.environ[name]
            else:
                os.environ[name] = old
    return f


def matrix_case(path: str, B: int, T: int, H: int, D: int, dtype=torch.bfloat16, with_fla: bool = True) -> list[dict]:
    """A matrix-state spec with a scalar or per-key decay (gla, mamba2, retnet, linear_attention) against
    fla's chunk_gla / chunk_simple_gla, plus the same recurrence with signed decays."""
    from recdsl.backends.triton.chunk_launch import chunk_linear_recurrence
    spec = recdsl.load(path, H=H, K=D, V=D)
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    rnd = lambda *shape: torch.randn(shape, device=dev, generator=gen)
    q, k, v = (rnd(B, T, H, D).to(dtype).requires_grad_(True) for _ in range(3))
    args = {"q": q, "k": k, "v": v}
    gate = next((a for a in spec.args if a.name == "g"), None)
    if gate is not None:
        g = torch.nn.functional.logsigmoid(rnd(B, T, H, *gate.shape))
        g = (g.clamp_min(-5) if gate.shape else g).requires_grad_(True)   # fla's benchmark inputs
        args["g"] = g
    tensors = list(args.values())
    shape = {"B": B, "T": T, "H": H, "D": D, "dtype": str(dtype).replace("torch.", "")}
    rows = []

    add = _recorder(rows, spec.name, shape)

    runs = {"recdsl": lambda: spec.op(**args, backend="triton")}
    if gate is not None:   # the same recurrence with signed decays, carried as (log|a|, sign)
        sign = torch.where(rnd(*args["g"].shape) < 0, -1, 1).to(torch.int8)   # the form the kernels read
        # calls without a gradient take the forward the planner gives the unsigned spec
        fused = spec.plan("triton", tokens=T, needs_grad=False,
                          batch_channels=B * H * D * D).algorithm == "fused_chunk"
        runs["recdsl signed decay"] = lambda: chunk_linear_recurrence(q, k, v, g=args["g"], sign=sign,
                                                                      inference="fused" if fused else "chunk")
    ref = None
    if with_fla:
        try:
            import fla.ops as F
        except ImportError:
            F = None
        if F is not None and spec.name == "gla":
            runs["fla chunk_gla"] = lambda: F.chunk_gla(q, k, v, args["g"])
        elif F is not None and spec.name in ("mamba2", "linear_attention"):
            fla_g = args.get("g")
            runs["fla chunk_simple_gla"] = lambda: F.chunk_simple_gla(q, k, v, fla_g)
    # fla refuses some backward passes on Hopper with this Triton: the row records its error
    time_contestants(runs, tensors, add, lambda name, mode, e: rows.append(
        {"case": spec.name, "contestant": name, "mode": mode, "error": str(e)[:200], **shape}))
    if with_fla:
        fla_run = next((f for n, f in runs.items() if n.startswith("fla")), None)
        if fla_run is not None:
            with torch.no_grad():
                ref = fla_run()[0]
        if ref is not None:
            with torch.no_grad():
                o = spec.op(**args, backend="triton")[0]
            rows.append({"case": spec.name, "check": "recdsl vs fla (bf16)", **shape,
                         "rel_rmse": float((o.float() - ref.float()).norm() / ref.float().norm())})
    return rows


def cold_start(path: str, **params) -> dict:
    """Seconds from loading the spec to the first result, in a fresh process: empty caches, then warm.
    CUDA's context creation is paid before the clock starts (it is not the spec's cost); importing
    Triton, parsing, planning, generating, compiling (or loading cached) kernels and the call are inside."""
    code = ("import time, torch, recdsl; torch.zeros(1, device='cuda'); torch.cuda.synchronize(); "
            "t0 = time.perf_counter(); import triton; t1 = time.perf_counter(); "
            f"s = recdsl.load({path!r}, **{params!r}); t2 = time.perf_counter(); "
            "h = (s.heads,) if s.heads else (); "
            "args = {a.name: torch.rand((2, 64) + h + a.shape if a.kind == 'input' else h + a.shape, device='cuda') "
            "for a in s.args}; "
            "o, _ = s.op(**args, backend='triton'); torch.cuda.synchronize(); t3 = time.perf_counter(); "
            "print(t3 - t0, t1 - t0, t2 - t1, t3 - t2)")
    out = {}
    with tempfile.TemporaryDirectory() as d:
        # A pip-installed torch ships compiled bytecode; an image without it recompiles torch's sources in
        # every process (5 s on the H100 image). The first run, with kernel caches thrown away after it,
        # fills a bytecode cache as an installation would have; it is reported too.
        env = {**os.environ, "PYTHONPYCACHEPREFIX": f"{d}/pycache"}
        runs = (("no Python bytecode cache", {"RECDSL_CACHE": f"{d}/prime/recdsl", "TRITON_CACHE_DIR": f"{d}/prime/triton"}),
                ("empty cache", {"RECDSL_CACHE": f"{d}/recdsl", "TRITON_CACHE_DIR": f"{d}/triton"}),
                ("warm cache", {"RECDSL_CACHE": f"{d}/recdsl", "TRITON_CACHE_DIR": f"{d}/triton"}))
        for label, caches in runs:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, **caches})
            if r.returncode:
                out[label] = r.stderr[-500:]
                continue
            total, imp, load, first = map(float, r.stdout.split())
            out[label] = {"total_s": round(total, 3), "import_triton_s": round(imp, 3), "load_spec_s": round(load, 3),
                          "first_call_s": round(first, 3)}
    return out


def write(rows: list[dict], out_dir: str, tag: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{tag}.jsonl"
    env = environment()
    with path.open("a") as f:
        for r in rows:
            f.write(json.dumps({**env, **r}) + "\n")
    return path


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    timed = [r for r in rows if "ms" in r]
    key = lambda r: (r["case"], r["mode"], r.get("T"), r.get("D"), str(r.get("gated", "")))
    cases = sorted({key(r) for r in timed})
    fig, axes = plt.subplots(1, len(cases), figsize=(4.5 * len(cases), 3.6), squeeze=False)
    for ax, (case, mode, T, D, gated) in zip(axes[0], cases):
        rs = [r for r in timed if key(r) == (case, mode, T, D, gated)]
        ax.barh([r["contestant"] for r in rs], [r["ms"] for r in rs],
                color=["#d62728" if r["contestant"] == "recdsl" else "#7f7f7f" for r in rs])
        for i, r in enumerate(rs):
            ax.text(r["ms"], i, f" {r['ms']:.3f}", va="center", fontsize=8)
        shape = ", ".join(f"{k}={rs[0][k]}" for k in ("B", "T", "H", "D", "K", "width", "n_h", "gated") if k in rs[0])
        ax.set_title(f"{case} {mode}\n{shape}", fontsize=8)
        ms = [r["ms"] for r in rs]
        log = max(ms) > 30 * min(ms)   # a PyTorch loop beside the kernels would flatten every other bar
        if log:
            ax.set_xscale("log")
        ax.set_xlabel("ms (median, lower is better" + (", log scale)" if log else ")"))
    # the GPU the rows were measured on (a plot redrawn from a results file elsewhere keeps it)
    fig.suptitle(next((r["gpu"] for r in rows if "gpu" in r), environment()["gpu"]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def dplr_shapes(shapes: str, overrides: list[str]) -> list[tuple[int, int, dict]]:
    """(B, T, spec parameters) per "B,T,H,D" of --shapes: H heads with K = V = D, then any -p NAME=VALUE."""
    out = []
    for sh in shapes.split(";"):
        B, T, H, D = map(int, sh.split(","))
        params = {"H": H, "K": D, "V": D}
        params.update({k: float(v) for k, _, v in (p.partition("=") for p in overrides)})
        out.append((B, T, params))
    return out


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="recdsl bench")
    ap.add_argument("file")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--width", type=int, default=2048, help="element-wise specs: channels")
    ap.add_argument("--shapes", default="4,4096,16,128;8,1024,8,64",
                    help="matrix-state and Householder specs: B,T,H,D;...")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default=time.strftime("%Y%m%d"))
    ap.add_argument("--no-fla", action="store_true")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                    help="input dtype (default: bf16; fp32 for the recurrent and fixed-point paths other than DPLR)")
    ap.add_argument("--no-cold-start", action="store_true", help="skip the fresh-process cold-start timing")
    ap.add_argument("-p", "--param", action="append", default=[],
                    help="a spec parameter NAME=VALUE (e.g. -p D=512, -p n_h=3)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("recdsl bench needs a CUDA device", file=sys.stderr)
        return 2
    spec = recdsl.load(args.file)
    try:
        algorithm = spec.plan("triton", needs_grad=False).algorithm
    except ValueError as e:
        print(f"recdsl bench: {e}", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype] if args.dtype else None
    rows: list[dict] = []
    path = Path(args.out) / f"{args.tag}.jsonl"

    def keep(new: list[dict]) -> None:
        """Each case's rows go to the file as soon as it is measured: a time limit loses only the case in
        flight."""
        for r in new:
            if "ms" not in r:
                print(json.dumps(r))
        write(new, args.out, args.tag)
        rows.extend(new)
    if algorithm == "dplr_recurrent":
        # issue 4's shapes, as for the other matrix states: H heads of K = V = D, bf16 unless asked
        for B, T, params in dplr_shapes(args.shapes, args.param):
            keep(recurrent_case(args.file, B, T, params, dtype=dtype or torch.bfloat16, with_fla=not args.no_fla))
            torch.cuda.empty_cache()
    elif algorithm in ("blockdiag_recurrent", "fixed_point_scan", "fixed_point_fused", "fixed_point_one_launch",
                       "delta_recurrent"):
        params = {k: float(v) for k, _, v in (p.partition("=") for p in args.param)}
        keep(recurrent_case(args.file, args.batch, args.length, params, dtype=dtype or torch.float32,
                            with_fla=not args.no_fla))
    elif algorithm == "elementwise_scan":
        keep(elementwise_case(args.file, args.batch, args.length, args.width, dtype=dtype or torch.bfloat16,
                              with_fla=not args.no_fla))
        if not args.no_cold_start:
            keep([{"case": spec.name, "cold_start_s": cold_start(args.file, D=args.width)}])
    elif algorithm == "delta_chunk":
        from .bench_delta import delta_case
        params = {k: int(float(v)) for k, _, v in (p.partition("=") for p in args.param)}
        for sh in args.shapes.split(";"):
            B, T, H, D = map(int, sh.split(","))
            gates = (False, True) if spec.name == "deltaproduct" else (None,)
            for gated in gates:
                keep(delta_case(args.file, B, T, H, D, params, gated=gated, dtype=dtype or torch.bfloat16,
                                with_fla=not args.no_fla))
                torch.cuda.empty_cache()
    elif algorithm in ("chunk", "fused_chunk"):
        for sh in args.shapes.split(";"):
            B, T, H, D = map(int, sh.split(","))
            keep(matrix_case(args.file, B, T, H, D, dtype=dtype or torch.bfloat16, with_fla=not args.no_fla))
            torch.cuda.empty_cache()
        if not args.no_cold_start:
            keep([{"case": spec.name, "cold_start_s": cold_start(args.file)}])
    plot(rows, str(path.with_suffix(".png")))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0
