"""Shared helpers: small specs and random, well-conditioned arguments for them."""
import glob
import os

import pytest
import torch

# without a GPU, Triton kernels run in the interpreter (set before anything imports triton)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.rec")))
SMALL = dict(H=2, K=4, V=3, D=4, N=3, NB=2, b=3, r=2, d_model=8)


def example(name: str) -> str:
    return os.path.join(ROOT, "examples", f"{name}.rec")


def small(path: str, **extra):
    """Load an example at test sizes (only the parameters it declares are overridden)."""
    import recdsl
    declared = dict(recdsl.load(path).params)
    return recdsl.load(path, **{**{k: v for k, v in SMALL.items() if k in declared}, **extra})


def random_args(spec, B=2, T=6, dtype=torch.float64, seed=0):
    """Arguments in each input's declared range, so every recurrence stays well conditioned."""
    g = torch.Generator().manual_seed(seed)
    H = spec.heads
    out = {}
    for a in spec.args:
        lead = ((H,) if H else ()) if a.kind == "weight" else (B, T) + ((H,) if H else ())
        shape = lead + a.shape
        node = next(n for n in spec.ir.leaves(a.kind) if n.args[0] == a.name)
        cons = dict((c[0], c) for c in node.args[1])
        u = torch.rand(shape, generator=g, dtype=dtype)
        if "interval" in cons:
            lo, hi = cons["interval"][1], cons["interval"][2]
            x = lo + (hi - lo) * (0.05 + 0.9 * u)
        elif "log" in cons:
            x = -u * 0.9 - 0.02
        elif "positive" in cons:
            x = u + 0.05
        else:
            x = torch.randn(shape, generator=g, dtype=dtype) * 0.5
        out[a.name] = x
    if spec.name in ("fp_rnn", "fp_mamba"):
        out["alpha"] = out["alpha"] * 0.25   # keep ||I - Q|| < 1 so the fixed point is a contraction
    return out


def bench_spec(name: str) -> str:
    return os.path.join(ROOT, "benchmarks", "specs", f"{name}.rec")


def fp_mamba_hdep_args(spec, B, T, dtype, seed, gain=0.1):
    """random_args for benchmarks/specs/fp_mamba_hdep.rec whose fixed point is a contraction, reached in about
    22 fp32 iterations: the maps of y^(l-1)_(t-1) scaled by `gain`, weak reflections, and inputs large against
    the normalised readout (the LayerNorm's gain is sqrt(D) / |v - mean(v)|); the skip's and the mean's weights
    at their initialisers' value."""
    args = random_args(spec, B=B, T=T, dtype=dtype, seed=seed)
    for k in ("Wb", "Wc", "Wu", "Wa"):
        args[k] = gain * args[k]
    D = spec.ir.state[1][0]
    args.update(alpha_in=args["alpha_in"] - 1, x=4 * args["x"], Dskip=torch.ones(D, dtype=dtype),
                ones=torch.ones(D, dtype=dtype))
    return args


def cuda_args(spec, B, T, dtype, seed=0):
    """random_args on the GPU in `dtype`, leaves that require grad."""
    return {k: v.to("cuda", dtype).requires_grad_(True) for k, v in
            random_args(spec, B=B, T=T, dtype=torch.float32, seed=seed).items()}


def check_against_reference(spec, args: dict, h0, cu_seqlens, fwd_tol=1e-5, grad_tol=1e-4, label=""):
    """spec.op on the Triton backend (args and h0 fp32, requiring grad) against the reference in fp64: the
    output and final state, then the gradient of every argument and of h0 through both."""
    rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()
    o, S = spec.op(**args, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens, backend="triton")
    ref = {n: x.detach().double().requires_grad_(True) for n, x in args.items()}
    rh0 = h0.detach().double().requires_grad_(True)
    ro, rS = spec.op(**ref, initial_state=rh0, output_final_state=True, cu_seqlens=cu_seqlens, backend="reference")
    assert rel(o, ro) < fwd_tol and rel(S, rS) < fwd_tol
    w1, w2 = torch.randn_like(ro), torch.randn_like(rS)
    got = torch.autograd.grad((o * w1.float()).sum() + (S * w2.float()).sum(), list(args.values()) + [h0])
    want = torch.autograd.grad((ro * w1).sum() + (rS * w2).sum(), list(ref.values()) + [rh0])
    for n, a, b in zip(list(args) + ["h0"], got, want):
        assert rel(a, b) < grad_tol, (label, n, rel(a, b))


@pytest.fixture(params=[os.path.basename(p)[:-4] for p in EXAMPLES])
def example_name(request):
    return request.param


def step_through(layer, x):
    """A compiled layer's outputs token by token through step(), stacked to [B, T, d_model]."""
    state, ys = layer.init_state(x.shape[0]), []
    for t in range(x.shape[1]):
        yt, state = layer.step(x[:, t], state)
        ys.append(yt)
    return torch.stack(ys, 1)


_SM90_SCRIPT = r"""
import importlib, json, os, re, subprocess, sys, tempfile, time
import triton
try:
    from triton.compiler import ASTSource
    from triton.backends.compiler import GPUTarget
except ImportError as e:
    print(json.dumps({"skip": f"AOT API unavailable: {e}"})); sys.exit(0)
def usage(cubin):   # [bytes of local stack (spilled registers), registers], by the cuobjdump Triton bundles
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return [None, None]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    found = [re.search(key + r":(\d+)", text) for key in ("STACK", "REG")]
    return [int(m.group(1)) if m else None for m in found]
module, function, args, kwargs = json.loads(sys.argv[1])
out = []
for name, fn, sig, const, attrs, opts in getattr(importlib.import_module(module), function)(*args, **kwargs):
    t = time.time()
    kern = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 32), options=opts)
    out.append([name, len(kern.asm["cubin"]), round(time.time() - t, 1), kern.metadata.shared] + usage(kern.asm["cubin"]))
print(json.dumps({"ok": out}))
"""


def compile_sm90(module: str, function: str, *args, with_shared: bool = False, with_registers: bool = False,
                 **kwargs):
    """Build the (name, fn, signature, constexprs, attrs, options) jobs that module.function(*args)
    returns into sm_90 cubins, in a subprocess without the interpreter. Returns [[name, cubin bytes,
    seconds]] (with_shared: and the kernel's shared memory and its local stack in bytes; with_registers: and
    its registers too; stack and registers None where cuobjdump is missing); skips the test where this Triton
    has no ahead-of-time API or no ptxas."""
    import json
    import subprocess
    import sys
    import pytest
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _SM90_SCRIPT, json.dumps([module, function, args, kwargs])], cwd=root,
                       env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        if "ptxas" in r.stderr and ("not found" in r.stderr or "No such file" in r.stderr):
            pytest.skip("no ptxas available for sm_90")
        raise AssertionError(r.stderr[-4000:])
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if "skip" in res:
        pytest.skip(res["skip"])
    return [row[:6 if with_registers else 5 if with_shared else 3] for row in res["ok"]]
