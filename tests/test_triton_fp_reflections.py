"""Reflection vectors that read the previous token's iterate (backends/triton/fp_reflections.py) under the
Triton interpreter: the two generated kernels against torch's passes (RECDSL_FP_REFLECTIONS=torch), the
solve through them against the reference; an sm_90 build."""
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import recdsl
from recdsl import RecNotConverged

from conftest import compile_sm90, random_args

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="interpreter tier; GPU runs in test_gpu_fixed_point.py")

MIXER_HDEP = Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / "fp_rnn_mixer_hdep.rec"


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def spec_text(normalise: bool, addends: bool = True) -> str:
    """The authors' dependence; without l2norm on u; without the addends u_in, alpha_in (products alone)."""
    text = MIXER_HDEP.read_text()
    if not addends:
        text = text.replace("u_in + Wu @ h_last", "Wu @ h_last").replace("alpha_in + Wa @ h_last", "Wa @ h_last")
    return text if normalise else text.replace("l2norm(u_in + Wu @ h_last)", "u_in + Wu @ h_last").replace(
        "l2norm(Wu @ h_last)", "Wu @ h_last")


def shifted(spec, args, h0, cu, B, T, monkeypatch, choice):
    from recdsl.backends.triton.fixed_point import shifted_operands
    from recdsl.backends.triton.fp_fused import match
    monkeypatch.setenv("RECDSL_FP_REFLECTIONS", choice)
    return shifted_operands(spec, match(spec.ir), args, {}, B, T, h0, cu)


@pytest.mark.parametrize("normalise", [True, False])
@pytest.mark.parametrize("r, D, dtype, packed, fp32", [(1, 6, torch.float32, False, "tf32x3"),
                                                       (2, 20, torch.float16, True, "tf32x3"),
                                                       (3, 40, torch.float32, True, "tf32x3"),
                                                       (2, 40, torch.float32, True, "fp16x3"),
                                                       (1, 6, torch.float32, False, "fp16x3"),
                                                       (2, 20, torch.float32, False, "tf32x3-triton"),
                                                       (2, 40, torch.float32, True, "ieee")])
def test_kernels_give_the_vectors_coefficients_and_dot_products(normalise, r, D, dtype, packed, fp32, monkeypatch):
    """From one iterate: the raw vectors u_in + Wu @ h_(t-1) (a sequence's first token reads its initial state;
    packed sequences, one of them empty), and the coefficients and dot products that, applied to the raw
    vectors, are torch's for the normalised ones (l2norm; the vectors as they are without it); several
    channel blocks where D > 16; fp32 weights read K-major (for tensor cores) and N-major (FMA products); 3xTF32
    with the weights split once (ours) and by tl.dot; three fp16 products of scaled parts."""
    monkeypatch.setenv("RECDSL_FP_REFLECTION_FP32", fp32)
    check_against_torch(normalise, r, D, dtype, packed, monkeypatch, "cpu", 1e-5 if dtype == torch.float32 else 3e-3)


def test_fp16_parts_hold_22_bits_at_any_scale():
    """fp16x3's split of a weight: powers of two for the rows' scales, and parts that give w back to about 22
    bits whatever the rows' magnitudes (fp16 alone spans 2^-24 to 65504), zero rows included."""
    from recdsl.backends.triton.fp_reflections import F16_REST, fp16_parts
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 40, generator=g) * torch.tensor([1e-9, 1e-3, 1.0, 3e4, 1e12, 0.0])[:, None]
    w[2, :5] = torch.tensor([1e-8, -2e-6, 0.5, 7.0, 0.0])     # small entries beside large ones
    high, rest, scale = fp16_parts(w)
    assert high.dtype == rest.dtype == torch.float16 and torch.equal(torch.frexp(scale)[0], torch.full((6,), 0.5))
    back = scale[:, None].double() * (high.double() + rest.double() / F16_REST)
    assert torch.isfinite(back).all()
    err = (back - w.double()).abs().amax(1) / w.double().abs().amax(1).clamp_min(1e-300)
    assert (err[:5] < 2 ** -21).all() and back[5].abs().max() == 0


def test_fp16x3_products_keep_each_tokens_accuracy_and_non_finite_rows(monkeypatch):
    """fp16x3 scales each token's iterate on its own: rows of 1e-30, 1e30 and zeros beside ordinary ones give
    their products to about fp32's accuracy (fp16 alone spans 6e-8 to 65504), and a row holding NaN or inf
    gives a product that is not finite, rather than a finite wrong one."""
    monkeypatch.setenv("RECDSL_FP_REFLECTION_FP32", "fp16x3")
    D, r, B, T = 40, 2, 1, 8
    spec = recdsl.load(spec_text(True, addends=False), D=D, r=r)
    args = random_args(spec, B=B, T=T, dtype=torch.float32, seed=1)
    it = shifted(spec, args, None, None, B, T, monkeypatch, "triton")
    assert it.reflections.prec == "fp16x3"
    prev = torch.randn(B, T, 1, D, generator=torch.Generator().manual_seed(0))
    prev[0, 1] *= 1e-30
    prev[0, 2] *= 1e30
    prev[0, 3] = 0.0
    prev[0, 4, 0, 7] = 1e-3     # one small entry in a row of large ones
    prev[0, 4] *= 1e4
    prev[0, 5, 0, 3] = float("nan")
    prev[0, 6, 0, 9] = float("inf")
    u, _ = it.reflections.products(prev)
    h_last = torch.cat([torch.zeros(1, D), prev.reshape(T, D)[:-1]]).double()
    want = torch.einsum("rdk,nk->nrd", args["Wu"].double(), h_last)
    for t in (1, 2, 3, 5):   # each token reads the row before it
        assert torch.isfinite(u[t]).all() and rel(u[t], want[t]) < 1e-6, t
    assert not u[4].any()   # from the zero row
    assert not torch.isfinite(u[6]).any() and not torch.isfinite(u[7]).any()


@pytest.mark.parametrize("D, delta", [(6, 0.7), (40, 0.7), (6, 1.0), (40, 1.0)])
def test_launches_leave_their_iterates_peaks_for_the_next_products(D, delta, monkeypatch):
    """fp16x3 splits the iterate in the product kernel by each row's peak, which the launch that wrote the iterate left
    (FusedIteration.launch's peak_out, whole rows at D = 6, five channel blocks at 40): the peaks of the iterate
    exactly, damped or not (then the residual's row maxima), and iterations that carry them give the iterates bit
    for bit of launches that take them again from the iterate (packed sequences, one empty, with initial states)."""
    monkeypatch.setenv("RECDSL_FP_REFLECTION_FP32", "fp16x3")
    r, T = 2, 11
    spec = recdsl.load(MIXER_HDEP, D=D, r=r)
    cu = torch.tensor([0, 8, 8, 2 * T], dtype=torch.int32)
    args = random_args(spec, B=1, T=2 * T, dtype=torch.float32, seed=4)
    g = torch.Generator().manual_seed(4)
    it = shifted(spec, args, torch.randn(3, D, generator=g), cu, 1, 2 * T, monkeypatch, "triton")
    assert it.peaks
    taken = []
    products = it.reflections.products
    it.reflections.products = lambda prev, peak=None: taken.append(peak is not None) or products(prev, peak)
    zeros = torch.zeros(1, 2 * T, 1, D)
    got, _ = it.iterations({"h": zeros, "zero": True}, delta, 3)
    assert taken == [True, True]     # the first launch takes no product; the next two the carried peaks
    assert torch.equal(got["peak"], got["h"].reshape(2 * T, D).abs().amax(1))
    h = it.launch(zeros, delta, zero=True)[0]
    for _ in range(2):
        h = it.launch(h, delta)[0]
    assert taken[2:] == [False, False] and torch.equal(h, got["h"])


@pytest.mark.parametrize("fp32", ["fp16x3", "tf32x3"])
def test_int64_offsets_give_the_same_products(fp32, monkeypatch):
    """Past offsets_fit's bound the product kernel takes int64 element offsets: the same raw vectors and shares
    as with int32 ones, bit for bit (packed sequences with initial states, several channel blocks)."""
    from recdsl.backends.triton import fp_reflections
    monkeypatch.setenv("RECDSL_FP_REFLECTION_FP32", fp32)
    D, r, T = 40, 2, 22
    spec = recdsl.load(spec_text(True), D=D, r=r)
    cu = torch.tensor([0, 9, 9, T], dtype=torch.int32)
    args = random_args(spec, B=1, T=T, dtype=torch.float32, seed=3)
    g = torch.Generator().manual_seed(3)
    it = shifted(spec, args, torch.randn(3, D, generator=g), cu, 1, T, monkeypatch, "triton")
    prev = torch.randn(1, T, 1, D, generator=g)
    seen, fits = [], fp_reflections.offsets_fit
    monkeypatch.setattr(fp_reflections, "offsets_fit", lambda *n: seen.append(fits(*n)) or seen[-1])
    u32, part32 = it.reflections.products(prev)
    monkeypatch.setattr(fp_reflections, "INT32_ELEMENTS", 0)
    u64, part64 = it.reflections.products(prev)
    assert seen == [True, False]
    assert torch.equal(u32, u64) and torch.equal(part32, part64)


def test_products_without_addends(monkeypatch):
    """u = l2norm(Wu @ h_last) and alpha = sigmoid(Wa @ h_last): the kernel adds no bias."""
    check_against_torch(True, 2, 20, torch.float32, True, monkeypatch, "cpu", 1e-5, addends=False)


def check_against_torch(normalise, r, D, dtype, packed, monkeypatch, device, tol, B=2, T=11, addends=True):
    """The test above on `device` (test_gpu_fixed_point.py runs it on CUDA at issue 5's width)."""
    spec = recdsl.load(spec_text(normalise, addends), D=D, r=r)
    cu = torch.tensor([0, 4 * T // 5, 4 * T // 5, 2 * T], dtype=torch.int32, device=device) if packed else None
    B, T, N = (1, 2 * T, 3) if packed else (B, T, B)
    args = {k: v.to(device=device, dtype=dtype) for k, v in
            random_args(spec, B=B, T=T, dtype=torch.float32, seed=D).items()}
    h0 = torch.randn(N, D, device=device)
    prev = torch.randn(B, T, 1, D, device=device)
    ours = shifted(spec, args, h0, cu, B, T, monkeypatch, "triton")
    assert ours.reflections is not None and ours.reflections.m.normalise == normalise
    assert (ours.reflections.bias is not None) == addends
    assert ours.reflections.k_major == (dtype != torch.float32 or ours.reflections.prec != "ieee")
    theirs = shifted(spec, args, h0, cu, B, T, monkeypatch, "torch")
    assert theirs.reflections is None
    step, dots = ours.at(prev)
    want, want_dots = theirs.at(prev)
    # the raw vectors, from the equation: prev(h, shift = 1) with each sequence's first token reading h0
    rows = prev.reshape(B * T, D)
    starts = (cu[:-1] if packed else torch.arange(B) * T).tolist()
    lengths = ((cu[1:] - cu[:-1]) if packed else torch.full((B,), T)).tolist()
    h_last = torch.cat([torch.cat([h0[n:n + 1], rows[s:s + L - 1]]) for n, (s, L) in enumerate(zip(starts, lengths))
                        if L > 0])
    Wu = args["Wu"].float()
    raw = torch.einsum("rdk,nk->nrd", Wu, h_last)
    if addends:
        raw = raw + args["u_in"].float().reshape(B * T, r, D)
    # of the fp32 iterate itself, also with half weights (it is split into three half parts, fp_reflections.parts)
    assert step.u.dtype == torch.float32 and rel(step.u, raw) < (1e-5 if dtype != torch.float32 else tol)
    norms = raw.norm(dim=-1).clamp_min(1e-12) if normalise else torch.ones(B * T, r, device=device)
    assert rel(step.u / norms[..., None], want.u) < tol
    assert rel(step.w * norms[..., None], want.w) < tol
    assert rel(dots[:, :r], want_dots[:, :r]) < tol and not dots[:, r:].any()
    for name in ("a", "g", "x"):
        assert torch.equal(getattr(step, name), getattr(want, name))


@pytest.mark.parametrize("packed, with_h0", [(False, False), (True, True)])
def test_first_launch_from_zero_takes_the_start_operands(packed, with_h0, monkeypatch):
    """The solve's first launch, from h^0 = 0, runs on the operands evaluated once at the start (no product of
    the iterate taken): the same iterate and residual as a launch that evaluates them again from zeros, with
    initial states and packed sequences (one empty); the iterations after it take their products."""
    D, r, T = 20, 2, 11
    spec = recdsl.load(MIXER_HDEP, D=D, r=r)
    cu = torch.tensor([0, 8, 8, 2 * T], dtype=torch.int32) if packed else None
    B, T, N = (1, 2 * T, 3) if packed else (2, T, 2)
    args = random_args(spec, B=B, T=T, dtype=torch.float32, seed=3)
    h0 = torch.randn(N, D) if with_h0 else None
    it = shifted(spec, args, h0, cu, B, T, monkeypatch, "triton")
    calls = []
    kernels = it.reflections.products
    it.reflections.products = lambda *a: calls.append(1) or kernels(*a)
    zeros = torch.zeros(B, T, 1, D)
    h, res, _, _ = it.launch(zeros, 0.9, zero=True)
    assert not calls
    want_h, want_res, _, _ = it.launch(zeros, 0.9)
    assert calls == [1] and h.abs().sum() > 0
    assert rel(h, want_h) < 1e-5 and rel(res, want_res) < 1e-5
    two, rows = it.iterations({"h": zeros, "zero": True}, 0.9, 2)
    want_two, want_rows = it.iterations({"h": zeros}, 0.9, 2)
    assert len(calls) == 4 and rel(two["h"], want_two["h"]) < 1e-5 and rel(rows, want_rows) < 1e-5


def test_solve_through_the_kernels_matches_the_reference(monkeypatch):
    """The fused solve of the authors' dependence with the kernels, against the fp64 reference, with initial
    states and the final state."""
    spec = recdsl.load(MIXER_HDEP, D=20, r=2, tol=1e-6, max_iter=60)
    args = random_args(spec, B=2, T=13, dtype=torch.float32, seed=5)
    for w in ("Wa", "Wu"):
        args[w] = args[w] * 0.05
    args["alpha_in"] = args["alpha_in"] - 2.0    # strengths 2 alpha well below 2: the iteration contracts
    h0 = torch.randn(2, 20)
    monkeypatch.setenv("RECDSL_FIXED_POINT", "fused")
    monkeypatch.setenv("RECDSL_FP_REFLECTIONS", "triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecNotConverged)
        o, S = spec.op(**args, initial_state=h0, output_final_state=True, backend="triton")
    ro, rS = spec.op(**{k: v.double() for k, v in args.items()}, initial_state=h0.double(), output_final_state=True,
                     backend="reference")
    assert rel(o, ro) < 1e-5 and rel(S, rS) < 1e-5


def test_kernels_build_for_sm90():
    res = compile_sm90("recdsl.backends.triton.fp_reflections", "aot_jobs", 512, 2, with_registers=True)
    assert sorted(row[0] for row in res) == ["fp_reflection_finish",
                                             "fp_reflection_products bf16", "fp_reflection_products fp16x3",
                                             "fp_reflection_products ieee", "fp_reflection_products tf32",
                                             "fp_reflection_products tf32x3", "fp_reflection_products tf32x3-triton"]
    # a build that needs more shared memory than an H100 has fails to launch; one that spills its accumulators
    # wholesale (kilobytes of stack, 19 ms a launch instead of 0.5 in a sweep) is a failure here too
    assert all(row[1] > 0 and row[3] <= 227 * 1024 and (row[4] or 0) < 1024 for row in res)
    # fp16x3's cap: three programs an SM (registers() says why), its spill a few bytes
    fp16x3 = next(row for row in res if row[0] == "fp_reflection_products fp16x3")
    assert fp16x3[5] is None or (fp16x3[5] <= 168 and fp16x3[4] <= 128)
