"""Fixed-Point RNN timings side by side with the authors' implementation (github.com/dr-faustus/fp-rnn),
in one process on the same device, written as JSON lines.

Contestants, each at B, T, d_inner (= D), r reflections, fp32 and bf16:
  peer      FPRNN._fixed_point_iter: the no-grad loop of the Householder mixer (torch.compile'd) and the
            diagonal scan (torch associative_scan), ITERS iterations (thresh < 0, max_iter = ITERS,
            train mode so that max_iter holds); the same with the one _fixed_point_step its forward takes
            after the loop, without grad (the counterpart of recdsl's solve row, which has the closing
            step); and one differentiable _fixed_point_step + backward.
  recdsl fused / recdsl unfused   examples/fp_rnn.rec with tol = 1e-30, max_iter = ITERS: the solve
            (ITERS iterations and the closing step, no grad), and a training call (the solve, one
            differentiable step, backward). RECDSL_FIXED_POINT selects the path.
The peer's mixer computes u and alpha from x by its own projections on every iteration (mixer_h_dep off:
u free of the iterate, as in fp_rnn.rec); recdsl takes u and alpha as inputs. With --hdep the peer's mixer
reads [x_t ; h^(l-1)_(t-1)] (mixer_h_dep on, its default) and recdsl runs benchmarks/specs/fp_rnn_mixer_hdep.rec
(u and alpha from inputs plus maps Wu, Wa of h^(l-1)_(t-1), evaluated again every iteration; the maps drawn
with std 1/sqrt(D)). --tf32 lets float32 matrix products of both use TF32. Its files are read from
.peer/fp-rnn (git-ignored; copy models/{fp_rnn_block,mixer,model_utils}.py and models/ops/ there).

    python benchmarks/fp_rnn_peer.py --out benchmarks/results/fp_rnn_peer.jsonl        # on an H100
    python benchmarks/fp_rnn_peer.py --B 1 --T 16 --D 16 --iters 3 --no-compile       # CPU smoke
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / ".peer" / "fp-rnn"


def log(out, row: dict):
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def timed(fn, budget_s: float) -> dict:
    """Median milliseconds of fn: do_bench on CUDA, a few wall-clock calls on the CPU. One call is
    timed first: past `budget_s` it is reported alone instead of repeated."""
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()   # warm-up: compiles (torch.compile, Triton) happen here
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    once = 1000 * (time.perf_counter() - t0)
    if once > 1000 * budget_s / 10 or not cuda:
        reps = 1 if once > 1000 * budget_s / 10 else 3
        ts = [once]
        for _ in range(reps - 1):
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(1000 * (time.perf_counter() - t0))
        return {"ms": round(sorted(ts)[len(ts) // 2], 4), "calls": len(ts)}
    from triton.testing import do_bench
    return {"ms": round(float(do_bench(fn, warmup=25, rep=100, return_mode="median")), 4), "calls": "do_bench"}


def import_peer(no_compile: bool):
    """The authors' FPRNN class, or raise ImportError with what is missing."""
    if not (PEER / "models" / "fp_rnn_block.py").exists():
        raise ImportError(f"{PEER}/models/fp_rnn_block.py not found: copy the peer's models/ files there")
    # fp_rnn_block imports these at module level but uses them only with use_short_conv (off here);
    # GPU machines without network access may lack them: stand-ins that fail loudly if ever called
    for name, attr in (("causal_conv1d", "causal_conv1d_fn"), ("einops", "rearrange")):
        try:
            __import__(name)
        except ImportError:
            def missing(*a, _name=name, **k):
                raise RuntimeError(f"{_name} is not installed (stand-in from fp_rnn_peer.py)")
            sys.modules[name] = types.SimpleNamespace(**{attr: missing})
    if no_compile:   # the CPU smoke: torch.compile needs a C++ toolchain there
        torch.compile = lambda f=None, **k: (f if f is not None else (lambda g: g))
    sys.path.insert(0, str(PEER))
    import models.fp_rnn_block as block
    if not torch.cuda.is_available():
        # torch's associative_scan (the peer's linrec_hop) runs on CUDA only; the smoke takes the peer's
        # own sequential reference scan instead (labelled in the rows)
        from models.ops.linrec import linrec_ref
        block.linrec_hop = linrec_ref
    return block.FPRNN


def peer_rows(FPRNN, args, dtype, dev, out, shape):
    D, r = args.D, args.r
    if dev != "cuda":
        shape = {**shape, "note": "CPU smoke: the peer's linrec_ref scan, no torch.compile" if args.no_compile
                 else "CPU smoke: the peer's linrec_ref scan"}
    block = FPRNN(d_model=D // 2, d_mixer=D, expand=2, mixer_rank=r, mixer_proj_rank=-1, mixer_h_dep=args.hdep,
                  max_iter=args.iters, device=dev).to(dev, dtype)
    assert block.d_inner == D
    block.train()                       # eval mode lifts max_iter to 1000
    block.optimizer.thresh = -1.0       # never converged: exactly max_iter iterations, as recdsl with tol=1e-30
    g = torch.Generator(device=dev).manual_seed(0)
    rnd = lambda: torch.randn(args.B, args.T, D, device=dev, generator=g, dtype=torch.float32).to(dtype)  # noqa: E731
    x, xm = rnd(), rnd()
    b = torch.nn.functional.silu(rnd())
    lam = torch.sigmoid(rnd())
    it = lambda: block._fixed_point_iter(x, xm, b, lam)   # noqa: E731 (decorated no_grad)
    log(out, {**shape, "contestant": "peer fp-rnn", "mode": f"solve ({args.iters} it, no grad)", **timed(it, args.budget)})
    iters = block.fixed_point_iter[-1] - 1   # the peer records iter_idx + 1; iter_idx steps ran

    def forward():   # its layer's forward of the core: the loop, then its n_backwards = 1 step (here without grad)
        with torch.no_grad():
            return block._fixed_point_step(x, xm, b, it(), lam)
    log(out, {**shape, "contestant": "peer fp-rnn", "mode": f"solve+step ({args.iters} it + 1, no grad)",
              "note": "recdsl's solve row counts the closing step too", **timed(forward, args.budget)})
    h_star = it()
    leaves = [t.clone().requires_grad_(True) for t in (x, xm, b, lam)]
    gout = torch.randn_like(h_star)

    def step_bwd():
        for t in leaves:
            t.grad = None
        block.zero_grad(set_to_none=True)
        h = block._fixed_point_step(leaves[0], leaves[1], leaves[2], h_star, leaves[3])
        h.backward(gout)
    log(out, {**shape, "contestant": "peer fp-rnn", "mode": "step+bwd", **timed(step_bwd, args.budget)})

    def train():
        for t in leaves:
            t.grad = None
        block.zero_grad(set_to_none=True)
        h = block._fixed_point_iter(*(t.detach() for t in leaves))
        h = block._fixed_point_step(leaves[0], leaves[1], leaves[2], h, leaves[3])
        h.backward(gout)
    log(out, {**shape, "contestant": "peer fp-rnn", "mode": "solve+step+bwd", "iterations": iters,
              **timed(train, args.budget)})


def recdsl_rows(args, dtype, dev, out, shape):
    import recdsl
    from recdsl.bench import _fixed_point_mode, _with_env, elementwise_args
    path = ROOT / ("benchmarks/specs/fp_rnn_mixer_hdep.rec" if args.hdep else "examples/fp_rnn.rec")
    spec = recdsl.load(path, D=args.D, r=args.r, max_iter=args.iters, tol=1e-30)
    a = elementwise_args(spec, args.B, args.T, dev, dtype)
    for w in (w.name for w in spec.args if w.kind == "weight"):   # the maps of h: std 1/sqrt(D), not 1
        a[w] = (a[w].detach() * args.D ** -0.5).requires_grad_(True)
    backend = "triton" if dev == "cuda" or os.environ.get("TRITON_INTERPRET") == "1" else "reference"
    import warnings
    from recdsl import RecNotConverged
    warnings.simplefilter("ignore", RecNotConverged)   # tol = 1e-30: a fixed iteration count, as the paper times
    gout = None
    for mode, graphs in (("fused", "1"), ("fused", "0"), ("unfused", "1")):
        run = _fixed_point_mode(mode, _with_env("RECDSL_FP_GRAPH", graphs, lambda: spec.op(**a, backend=backend)))
        name = f"recdsl {mode}" + (", no CUDA graphs" if graphs == "0" else "")
        name = name if backend == "triton" else "recdsl reference (no Triton here)"
        with torch.no_grad():
            log(out, {**shape, "contestant": name, "mode": f"solve ({args.iters} it, no grad)",
                      "note": "plus the closing step", **timed(run, args.budget)})
        if gout is None:
            with torch.no_grad():
                gout = torch.randn_like(run()[0])

        def train():
            for t in a.values():
                t.grad = None
            run()[0].backward(gout)
        log(out, {**shape, "contestant": name, "mode": "solve+step+bwd", **timed(train, args.budget)})
        if backend != "triton":
            break


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--D", type=int, default=512, help="d_inner (the state width)")
    ap.add_argument("--r", type=int, default=2, help="Householder reflections per token")
    ap.add_argument("--iters", type=int, default=17)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds a contestant may take per mode (roughly)")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file too")
    ap.add_argument("--no-compile", action="store_true", help="run the peer without torch.compile (CPU smoke)")
    ap.add_argument("--hdep", action="store_true", help="the mixer reads the previous token's iterate (see above)")
    ap.add_argument("--tf32", action="store_true", help="float32 matrix products in TF32 (both contestants)")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--skip-recdsl", action="store_true")
    args = ap.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    env = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
           "peer_commit": (PEER / "COMMIT").read_text().strip() if (PEER / "COMMIT").exists() else None}
    log(args.out, {"env": env, "args": vars(args)})
    FPRNN = None
    if not args.skip_peer:
        try:
            FPRNN = import_peer(args.no_compile)
        except Exception as e:   # noqa: BLE001 (any import failure is a skip, reported)
            log(args.out, {"contestant": "peer fp-rnn", "skip": f"import failed: {type(e).__name__}: {e}"})
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        shape = {"B": args.B, "T": args.T, "D": args.D, "r": args.r, "iters": args.iters, "dtype": name,
                 "hdep": args.hdep, "tf32": args.tf32, "device": env["device"]}
        for label, fn, ok in (("peer fp-rnn", lambda: peer_rows(FPRNN, args, dtype, dev, args.out, shape), FPRNN),
                              ("recdsl", lambda: recdsl_rows(args, dtype, dev, args.out, shape), not args.skip_recdsl)):
            if not ok:
                continue
            try:
                fn()
            except Exception as e:   # noqa: BLE001 (one contestant's failure must not end the session)
                log(args.out, {**shape, "contestant": label, "error": f"{type(e).__name__}: {e}"[:500],
                               "trace": traceback.format_exc()[-1500:]})
            if dev == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
