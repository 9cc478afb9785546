"""Fixed-Point RNNs through iterated element-wise scans (backends/triton/fixed_point.py) under the
Triton interpreter: the fixed point against the fp64 reference, the one-step gradient against a loop
written from the paper's equations, convergence reporting."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import recdsl
from recdsl import RecNotConverged

from conftest import bench_spec, example, fp_mamba_hdep_args, random_args

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tier; GPU runs are in test_gpu.py")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_fixed_point_matches_reference(monkeypatch):
    monkeypatch.setenv("RECDSL_FIXED_POINT", "unfused")   # the unfused baseline (the fused path: test_triton_fp_fused.py)
    spec = recdsl.load(example("fp_rnn"), D=8, r=2)
    assert spec.plan("triton").algorithm == "fixed_point_scan"
    cu = torch.tensor([0, 6, 6, 17], dtype=torch.int32)          # packed sequences, one of them empty
    for B, T, cu_seqlens, N in ((2, 11, None, 2), (1, 17, cu, 3)):
        args = random_args(spec, B=B, T=T, dtype=torch.float32, seed=T)
        h0 = torch.randn(N, 8)
        o, S = spec.op(**args, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens, backend="triton")
        ro, rS = spec.op(**{k: v.double() for k, v in args.items()}, initial_state=h0.double(),
                         output_final_state=True, cu_seqlens=cu_seqlens, backend="reference")
        assert rel(o, ro) < 1e-5 and rel(S, rS) < 1e-5


HIDDEN = """
# Lambda and the write both depend on the previous iterate (hidden-state dependence)
recurrence fp_hidden(D = 6):
    state h[D]
    input lam[D] in (0, 1), x[D]
    solve tol = 1e-7, max_iter = 500
    let h_prev = prev(h)
    transition diag(lam * sigmoid(h_prev))
    write (1 - lam) * (x + 0.5 * h_prev)
    output y = h
"""


def test_hidden_state_dependent_decay():
    spec = recdsl.load(HIDDEN)
    assert spec.plan("triton").algorithm == "fixed_point_scan"
    args = random_args(spec, B=2, T=10, dtype=torch.float32, seed=8)
    o, S = spec.op(**args, output_final_state=True, backend="triton")
    ro, rS = spec.op(**{k: v.double() for k, v in args.items()}, output_final_state=True, backend="reference")
    assert rel(o, ro) < 1e-5 and rel(S, rS) < 1e-5


def _paper_loop(lam, u, alpha, x, c, prev):
    """One iteration of h^l_t = lam_t h^l_(t-1) + (1 - lam_t) [Q_t (x_t - h^(l-1)_t) + h^(l-1)_t] with
    Q_t = prod_i (I - 2 alpha_i u_i u_i^T) (reflection 0 applied first); y = c * h."""
    u = F.normalize(u, dim=-1)
    h, ys = torch.zeros_like(x[:, 0]), []
    for t in range(x.shape[1]):
        m = x[:, t] - prev[:, t]
        for i in range(u.shape[2]):
            m = m - 2 * alpha[:, t, i, None] * u[:, t, i] * (u[:, t, i] * m).sum(-1, keepdim=True)
        h = lam[:, t] * h + (1 - lam[:, t]) * (m + prev[:, t])
        ys.append(h)
    hs = torch.stack(ys, 1)
    return hs, c * hs


def test_gradient_is_one_step_at_the_fixed_point():
    spec = recdsl.load(example("fp_rnn"), D=8, r=2)
    args = random_args(spec, B=2, T=9, dtype=torch.float64, seed=4)
    # the fixed point from the paper's loop, then one differentiable step with the iterate held constant
    prev = torch.zeros_like(args["x"])
    with torch.no_grad():
        for _ in range(200):
            prev = _paper_loop(**args, prev=prev)[0]
    leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
    _, y = _paper_loop(**leaves, prev=prev)
    w = torch.randn(y.shape, dtype=torch.float64)
    (y * w).sum().backward()
    ours = {k: v.float().requires_grad_() for k, v in args.items()}
    o, _ = spec.op(**ours, backend="triton")
    (o.double() * w).sum().backward()
    assert rel(o, y) < 1e-5
    for k in args:
        assert rel(ours[k].grad, leaves[k].grad) < 1e-4, k


def test_neumann_steps_approach_the_implicit_gradient():
    """k backward steps sum k terms of the implicit-function gradient's Neumann series: with many, the
    gradient matches the reference's, which differentiates through the whole converged iteration."""
    src = open(example("fp_rnn")).read().replace("max_iter = max_iter", "max_iter = max_iter, backward_steps = 25")
    args = random_args(recdsl.load(src, D=8), B=2, T=9, dtype=torch.float64, seed=6)
    w = torch.randn(2, 9, 8, dtype=torch.float64)
    grads = {}
    for label, text, backend in (("k=25", src, "triton"), ("k=1", open(example("fp_rnn")).read(), "triton"),
                                 ("reference", src, "reference")):
        spec = recdsl.load(text, D=8)
        leaves = {k: v.clone().to(torch.float32 if backend == "triton" else torch.float64).requires_grad_()
                  for k, v in args.items()}
        o, _ = spec.op(**leaves, backend=backend)
        (o.double() * w).sum().backward()
        grads[label] = torch.cat([v.grad.double().flatten() for v in leaves.values()])
    far, near = rel(grads["k=1"], grads["reference"]), rel(grads["k=25"], grads["reference"])
    assert near < 1e-4 and far > 10 * near, (far, near)


def test_layer_reports_iterations_and_warns_when_not_converged():
    torch.manual_seed(3)       # a layer whose fixed point the reference reaches in 30 iterations
    layer = recdsl.compile(example("fp_rnn"), D=8, d_model=16, backend="triton")
    y, _ = layer(torch.randn(2, 7, 16))
    y.square().mean().backward()
    assert layer.last_solve.converged and layer.last_solve.iterations > 1
    assert all(p.grad is not None for p in layer.parameters())
    spec = recdsl.load(example("fp_rnn"), D=8, max_iter=2)
    with pytest.warns(RecNotConverged, match="not reached after 2 iterations"):
        spec.op(**random_args(spec, B=1, T=20, dtype=torch.float32, seed=1), backend="triton")


def test_routing(monkeypatch):
    plan = recdsl.load(example("fp_mamba")).plan("auto", on_cuda=True)
    assert plan.algorithm == "fixed_point_scan"
    assert "forms the decay from exp(s * M)'s factors and the write from outer(p, q)'s factors" in plan.text()
    monkeypatch.setenv("RECDSL_FP_MATRIX_DECAY", "materialised")
    assert "the decay passes to the scan as a [B, T, D, N] tensor" in \
        recdsl.load(example("fp_mamba")).plan("auto", on_cuda=True).text()
    monkeypatch.setenv("RECDSL_FP_MATRIX_DECAY", "whole")
    with pytest.raises(ValueError, match="RECDSL_FP_MATRIX_DECAY='whole': expected factors or materialised"):
        recdsl.load(example("fp_mamba")).plan("triton")
    monkeypatch.delenv("RECDSL_FP_MATRIX_DECAY")
    # iterating the matrix state itself (not its readout): neither Triton path
    src = open(example("fp_mamba")).read().replace("let y_prev = prev(y)", "let y_prev = prev(H) @ c")
    plan = recdsl.load(src).plan("auto", on_cuda=True)
    assert plan.backend == "reference" and "is not a vector" in plan.text()
    assert "prev(...) of something other than the output" in plan.text()
    with pytest.raises(ValueError, match="no Triton kernel for this fixed point"):
        recdsl.load(src).plan("triton")


MIXER_SPEC = """
# the mixer Q_t as any linear map the language writes
recurrence fp_rnn_mixer(D = 6, tol = 1e-9):
    state h[D]
    input lam[D] in (0, 1), d[D] in (0, 1), a[D], b[D], K1[2, 2], K2[3, 3], x[D], c[D]
    solve tol = tol, max_iter = 2000
    let h_prev = prev(h)
    transition diag(lam)
    write (1 - lam) * (mix(MIXER, x - h_prev) + h_prev)
    output y = c * h
"""


def _dense_mixer(name, args, t):
    """Q_t as a dense [B, D, D] matrix, written independently of the IR."""
    if name == "dplr":
        return torch.diag_embed(args["d"][:, t]) + args["a"][:, t, :, None] * args["b"][:, t, None, :]
    K1, K2 = args["K1"][:, t], args["K2"][:, t]
    K1 = K1 / torch.linalg.matrix_norm(K1, ord=2)[:, None, None]
    K2 = K2 / torch.linalg.matrix_norm(K2, ord=2)[:, None, None]
    return torch.eye(6, dtype=K1.dtype) - torch.stack([torch.kron(p, q) for p, q in zip(K1, K2)])


@pytest.mark.parametrize("name,mixer", [("dplr", "diag(d) + outer(a, b)"),
                                        ("kron", "I - kron(K1, K2, normalized = 1)")])
def test_mixers_reach_the_dense_recurrence(name, mixer):
    """Diagonal plus rank one, and I - K1 (x) K2 normalised by its spectral norm (issue 5's mixers): the
    fixed point, on the Triton path and the reference, is the dense recurrence
    (I - (I - L)(I - Q)) h_t = L h_(t-1) + (I - L) Q x_t, solved directly per token."""
    src = MIXER_SPEC.replace("MIXER", mixer)
    spec = recdsl.load(src)
    args = random_args(spec, B=2, T=9, dtype=torch.float64, seed=4)
    args["a"], args["b"] = 0.3 * args["a"], 0.3 * args["b"]      # keep the DPLR mixer's update contractive
    B, T, D = args["x"].shape
    I = torch.eye(D, dtype=torch.float64)
    h, want = torch.zeros(B, D, dtype=torch.float64), []
    for t in range(T):
        L, Q = torch.diag_embed(args["lam"][:, t]), _dense_mixer(name, args, t)
        M = I - (I - L) @ (I - Q)
        rhs = (L @ h.unsqueeze(-1) + (I - L) @ Q @ args["x"][:, t].unsqueeze(-1)).squeeze(-1)
        h = torch.linalg.solve(M, rhs)
        want.append(args["c"][:, t] * h)
    want = torch.stack(want, 1)
    ro, _ = spec.op(**args, backend="reference")
    fp32 = recdsl.load(src, tol=1e-6)                               # what fp32 iterates can resolve
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecNotConverged)
        o, _ = fp32.op(**{k: v.float() for k, v in args.items()}, backend="triton")
    assert rel(ro, want) < 1e-7 and rel(o, want) < 1e-5
    assert fp32.plan("triton").algorithm == "fixed_point_scan"


def test_kron_errors_name_the_place():
    bad = MIXER_SPEC.replace("MIXER", "I - kron(K1, K1)")
    with pytest.raises(recdsl.RecError, match=r"kron\(A, B\) needs square A \[n1, n1\] and B \[n2, n2\] "
                                              r"with n1 \* n2 = 6"):
        recdsl.load(bad)
    with pytest.raises(recdsl.RecError, match="takes a constant"):
        recdsl.load(MIXER_SPEC.replace("MIXER", "kron(K1, K2, normalized = d)"))


SHIFTED = """
# Lambda and the mixer read the previous token's iterate h^(l-1)_(t-1) (the paper's shifted dependence)
recurrence fp_shift(D = 6, tol = 1e-10):
    state h[D]
    input lam[D] in (0, 1), u[D] l2norm, alpha in (0, 1), x[D], c[D]
    solve tol = tol, max_iter = 1000
    let h_prev = prev(h)
    let h_last = prev(h, shift = 1)
    transition diag(lam * sigmoid(h_last))
    write (1 - lam) * (mix(householder(u, 2 * alpha * sigmoid(u @ h_last)), x - h_prev) + h_prev)
    output y = c * h
"""


def test_shifted_dependence_solves_its_equations(monkeypatch):
    """With prev(h, shift = 1) the fixed point h* satisfies, token by token (h*_(-1) = h0),
    h*_t = a_t h*_(t-1) + (1 - lam_t) (Q_t (x_t - h*_t) + h*_t) with a_t = lam_t sigmoid(h*_(t-1)) and
    Q_t = I - 2 alpha_t sigmoid(u_t . h*_(t-1)) u_t u_t^T (written here from the equation); the fused
    Triton path (the decay and the reflection's coefficients evaluated again before each launch) and the
    unfused one agree with the reference, packed sequences with separate calls."""
    spec = recdsl.load(SHIFTED)
    assert triton_reason(spec).varying == ("a", "w")     # u reads the input only
    args = random_args(spec, B=2, T=9, dtype=torch.float64, seed=2)
    h0 = torch.randn(2, 6, dtype=torch.float64)
    ro, rS = spec.op(**args, initial_state=h0, output_final_state=True, backend="reference")
    h = ro / args["c"]
    u = F.normalize(args["u"], dim=-1)
    prev_h = torch.cat([h0[:, None], h[:, :-1]], 1)
    gate = torch.sigmoid(prev_h)
    beta = 2 * args["alpha"][..., None] * torch.sigmoid((u * prev_h).sum(-1, keepdim=True))
    Qv = lambda v: v - beta * u * (u * v).sum(-1, keepdim=True)   # noqa: E731
    rhs = args["lam"] * gate * prev_h + (1 - args["lam"]) * (Qv(args["x"] - h) + h)
    assert rel(rhs, h) < 1e-8 and rel(rS, h[:, -1]) < 1e-12
    fp32 = recdsl.load(SHIFTED, tol=1e-6)
    for path in ("fused", "unfused"):
        monkeypatch.setenv("RECDSL_FIXED_POINT", path)
        assert fp32.plan("triton").algorithm == {"fused": "fixed_point_fused", "unfused": "fixed_point_scan"}[path]
        o, S = fp32.op(**{k: v.float() for k, v in args.items()}, initial_state=h0.float(), output_final_state=True,
                       backend="triton")
        assert rel(o, ro) < 1e-5 and rel(S, rS) < 1e-5
        packed = {k: torch.cat([v[:1], v[1:]], 1).float() for k, v in args.items()}   # the two rows, end to end
        cu = torch.tensor([0, 9, 18], dtype=torch.int32)
        op, _ = fp32.op(**packed, initial_state=h0.float(), cu_seqlens=cu, backend="triton")
        assert rel(op, torch.cat([o[:1], o[1:]], 1)) < 1e-5
    grads = {}
    for path in ("fused", "unfused"):     # the one step at the fixed point: the same gradient either way
        monkeypatch.setenv("RECDSL_FIXED_POINT", path)
        leaves = {k: v.float().requires_grad_(True) for k, v in args.items()}
        fp32.op(**leaves, backend="triton")[0].square().sum().backward()
        grads[path] = torch.cat([leaves[k].grad.flatten() for k in sorted(leaves)])
    assert grads["fused"].abs().sum() > 0 and rel(grads["fused"], grads["unfused"]) < 1e-4
    with pytest.raises(ValueError, match=r"one_launch, but operands read prev\(h, shift = 1\)"):
        monkeypatch.setenv("RECDSL_FIXED_POINT", "one_launch")
        fp32.plan("triton")


@pytest.mark.parametrize("name", ["fp_rnn_hdep", "fp_rnn_hdep_full"])
def test_hdep_benchmark_specs_solve_their_equations_and_train_their_maps(name):
    """benchmarks/specs/fp_rnn_hdep*.rec (the paper's shifted dependence through linear maps): at the fixed
    point h*_t = lam_t h*_(t-1) + (1 - lam_t) (Q_t (x_t - h*_t) + h*_t) with lam_t = sigmoid(lam_in_t +
    Wl h*_(t-1)), alpha_t = sigmoid(alpha_in_t + Wa h*_(t-1)) and, in the full spec, u_t,i = l2norm(u_in_t,i +
    Wu_i h*_(t-1)) (written here from the equation); the Triton path agrees with the reference; one
    training step's gradient reaches every map."""
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / f"{name}.rec"
    spec = recdsl.load(path, D=6, r=2, tol=1e-12)
    assert triton_reason(spec).varying == (("a", "g", "u", "w") if name.endswith("full") else ("a", "g", "w"))
    args = random_args(spec, B=2, T=7, dtype=torch.float64, seed=4)     # the maps Wl, Wa (, Wu) among them
    ro, _ = spec.op(**args, backend="reference")
    h = ro / args["c"]
    prev_h = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], 1)
    lam = torch.sigmoid(args["lam_in"] + prev_h @ args["Wl"].T)
    alpha = torch.sigmoid(args["alpha_in"] + prev_h @ args["Wa"].T)
    maps = ("Wl", "Wa", "Wu") if "Wu" in args else ("Wl", "Wa")
    u = F.normalize(args["u_in"] + torch.einsum("rdn,btn->btrd", args["Wu"], prev_h) if "Wu" in args
                    else args["u"], dim=-1)
    v = args["x"] - h
    for i in range(2):                              # reflection 0 acts first
        v = v - 2 * alpha[..., i, None] * u[..., i, :] * (u[..., i, :] * v).sum(-1, keepdim=True)
    assert rel(lam * prev_h + (1 - lam) * (v + h), h) < 1e-8
    loose = recdsl.load(path, D=6, r=2, tol=1e-6)
    o, _ = loose.op(**{k: v.float() for k, v in args.items()}, backend="triton")
    assert rel(o, ro) < 1e-5
    layer = recdsl.compile(path, backend="triton", D=6, r=2, d_model=8, tol=1e-6)
    layer(torch.randn(2, 5, 8))[0].square().sum().backward()     # (output, state)
    assert all(layer.weights[n].grad.abs().sum() > 0 for n in maps)


@pytest.mark.filterwarnings("ignore::recdsl.errors.RecNotConverged")
def test_iterate_products_fold_their_addends(monkeypatch):
    """fp_products.py on the authors' dependence (benchmarks/specs/fp_rnn_mixer_hdep.rec): Wa @ h_last and
    Wu @ h_last, each with its input addend (alpha_in, u_in) folded into one addmm, give the evaluator's
    sums, and with half inputs the weights in that dtype (the sums within its precision; the iterate is not
    rounded); from h^0 = 0 the sums are the addends. The fused path, which uses them, takes the unfused path's iterates
    (8 iterations each; the unfused path evaluates the products node by node in fp32)."""
    from pathlib import Path

    from recdsl.backends.triton.fixed_point import operand_evaluator
    from recdsl.backends.triton.fp_products import IterateProducts, products
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / "fp_rnn_mixer_hdep.rec"
    spec = recdsl.load(path, D=6, r=2, tol=1e-30, max_iter=8)
    ir = spec.ir
    args = random_args(spec, B=2, T=5, dtype=torch.float32, seed=3)
    prev = torch.randn(2, 5, 1, 6)
    full = operand_evaluator(spec, args, {}, None, None, prev)
    assert all(p.addend is None for p in products(ir, None, 2, 5))     # no addend evaluated: nothing folded
    found = products(ir, full, 2, 5)
    assert [ir.node(p.weight).args[0] for p in found] == ["Wa", "Wu"] and all(p.addend is not None for p in found)
    assert [p.width for p in found] == [2, 12]
    for p in found:
        full(p.result)
    kept = {i: v for i, v in full.memo.items() if not ir.reads(i, "prev")}
    for dtype, tol in ((torch.float32, 1e-6), (torch.float16, 3e-3), (torch.bfloat16, 2e-2)):
        ev = operand_evaluator(spec, args, {}, None, None, prev)
        ev.memo.update(kept)
        sums = IterateProducts(ir, ev, 2, 5, dtype)
        sums.fill(ev)
        for p in found:
            assert ev.memo[p.result].shape == full(p.result).shape and rel(ev.memo[p.result], full(p.result)) < tol
        sums.fill(ev, zero_iterate=True)                       # h^0 = 0: the sums are the addends
        for p in found:
            assert torch.equal(ev.memo[p.result], full(p.addend))
    # the products of prev(h, shift = 1) from the unshifted iterate: with initial states, and packed
    # sequences (one of them empty) whose first tokens read their own state
    h0 = torch.randn(3, 6)
    packed = {k: v.reshape(1, 10, *v.shape[2:]) if v.dim() > 2 and v.shape[:2] == (2, 5) else v
              for k, v in args.items()}
    for a, h, cu, (B, T) in ((args, None, None, (2, 5)), (args, h0[:2], None, (2, 5)),
                             (packed, h0, torch.tensor([0, 4, 4, 10]), (1, 10))):
        it = prev.reshape(B, T, 1, 6)
        want = operand_evaluator(spec, a, {}, h, cu, it)
        ev = operand_evaluator(spec, a, {}, h, cu, it)
        sums = IterateProducts(ir, ev, B, T, torch.float32, h, cu)
        sums.fill(ev, it)
        for p in found:
            assert rel(ev.memo[p.result], want(p.result)) < 1e-6
    monkeypatch.setenv("RECDSL_FP_BLOCKS", "8,8,1")     # the interpreter walks every row of a block
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-2)):
        outs = {}
        for mode in ("fused", "unfused"):
            monkeypatch.setenv("RECDSL_FIXED_POINT", mode)
            outs[mode] = spec.op(**{k: v.to(dtype) for k, v in args.items()}, backend="triton")[0].float()
        assert rel(outs["fused"], outs["unfused"]) < tol


def triton_reason(spec):
    from recdsl.backends.triton.fp_fused import match
    return match(spec.ir)


def test_shift_errors_name_the_place():
    with pytest.raises(recdsl.RecError, match=r"takes 0 or 1"):
        recdsl.load(SHIFTED.replace("prev(h, shift = 1)", "prev(h, shift = 2)"))
    with pytest.raises(recdsl.RecError, match=r"prev takes one name"):
        recdsl.load(SHIFTED.replace("prev(h, shift = 1)", "prev(h, lag = 1)"))


@pytest.mark.parametrize("operands", ["factors", "materialised"])
def test_fp_mamba_matrix_state_matches_reference(operands, monkeypatch):
    """FP-Mamba (a [D, N] state, the readout y passed between iterations): the unfused Triton path (the
    generated matrix scan once per iteration, given the factors of the decay exp(-dt * exp(A_log)) and of
    the write outer(dt * x_mix, b), or both whole) against the fp64 reference, packed sequences and an
    initial state included, converging (a warning would fail the test) and giving finite gradients."""
    from recdsl.backends.triton.fixed_point_matrix import decay_factors, write_factors
    monkeypatch.setenv("RECDSL_FP_MATRIX_DECAY", operands)
    monkeypatch.setenv("RECDSL_FP_MATRIX_WRITE", operands)
    spec = recdsl.load(example("fp_mamba"), D=8, N=4, r=2, tol=1e-5)
    ir = spec.ir
    decay, write = decay_factors(ir, ir.operands(ir.root("transition"))[0]), write_factors(ir, ir.root("write"))
    assert (decay is not None, write is not None) == ((True, True) if operands == "factors" else (False, False))
    assert spec.plan("triton").algorithm == "fixed_point_scan"
    cu = torch.tensor([0, 6, 6, 17], dtype=torch.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecNotConverged)
        for B, T, cu_seqlens, Nseq in ((2, 11, None, 2), (1, 17, cu, 3)):
            args = random_args(spec, B=B, T=T, dtype=torch.float32, seed=T)
            h0 = 0.5 * torch.randn(Nseq, 8, 4)
            o, S = spec.op(**args, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens,
                           backend="triton")
            ro, rS = spec.op(**{k: v.double() for k, v in args.items()}, initial_state=h0.double(),
                             output_final_state=True, cu_seqlens=cu_seqlens, backend="reference")
            assert rel(o, ro) < 1e-4 and rel(S, rS) < 1e-4
        args = {k: v.requires_grad_(True) for k, v in random_args(spec, B=2, T=9, dtype=torch.float32, seed=1).items()}
        o, _ = spec.op(**args, backend="triton")
    o.square().sum().backward()
    assert all(torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0 for a in args.values())


def test_fp_mamba_factored_operands_give_the_materialised_gradients(monkeypatch):
    """The scan given the decay's and the write's factors (its own backward for s, M, p and q) gives the
    gradients of the scan given both whole, for every input and for A_log."""
    spec = recdsl.load(example("fp_mamba"), D=8, N=4, r=2, tol=1e-6)
    args = random_args(spec, B=2, T=9, dtype=torch.float32, seed=5)
    do = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(0))
    grads = {}
    for operands in ("factors", "materialised"):
        monkeypatch.setenv("RECDSL_FP_MATRIX_DECAY", operands)
        monkeypatch.setenv("RECDSL_FP_MATRIX_WRITE", operands)
        leaves = {k: v.clone().requires_grad_(True) for k, v in args.items()}
        (spec.op(**leaves, backend="triton")[0] * do).sum().backward()
        grads[operands] = {k: v.grad for k, v in leaves.items()}
    for k in args:
        assert rel(grads["factors"][k], grads["materialised"][k]) < 1e-5, k


@pytest.mark.slow
def test_matrix_scans_compile_for_sm80_and_sm90(tmp_path):
    """AOT tier: the per-iteration scans of a matrix fixed point, factored (exp(s * M), outer(p, q)) and
    materialised, build for sm_80 and sm_90 at FP-Mamba's A5 width, in a process without the interpreter."""
    import os
    import subprocess
    import sys
    from recdsl.backends.triton.fixed_point_matrix import scan_spec
    files = []
    for factors in (True, False):
        f = tmp_path / f"scan_{factors}.rec"
        f.write_text(scan_spec(factors, factors).replace("D = 1, N = 1", "D = 1024, N = 16"))
        files.append(str(f))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "recdsl.backends.triton.aot", *files], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("ok ") == 2 * 8 and "sm_90" in r.stdout and "sm_80" in r.stdout   # 4 kernels x 2 targets


def test_fp_mamba_hdep_solves_its_equations_and_trains_its_maps():
    """benchmarks/specs/fp_mamba_hdep.rec (the authors' FP-Mamba for the word problems: B, C, the reflections
    and their strengths read y^(l-1)_(t-1), the readout is a centred, normalised H c + D x~): at the fixed
    point, token by token from the initial state (y*_(-1) = 0), written here from the equations,
        H_t = exp(-dt_t exp(A_log)) H_(t-1) + (dt_t x~_t) b_t^T,   x~_t = Q_t (x_t - y*_t) + y*_t,
        y*_t = sqrt(D) normalise(v_t - mean(v_t)),   v_t = H_t c_t + Dskip x~_t,
    with b_t, c_t, u_t,i = normalise(addend + W y*_(t-1)) and alpha_t = sigmoid(alpha_in_t + Wa y*_(t-1));
    the unfused Triton path agrees with the reference, packed sequences and initial states included; one
    training step's gradient reaches every map."""
    path = bench_spec("fp_mamba_hdep")
    D, N = 6, 4
    spec = recdsl.load(path, D=D, N=N, r=2, tol=1e-12)
    args = fp_mamba_hdep_args(spec, B=2, T=5, dtype=torch.float64, seed=4)   # the interpreter runs each scan
    h0 = 0.5 * torch.randn(2, D, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ro, rS = spec.op(**args, initial_state=h0, output_final_state=True, backend="reference")
    y_last = torch.cat([torch.zeros_like(ro[:, :1]), ro[:, :-1]], 1)
    b = F.normalize(args["b_in"] + y_last @ args["Wb"].T, dim=-1)
    c = F.normalize(args["c_in"] + y_last @ args["Wc"].T, dim=-1)
    u = F.normalize(args["u_in"] + torch.einsum("rdn,btn->btrd", args["Wu"], y_last), dim=-1)
    alpha = torch.sigmoid(args["alpha_in"] + y_last @ args["Wa"].T)
    xm = args["x"] - ro
    for i in range(2):                              # reflection 0 acts first
        xm = xm - 2 * alpha[..., i, None] * u[..., i, :] * (u[..., i, :] * xm).sum(-1, keepdim=True)
    xm = xm + ro
    H, ys = h0, []
    for t in range(5):
        a = torch.exp(-args["dt"][:, t, :, None] * torch.exp(args["A_log"]))
        H = a * H + (args["dt"][:, t] * xm[:, t])[..., None] * b[:, t, None, :]
        v = (H @ c[:, t, :, None])[..., 0] + args["Dskip"] * xm[:, t]
        ys.append(D ** 0.5 * F.normalize(v - v.mean(-1, keepdim=True), dim=-1))
    assert rel(torch.stack(ys, 1), ro) < 1e-9 and rel(H, rS) < 1e-9
    loose = recdsl.load(path, D=D, N=N, r=2, tol=1e-6)
    assert loose.plan("triton").algorithm == "fixed_point_scan"
    o, S = loose.op(**{k: v.float() for k, v in args.items()}, initial_state=h0.float(), output_final_state=True,
                    backend="triton")
    assert rel(o, ro) < 1e-5 and rel(S, rS) < 1e-5
    packed = {k: (torch.cat([v[:1], v[1:]], 1) if v.dim() > 2 and v.shape[:2] == (2, 5) else v).float()
              for k, v in args.items()}                    # the two rows end to end, each from its state
    cu = torch.tensor([0, 5, 10], dtype=torch.int32)
    op, _ = loose.op(**packed, initial_state=h0.float(), cu_seqlens=cu, backend="triton")
    assert rel(op, torch.cat([o[:1], o[1:]], 1)) < 1e-5
    layer = recdsl.compile(path, backend="triton", D=D, N=N, r=2, d_model=8, max_iter=6)
    with warnings.catch_warnings():     # six iterations from the layer's initialisation: not converged
        warnings.simplefilter("ignore", RecNotConverged)
        layer(torch.randn(2, 5, 8))[0].square().sum().backward()     # (output, state)
    assert all(layer.weights[n].grad.abs().sum() > 0 for n in ("Wb", "Wc", "Wu", "Wa", "Dskip"))


def test_output_shifts_and_declared_shapes_name_the_place():
    """prev(..., shift = 1) of a matrix state points to its readout; an output that reads `let` values needs
    its shape declared, and a declared shape must match; step() refuses a spec that shifts its output."""
    src = open(example("fp_mamba")).read()
    with pytest.raises(recdsl.RecError, match=r"vector state or of the output") as e:
        recdsl.load(src.replace("let y_prev = prev(y)", "let y_prev = prev(H, shift = 1) @ c"))
    assert "prev(y, shift = 1)" in str(e.value) and ":11:" in str(e.value)
    with pytest.raises(recdsl.RecError, match=r"the output reads the `let` value 'x_mix'") as e:
        recdsl.load(src.replace("output y = H @ c", "output y = H @ c + x_mix"))
    assert "declare the output's shape to read them: output y[...]" in str(e.value) and ":15:24:" in str(e.value)
    assert recdsl.load(src.replace("output y = H @ c", "output y[D] = H @ c + x_mix"), D=8, N=4).ir.solve
    with pytest.raises(recdsl.RecError, match=r"the output has shape \[4\], declared \[2\]") as e:
        recdsl.load("recurrence r(D = 4):\n    state h[D]\n    input a[D], x[D]\n    transition diag(a)\n"
                    "    write x\n    output y[2] = h\n")
    assert ":6:19:" in str(e.value)
    # the state does not carry the previous token's output: step() says so rather than answer differently
    layer = recdsl.compile(bench_spec("fp_mamba_hdep"), D=4, N=2, d_model=4)
    with pytest.raises(ValueError, match=r"step\(\) cannot go on token by token: prev\(y, shift = 1\)"):
        layer.step(torch.randn(1, 4), layer.init_state(1))


def test_tail_graph_instances_are_handed_out_while_free():
    """fp_tail_graph.Instances: a busy instance (its holder alive) is not handed out again; one is made while
    under the limit, past it None (the caller runs eagerly); a freed holder frees its instance."""
    import gc
    from types import SimpleNamespace
    import weakref
    from recdsl.backends.triton.fp_tail_graph import Instances

    class Holder:
        pass
    pool = Instances(2)
    make = lambda: SimpleNamespace(busy=None)     # noqa: E731
    holders = [Holder(), Holder()]
    a = pool.acquire(make)
    assert pool.acquire(make) is a          # not taken yet
    a.busy = weakref.ref(holders[0])
    b = pool.acquire(make)
    assert b is not a and len(pool.made) == 2
    b.busy = weakref.ref(holders[1])
    assert pool.acquire(make) is None       # both busy, at the limit
    b.busy = None                           # its backward ran
    assert pool.acquire(make) is b
    b.busy = weakref.ref(holders[1])
    del holders[0]                          # a's autograd graph freed without a backward
    gc.collect()
    assert pool.acquire(make) is a


def test_narrow_product_builds_for_sm90():
    """fp_products.narrow_product (alpha's product of the shifted iterate) as a real sm_90 build, spill-free."""
    from conftest import compile_sm90
    res = compile_sm90("recdsl.backends.triton.fp_products", "aot_jobs", 512, 2, with_shared=True)
    assert len(res) == 2 and all(row[1] > 0 and row[3] <= 227 * 1024 and not row[4] for row in res)
