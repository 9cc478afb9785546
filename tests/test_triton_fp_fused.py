"""The fused fixed-point iteration (backends/triton/fp_fused.py) under the Triton interpreter: against the
unfused path (RECDSL_FIXED_POINT=unfused) and the fp64 reference, the same iterations and residuals,
damping, varlen, the gradient, non-convergence, pattern matching and routing; an sm_90 build."""
import pytest
import torch

import recdsl
from recdsl import RecNotConverged
from recdsl.opcall import call_op

from conftest import compile_sm90, example, random_args

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tier; GPU runs are in test_gpu.py")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def solve(spec, args, monkeypatch, mode, per_call=1, **call):
    """(o, final state, SolveInfo) on the Triton backend with RECDSL_FIXED_POINT=mode; the fused path runs
    `per_call` iterations per driver call (1: the unfused path's iteration counts exactly)."""
    monkeypatch.setenv("RECDSL_FIXED_POINT", mode)
    monkeypatch.setenv("RECDSL_FP_PER_CALL", str(per_call))
    want = "fixed_point_fused" if mode == "fused" else "fixed_point_scan"
    assert spec.plan("triton").algorithm == want
    return call_op(spec, (), dict(args), call.get("initial_state"), True, call.get("cu_seqlens"), "triton")


CASES = [   # D, r, B, T, blocks ("BT,BD,warps" or None: the default, from whole rows (D = 8) to 8-channel blocks)
    (8, 1, 2, 11, None),
    (32, 2, 1, 130, None),
    (16, 3, 2, 20, None),
    (32, 2, 2, 45, "16,8,2"),    # channel blocks: partial row maxima reduced on the host
    (24, 3, 1, 70, "32,16,4"),   # D not a power of two, a masked tail block
]


@pytest.mark.parametrize("D,r,B,T,blocks", CASES)
def test_fused_matches_unfused_and_reference(D, r, B, T, blocks, monkeypatch):
    if blocks:
        monkeypatch.setenv("RECDSL_FP_BLOCKS", blocks)
    spec = recdsl.load(example("fp_rnn"), D=D, r=r, tol=1e-4)   # a loose tol: fewer interpreted iterations
    args = random_args(spec, B=B, T=T, dtype=torch.float32, seed=D + T)
    h0 = torch.randn(B, D)
    with torch.no_grad():
        o, S, info = solve(spec, args, monkeypatch, "fused", initial_state=h0)
        ou, Su, infou = solve(spec, args, monkeypatch, "unfused", initial_state=h0)
    ro, rS = spec.op(**{k: v.double() for k, v in args.items()}, initial_state=h0.double(), output_final_state=True,
                     backend="reference")
    assert rel(o, ro) < 1e-4 and rel(S, rS) < 1e-4
    assert rel(o, ou) < 1e-5 and rel(S, Su) < 1e-5
    assert info.converged and info.iterations == infou.iterations > 1
    assert info.residual.shape == infou.residual.shape == (B,)
    # the kernel's residual is solve.relative_change's: per sequence, the same values after a few iterations
    # (at convergence both are at fp32 rounding level, 1e-7, where they differ in the rounding)
    few = recdsl.load(example("fp_rnn"), D=D, r=r, max_iter=3)
    with torch.no_grad(), pytest.warns(RecNotConverged):
        _, _, info = solve(few, args, monkeypatch, "fused", initial_state=h0)
    with torch.no_grad(), pytest.warns(RecNotConverged):
        _, _, infou = solve(few, args, monkeypatch, "unfused", initial_state=h0)
    assert info.iterations == infou.iterations == 3 and (info.residual > 1e-4).all()
    assert torch.allclose(info.residual, infou.residual, rtol=1e-4)


@pytest.mark.parametrize("blocks", [None, "16,8,2"])
def test_varlen_with_an_empty_sequence(blocks, monkeypatch):
    if blocks:
        monkeypatch.setenv("RECDSL_FP_BLOCKS", blocks)
    spec = recdsl.load(example("fp_rnn"), D=16, r=2, tol=1e-5)
    cu = torch.tensor([0, 6, 6, 17, 26], dtype=torch.int32)
    args = random_args(spec, B=1, T=26, dtype=torch.float32, seed=2)
    h0 = torch.randn(4, 16)
    with torch.no_grad():
        o, S, info = solve(spec, args, monkeypatch, "fused", initial_state=h0, cu_seqlens=cu)
        ou, Su, infou = solve(spec, args, monkeypatch, "unfused", initial_state=h0, cu_seqlens=cu)
    ro, rS = spec.op(**{k: v.double() for k, v in args.items()}, initial_state=h0.double(), output_final_state=True,
                     cu_seqlens=cu, backend="reference")
    assert rel(o, ro) < 1e-4 and rel(S, rS) < 1e-4 and rel(S, Su) < 1e-5
    assert info.iterations == infou.iterations and info.residual.shape == infou.residual.shape == (1,)


def test_damping_takes_the_same_steps(monkeypatch):
    src = open(example("fp_rnn")).read().replace("max_iter = max_iter", "max_iter = max_iter, damping = 0.6")
    spec = recdsl.load(src, D=8, r=2)
    args = random_args(spec, B=2, T=20, dtype=torch.float32, seed=5)
    with torch.no_grad():
        o, _, info = solve(spec, args, monkeypatch, "fused")
        ou, _, infou = solve(spec, args, monkeypatch, "unfused")
    ro, _ = spec.op(**{k: v.double() for k, v in args.items()}, backend="reference")
    assert info.iterations == infou.iterations and info.damping == infou.damping == 0.6
    assert rel(o, ro) < 1e-5 and rel(o, ou) < 1e-5


def test_several_iterations_per_call(monkeypatch):
    """K fused launches per driver call: at a fixed iteration count (tol never met, max_iter not a multiple
    of K) the very same iterate; converging, the count rounds up to a call's end and the result stays
    within the tolerance of the one-per-call solve."""
    spec = recdsl.load(example("fp_rnn"), D=16, r=2, max_iter=7, tol=1e-30)
    args = random_args(spec, B=2, T=30, dtype=torch.float32, seed=4)
    with torch.no_grad(), pytest.warns(RecNotConverged):
        o1, S1, info1 = solve(spec, args, monkeypatch, "fused", per_call=1)
    with torch.no_grad(), pytest.warns(RecNotConverged):
        o4, S4, info4 = solve(spec, args, monkeypatch, "fused", per_call=4)    # calls of 4 and 3
    assert info1.iterations == info4.iterations == 7 and torch.equal(o1, o4) and torch.equal(S1, S4)
    spec = recdsl.load(example("fp_rnn"), D=16, r=2, tol=1e-5)
    with torch.no_grad():
        o1, _, info1 = solve(spec, args, monkeypatch, "fused", per_call=1)
        o3, _, info3 = solve(spec, args, monkeypatch, "fused", per_call=3)
    assert info1.converged and info3.converged and info3.iterations % 3 == 0
    assert info1.iterations <= info3.iterations < info1.iterations + 3 and rel(o3, o1) < 1e-4


@pytest.mark.parametrize("D,r,T,steps", [(8, 3, 13, 1), (24, 2, 40, 3), (160, 1, 9, 2)])
def test_gradient_is_the_unfused_step_at_the_fused_fixed_point(D, r, T, steps, monkeypatch):
    """The fused step (fp_fused_step.py: the write's kernel and its backward, then the scan) against the
    unfused step's autograd; several steps differentiate through the iterate too (dhp); D = 160 spans two
    channel tiles of the token-parallel kernels."""
    src = open(example("fp_rnn")).read().replace("max_iter = max_iter", f"max_iter = max_iter, backward_steps = {steps}")
    spec = recdsl.load(src, D=D, r=r)
    args = random_args(spec, B=2, T=T, dtype=torch.float32, seed=9)
    w = torch.randn(2, T, D)
    grads = {}
    for mode in ("fused", "unfused"):
        leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
        o, _, info = solve(spec, leaves, monkeypatch, mode)
        (o * w).sum().backward()
        grads[mode] = [leaves[k].grad for k in args]
    for k, a, b in zip(args, grads["fused"], grads["unfused"]):
        assert rel(a, b) < 1e-4, k


@pytest.mark.parametrize("blocks", [None, "16,8,2"])
def test_iterations_write_into_given_buffers(blocks, monkeypatch):
    """FusedIteration.iterations(out=...) (the CUDA graphs' slots, fp_graph.py): the last iterate and its dot
    products land in the given tensors, equal to the run without them; whole rows and channel blocks.
    The operands come from fused_operands, which the graphs capture; the pattern records what it reads."""
    from recdsl.backends.triton.fixed_point import fused_operands
    from recdsl.backends.triton.fp_fused import match
    from recdsl.opcall import prepare
    if blocks:
        monkeypatch.setenv("RECDSL_FP_BLOCKS", blocks)
    spec = recdsl.load(example("fp_rnn"), D=16, r=2)
    args = random_args(spec, B=2, T=21, dtype=torch.float32, seed=6)
    raw, options, _, _ = prepare(spec, (), dict(args))
    pattern = match(spec.ir)
    assert pattern.reads == ("alpha", "lam", "u", "x")         # c (the readout's) is not the solve's
    step = fused_operands(spec, pattern, raw, options, 2, 21, None, None)
    start = {"h": torch.zeros(2, 21, 1, 16)}
    want, res = step.iterations(start, 0.8, 3)
    out = {"h": torch.full((2, 21, 1, 16), float("nan")), "dots": torch.full((2 * 21, 2), float("nan"))}
    got, res_out = step.iterations(start, 0.8, 3, out=out)
    assert torch.equal(out["h"], want["h"]) and torch.equal(out["dots"], want["dots"])
    assert torch.equal(got["h"], want["h"]) and torch.equal(res_out, res)


@pytest.mark.parametrize("r", [1, 2, 3, 4])
def test_reflection_coefficients_and_their_gradient(r):
    """fp_coefficients.coefficients (one autograd node with a hand-written backward) against the recursion written
    with torch ops, and gradcheck in fp64."""
    from recdsl.backends.triton.fp_coefficients import coefficients
    g = torch.Generator().manual_seed(r)
    u = torch.randn(5, r, 7, dtype=torch.float64, generator=g, requires_grad=True)
    s = torch.rand(5, r, dtype=torch.float64, generator=g, requires_grad=True)
    rows = []
    for i in range(r):
        row = torch.eye(r, dtype=u.dtype)[i].expand(5, r)
        for j in range(i):
            row = row - (u[:, i] * u[:, j]).sum(-1)[:, None] * rows[j]
        rows.append(s[:, i, None] * row)
    assert torch.allclose(coefficients(u, s), torch.stack(rows, -2))
    assert torch.autograd.gradcheck(coefficients, (u, s))


@pytest.mark.parametrize("r, D", [(1, 7), (2, 40), (3, 130)])
def test_dots_kernel_gives_dot_and_gram_products(r, D):
    """fp_fused_dots: d_i = u_i . (x - hp) and the Gram products u_i . u_j (j < i, zero elsewhere, over
    several channel blocks when D > 128), and the coefficients from them (coefficients_from_gram) equal to
    coefficients(u, s)."""
    from recdsl.backends.triton.fp_coefficients import coefficients, coefficients_from_gram
    from recdsl.backends.triton.fp_fused import FusedIteration, load, match
    spec = recdsl.load(example("fp_rnn"), D=D, r=r)
    pattern = match(spec.ir)
    g = torch.Generator().manual_seed(D)
    NTOK = 37
    u, x, hp = (torch.randn(*shape, generator=g) for shape in ((NTOK, r, D), (NTOK, D), (NTOK, D)))
    s = torch.rand(NTOK, r, generator=g)
    step = FusedIteration(pattern, x, x, x, u, u, None, None, torch.zeros(NTOK, dtype=torch.int32), 1, NTOK,
                          load(pattern))      # only x, u and the module matter to dots()
    d, G = step.dots(hp, gram=True)
    RP = d.shape[1]
    want = torch.zeros(NTOK, RP)
    want[:, :r] = torch.einsum("nrd,nd->nr", u, x - hp)
    gram = torch.einsum("nid,njd->nij", u, u).tril(-1)
    assert rel(d, want) < 1e-6 and torch.equal(step.dots(hp), d)
    assert (G[:, :r, :r] - gram).abs().max() < 1e-4 and not G[:, r:].any() and not G[:, :, r:].any()
    assert rel(coefficients_from_gram(G, s), coefficients(u, s)) < 1e-6


def test_layer_trains_and_warns_when_not_converged(monkeypatch):
    monkeypatch.setenv("RECDSL_FIXED_POINT", "fused")
    torch.manual_seed(3)
    layer = recdsl.compile(example("fp_rnn"), D=8, d_model=16, backend="triton")
    y, _ = layer(torch.randn(2, 7, 16))
    y.square().mean().backward()
    assert layer.last_solve.converged and layer.last_solve.iterations > 1
    assert all(p.grad is not None for p in layer.parameters())
    spec = recdsl.load(example("fp_rnn"), D=8, max_iter=2)
    assert spec.plan("triton").algorithm == "fixed_point_fused"
    with pytest.warns(RecNotConverged, match="not reached after 2 iterations"):
        with torch.no_grad():
            spec.op(**random_args(spec, B=1, T=20, dtype=torch.float32, seed=1), backend="triton")


# the same recurrence written differently: commuted products and sums, a compose of two householder
# factors (one vector u with a scalar s, one [2, D] with s[2]), the decay through an expression
VARIANT = """
recurrence fp_variant(D = 6):
    state h[D]
    input lam[D] in (0, 1), u[D] l2norm, s in (0, 0.3), v[2, D] l2norm, t[2] in (0, 0.3), x[D]
    solve tol = 1e-6, max_iter = 300
    let h_prev = prev(h)
    transition diag(lam * lam)
    write (h_prev + mix(householder(v, t) * householder(u, s), x - h_prev)) * (1 - lam)
    output y = h * 2
"""


def test_pattern_matching_is_structural(monkeypatch):
    spec = recdsl.load(VARIANT)
    args = random_args(spec, B=2, T=15, dtype=torch.float32, seed=3)
    with torch.no_grad():
        o, S, info = solve(spec, args, monkeypatch, "fused")
    ro, rS = spec.op(**{k: v.double() for k, v in args.items()}, output_final_state=True, backend="reference")
    assert spec.memo["fp_fused_pattern"].r == 3
    assert rel(o, ro) < 1e-5 and rel(S, rS) < 1e-5


# operands evaluated in the kernel from every kind of leaf (a per-token scalar, a weight vector and a
# weight scalar, an option), and one that is not (x, l2-normalised: whole rows, materialised)
LEAVES = """
recurrence fp_leaves(D = 8):
    state h[D]
    input lam[D] in (0, 1), q in (0, 1), u[2, D] l2norm, s[2] in (0, 1), x[D] l2norm, c[D]
    weight wd[D], k0
    option k = 0.5
    solve tol = 1e-6, max_iter = 300
    let h_prev = prev(h)
    transition diag(lam * sigmoid(wd) ^ 2 * sigmoid(k0))
    write (1 - q * k) * (mix(householder(u, s), x - h_prev) + h_prev)
    output y = c * h
"""


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_operands_evaluated_in_the_kernel(dtype, monkeypatch):
    from recdsl.backends.triton.fp_fused import generate, match
    spec = recdsl.load(LEAVES)
    pattern = match(spec.ir)
    assert set(pattern.inline.targets) == {pattern.a, pattern.g}
    assert set(pattern.inline.leaves) == {("input", "lam"), ("input", "q"), ("weight", "wd"), ("weight", "k0"),
                                          ("option", "k")}
    text = generate(pattern)
    assert "tl.load(x + off" in text and "tl.load(a + off" not in text and "tl.load(g + off" not in text
    args = {k: (v.to(dtype) if v.dim() > 1 else v) for k, v in
            random_args(spec, B=2, T=19, dtype=torch.float32, seed=8).items()}
    with torch.no_grad():
        o, S, info = solve(spec, dict(args, k=0.3), monkeypatch, "fused")
    ro, rS = spec.op(**{k: v.double() for k, v in args.items()}, k=0.3, output_final_state=True,
                     backend="reference")
    assert info.converged and rel(o, ro) < (1e-5 if dtype == torch.float32 else 2e-3) and rel(S, rS) < 1e-5


HIDDEN = """
recurrence fp_hidden(D = 6):
    state h[D]
    input lam[D] in (0, 1), x[D]
    solve tol = 1e-7, max_iter = 500
    let h_prev = prev(h)
    transition diag(lam * sigmoid(h_prev))
    write (1 - lam) * (x + 0.5 * h_prev)
    output y = h
"""


def test_routing_and_reasons(monkeypatch):
    plan = recdsl.load(example("fp_rnn"), D=8).plan("auto", on_cuda=True)   # the default where the spec fits
    assert plan.algorithm == "fixed_point_fused" and "one fused launch per iteration" in plan.text()
    assert "measured faster than the unfused path" in plan.text()
    monkeypatch.setenv("RECDSL_FIXED_POINT", "fused")
    plan = recdsl.load(example("fp_rnn"), D=8).plan("auto", on_cuda=True)
    assert plan.algorithm == "fixed_point_fused"
    monkeypatch.delenv("RECDSL_FIXED_POINT")
    assert recdsl.load(example("fp_rnn"), D=8).plan("auto", on_cuda=False).backend == "reference"
    hidden = recdsl.load(HIDDEN)
    plan = hidden.plan("triton")
    assert plan.algorithm == "fixed_point_scan" and "the decay depends on the previous iterate" in plan.text()
    monkeypatch.setenv("RECDSL_FIXED_POINT", "unfused")
    plan = recdsl.load(example("fp_rnn"), D=8).plan("triton")
    assert plan.algorithm == "fixed_point_scan" and "RECDSL_FIXED_POINT=unfused" in plan.text()
    monkeypatch.setenv("RECDSL_FIXED_POINT", "fused")
    with pytest.raises(ValueError, match="does not fit the fused iteration: the decay depends"):
        hidden.plan("triton")
    monkeypatch.setenv("RECDSL_FIXED_POINT", "fast")
    with pytest.raises(ValueError, match="expected one of"):
        hidden.plan("triton")


@pytest.mark.parametrize("write,reason", [
    ("(1 - lam) * (x + 0.5 * h_prev)", "not g * (mix(...) + prev(h))"),
    ("(1 - lam) * (mix(householder(u, 2 * alpha), x) + h_prev)", "does not act on x - prev(h)"),
    ("h_prev * (mix(householder(u, 2 * alpha), x - h_prev) + h_prev)", "gate g free of the previous iterate"),
])
def test_reasons_name_the_mismatch(write, reason):
    src = open(example("fp_rnn")).read()
    src = src.replace("write (1 - lam) * (mix(householder(u, 2 * alpha), x - h_prev) + h_prev)", f"write {write}")
    from recdsl.backends.triton.fp_fused import match
    assert reason in match(recdsl.load(src, D=8).ir)


def test_generated_source_names_the_ir():
    from recdsl.backends.triton.fp_fused import generate, match
    spec = recdsl.load(example("fp_rnn"), D=8)
    src = generate(match(spec.ir))
    lines = spec.ir.text().splitlines()
    write = next(l for l in lines if l.startswith("write -> ")).split()[-1]
    assert f"# IR {write} (the write)" in src and "spec fp_rnn" in src and "@" not in src.replace("@triton", "")


def test_kernel_builds_for_sm90():
    res = compile_sm90("recdsl.backends.triton.fp_fused", "aot_jobs", 512, 2)
    assert sorted(n for n, size, secs in res) == ["fp_fused_dots", "fp_fused_iter BD=16", "fp_fused_iter BD=32",
                                                          "mix_write_bwd", "mix_write_fwd"]
    assert all(size > 0 for n, size, secs in res)
