"""Interpreter tier for the generated element-wise scan: forward, backward, state passing, varlen,
block edges, gate edges, fp16; the custom op's opcheck and torch.compile(fullgraph=True)."""
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

import recdsl

from conftest import example, random_args

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="GPU runs are covered by test_gpu.py")
EDGES = [1, 2, 3, 17, 63, 64, 65, 127, 129]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def both(spec, args, h0=None, **kw):
    """Run triton (fp32) and reference (fp64); return outputs, states and all gradients."""
    res = []
    for backend, dt in (("triton", torch.float32), ("reference", torch.float64)):
        a = {k: v.detach().to(dt).requires_grad_(True) for k, v in args.items()}
        h = None if h0 is None else h0.detach().to(dt).requires_grad_(True)
        o, S = spec.op(**a, initial_state=h, output_final_state=True, backend=backend, **kw)
        torch.manual_seed(7)
        do, dS = torch.randn(o.shape, dtype=torch.float64), torch.randn(S.shape, dtype=torch.float64)
        ((o.double() * do).sum() + (S.double() * dS).sum()).backward()
        grads = {k: v.grad for k, v in a.items()}
        if h is not None:
            grads["h0"] = h.grad
        res.append((o, S, grads))
    return res


@pytest.mark.parametrize("name", ["hgrn", "lru"])
@settings(max_examples=5, deadline=None, derandomize=True)
@given(T=st.sampled_from(EDGES), D=st.sampled_from([4, 8, 40]), B=st.integers(1, 2), seed=st.integers(0, 50))
def test_scan_matches_reference(name, T, D, B, seed):
    spec = recdsl.load(example(name), D=D)
    args = random_args(spec, B=B, T=T, dtype=torch.float32, seed=seed)
    h0 = torch.randn(B, D, generator=torch.Generator().manual_seed(seed))
    (o1, S1, g1), (o2, S2, g2) = both(spec, args, h0)
    assert rel(o1, o2) < 1e-5 and rel(S1, S2) < 1e-5
    for k in g2:
        assert rel(g1[k], g2[k]) < 1e-4, k


MULTI_HEAD_MATRIX = """# a Mamba-like scan with heads whose readout is the whole [D, N] state (c is unused)
recurrence mh(H = 2, D = 4, N = 3):
    heads H
    state h[D, N]
    input x[D], dt[D] positive, b[N], c[N]
    weight A_log[D, N] = 0
    transition diag(exp(-dt * exp(A_log)))
    write outer(dt * x, b)
    output y = h
"""


@pytest.mark.parametrize("name", ["mamba", "mamba_negeig"])
@settings(max_examples=4, deadline=None, derandomize=True)
@given(T=st.sampled_from([1, 15, 16, 17, 40]), D=st.sampled_from([3, 8, 20]), N=st.sampled_from([1, 3, 4]),
       B=st.integers(1, 2), seed=st.integers(0, 50))
def test_matrix_state_scan_matches_reference(name, T, D, N, B, seed):
    """mamba's [D, N] state: inputs along D and along N, the readout contracting N, signed decays."""
    spec = recdsl.load(example(name), D=D, N=N)
    args = random_args(spec, B=B, T=T, dtype=torch.float32, seed=seed)
    h0 = torch.randn(spec.state_shape(B), generator=torch.Generator().manual_seed(seed))
    (o1, S1, g1), (o2, S2, g2) = both(spec, args, h0)
    assert rel(o1, o2) < 1e-5 and rel(S1, S2) < 1e-5
    for k in g2:
        assert rel(g1[k], g2[k]) < 1e-4, k


def test_matrix_state_with_heads_and_varlen():
    spec = recdsl.load(MULTI_HEAD_MATRIX)
    cu = torch.tensor([0, 16, 17, 50], dtype=torch.int32)
    args = random_args(spec, B=1, T=50, dtype=torch.float32, seed=4)
    h0 = torch.randn(spec.state_shape(3))
    (o1, S1, g1), (o2, S2, g2) = both(spec, args, h0, cu_seqlens=cu)
    assert o1.shape == (1, 50, 2, 4, 3)
    assert rel(o1, o2) < 1e-5 and rel(S1, S2) < 1e-5
    assert (g1["c"] == 0).all()          # read by nothing: a zero gradient, not stale memory
    for k in g2:
        if k != "c":
            assert rel(g1[k], g2[k]) < 1e-4, k


@pytest.mark.parametrize("backward,name,schedule", [
    ("exclusive", "hgrn", "walk"), ("shifted", "hgrn", "walk"), ("exclusive", "mamba", "walk"),
    ("shifted", "mamba", "walk"), ("output", "hgrn", "walk"), ("output", "hgrn", "look_back"),
    ("output", "lru", "look_back"), ("exclusive", "hgrn", "look_back"), ("shifted", "hgrn", "look_back"),
    ("shifted", "mamba", "look_back")])
def test_backward_forms(name, backward, schedule, monkeypatch):
    """Each backward form on vector and matrix states (the output form where the readout is the state):
    several blocks per sequence, varlen with an empty sequence, an initial state and the final state's
    gradient."""
    import dataclasses
    from recdsl import planner
    plan_of = planner._scan_plan
    monkeypatch.setattr(planner, "_scan_plan", lambda spec, bc, tokens=None: dataclasses.replace(
        plan_of(spec, bc, tokens), block_t=8, block_d=4, scan_backward=backward, scan_schedule=schedule))
    spec = recdsl.load(example(name), D=4, **({"N": 3} if name == "mamba" else {}))
    cu = torch.tensor([0, 9, 9, 24, 40], dtype=torch.int32)
    args = random_args(spec, B=1, T=40, dtype=torch.float32, seed=5)
    h0 = torch.randn(spec.state_shape(4))
    (o1, S1, g1), (o2, S2, g2) = both(spec, args, h0, cu_seqlens=cu)
    assert rel(o1, o2) < 1e-5 and rel(S1, S2) < 1e-5
    for k in g2:
        assert rel(g1[k], g2[k]) < 1e-4, k


def test_output_backward_needs_the_state_as_readout():
    from recdsl.backends.triton.scan import generate
    spec = recdsl.load(example("mamba"), D=4, N=3)
    with pytest.raises(ValueError, match="readout that is the state itself"):
        generate(spec.ir, spec.args, "output")


def test_gates_at_zero_and_one():
    spec = recdsl.load(example("hgrn"), D=8)
    args = random_args(spec, B=2, T=70, dtype=torch.float32)
    g = args["g"].clone()
    g[:, :20] = 0.0          # a = 1: pure accumulation
    g[:, 30:35] = -200.0     # a = exp(-200) = 0: the state is forgotten
    (o1, S1, g1), (o2, S2, g2) = both(spec, {**args, "g": g})
    assert torch.isfinite(o1).all() and all(torch.isfinite(v).all() for v in g1.values())
    assert rel(o1, o2) < 1e-5 and rel(g1["x"], g2["x"]) < 1e-4 and rel(g1["g"], g2["g"]) < 1e-4


def test_varlen_equals_separate_calls():
    spec = recdsl.load(example("lru"), D=8)
    # an empty sequence passes its initial state through, and the final state's gradient back to it
    cu = torch.tensor([0, 5, 70, 70, 71, 140], dtype=torch.int32)
    args = random_args(spec, B=1, T=140, dtype=torch.float32, seed=2)
    h0 = torch.randn(5, 8)
    (o1, S1, g1), (o2, S2, g2) = both(spec, args, h0, cu_seqlens=cu)
    assert rel(o1, o2) < 1e-5 and rel(S1, S2) < 1e-5
    for k in g2:
        assert rel(g1[k], g2[k]) < 1e-4, k


def test_step_by_step_equals_forward():
    """Token-by-token calls plan one short walked block (BT=16); the 24-token call over 16 channels the
    look-back's tiles (too few channels for walking programs to fill a GPU)."""
    spec = recdsl.load(example("hgrn"), D=8)
    short, long = spec.plan("triton", batch_channels=16, tokens=1), spec.plan("triton", batch_channels=16, tokens=24)
    assert (short.block_t, short.scan_schedule) == (16, "walk") and long.scan_schedule == "look_back"
    args = random_args(spec, B=2, T=24, dtype=torch.float32)
    o, S = spec.op(**args, output_final_state=True, backend="triton")
    state, outs = None, []
    for t in range(24):
        ot, state = spec.op(**{k: v[:, t:t + 1] for k, v in args.items()}, initial_state=state,
                            output_final_state=True, backend="triton")
        outs.append(ot)
    assert rel(torch.cat(outs, 1), o) < 1e-6 and rel(state, S) < 1e-6


def test_fp16_inputs():
    spec = recdsl.load(example("hgrn"), D=16)
    args = random_args(spec, B=2, T=65, dtype=torch.float32)
    o16, S16 = spec.op(**{k: v.half() for k, v in args.items()}, output_final_state=True, backend="triton")
    o64, S64 = spec.op(**{k: v.double() for k, v in args.items()}, output_final_state=True, backend="reference")
    assert o16.dtype == torch.float16 and S16.dtype == torch.float32
    assert rel(o16, o64) < 2e-3 and rel(S16, S64) < 2e-3


def test_backend_errors_are_clear():
    with pytest.raises(ValueError, match="cannot run this spec yet: element-wise scan: the transition is not"):
        # diagonal plus rank two: no generated kernel family fits it
        spec = recdsl.load(open(example("rwkv7")).read().replace("+ outer(b, a)", "+ outer(b, a) + outer(a, b)"),
                           H=1, K=4, V=4)
        spec.op(**random_args(spec, T=3, dtype=torch.float32), backend="triton")
    with pytest.raises(ValueError, match="cannot run this spec yet: .*a per-key gate after the reflections"):
        src = open(example("gated_deltanet")).read().replace("input g log", "input g[K] log")
        spec = recdsl.load(src, H=1, K=4, V=4)   # exp(g) * householder(k, beta): the gate after the reflection
        args = {k: v.requires_grad_() for k, v in random_args(spec, T=3, dtype=torch.float32).items()}
        spec.op(**args, backend="triton")
    spec = recdsl.load(example("hgrn"), D=4)
    with pytest.raises(ValueError, match="fp64"):
        spec.op(**random_args(spec, T=3), backend="triton")


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["walk", "look_back"])
def test_opcheck_and_torch_compile(schedule):
    from recdsl.backends.triton.launch import scan_op
    spec = recdsl.load(example("lru"), D=8)
    args = random_args(spec, B=2, T=5, dtype=torch.float32)
    op = scan_op(spec, 64, 32, 4, "exclusive", schedule).custom_op
    ins = [args["x"].requires_grad_(), args["r"].requires_grad_()]
    torch.library.opcheck(op, (ins, [args["lam"].requires_grad_()], [], torch.randn(2, 8, requires_grad=True),
                               None, True))
    layer = recdsl.compile(example("hgrn"), D=8, d_model=8, backend="triton")
    x = torch.randn(2, 5, 8)
    y_ref = recdsl.compile(example("hgrn"), D=8, d_model=8)
    y_ref.load_state_dict(layer.state_dict())
    compiled = torch.compile(layer, fullgraph=True)
    y, _ = compiled(x)
    assert rel(y, y_ref(x)[0]) < 1e-5
    y.square().sum().backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_generated_source_names_ir_nodes():
    from recdsl.backends.triton.scan import generate
    spec = recdsl.load(example("lru"))
    src = generate(spec.ir, spec.args)
    assert "# IR %" in src and "@triton.jit" in src and "tl.associative_scan" in src
    compile(src, "<generated>", "exec")   # the generated text is valid Python


def test_kernel_cache_is_atomic_and_verified(tmp_path, monkeypatch):
    from recdsl.backends.triton import cache
    monkeypatch.setenv("RECDSL_CACHE", str(tmp_path))
    body = "X = 1\n"
    p = cache.write_module("k1", body)
    assert cache._intact(p) and not list(tmp_path.glob(".*.tmp"))
    p.write_text(p.read_text().replace("X = 1", "X = 2"))   # tampered: the hash no longer matches
    assert not cache._intact(p)
    mod = cache.load_module("k1", body)
    assert mod.X == 1 and cache._intact(p)


def test_concurrent_writers(tmp_path):
    import subprocess
    import sys
    code = ("import sys; from recdsl.backends.triton import cache; "
            "[cache.write_module('same', 'Y = %d\\n' % 7) for _ in range(50)]")
    env = {**os.environ, "RECDSL_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(4)]
    assert all(p.wait() == 0 for p in procs)
    from recdsl.backends.triton import cache
    assert cache._intact(tmp_path / "same.py") and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_kernels_compile_for_sm80_and_sm90():
    """AOT tier: real sm_80/sm_90 builds without a GPU, in a process without the interpreter."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    names = ["hgrn", "lru", "mamba", "mamba_negeig", "rwkv7"]   # rwkv7: the DPLR forward and backward
    r = subprocess.run([sys.executable, "-m", "recdsl.backends.triton.aot", *map(example, names)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    # four scan kernels (walked and look-back, forward and backward) per scan spec; rwkv7's two
    assert r.stdout.count("ok ") == 8 * 4 + 4 and "sm_90" in r.stdout and "sm_80" in r.stdout


def test_exp_is_the_special_function_unit_outside_the_interpreter(monkeypatch):
    """Generated modules define _exp: ex2.approx.ftz on a GPU, tl.exp under Triton's interpreter."""
    from recdsl.backends.triton.exprs import FORWARD, exp_function
    assert FORWARD["exp"].startswith("_exp(")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "ex2.approx.ftz.f32" in exp_function()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "tl.exp(x)" in exp_function() and "asm" not in exp_function()
