"""Diagonal plus low rank (RWKV-7; backends/triton/dplr.py) under the Triton interpreter: the fused
recurrent forward and backward against the fp64 reference, varlen, state passing, fp16, the variants of
the diagonal term, the planner's routing, a layer's gradients, the sm_90 build."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import recdsl
from recdsl.planner import triton_route

from conftest import example, random_args, step_through

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tier; GPU runs are in test_gpu.py")

RWKV7 = open(example("rwkv7")).read()


def rel(a, b):
    """Relative RMSE; 0 where both are exactly zero (dw at T = 1 from a zero state)."""
    err, ref = (a.double() - b.double()).norm().item(), b.double().norm().item()
    return err / ref if ref else err


def check(spec, B, T, cu=None, seed=0, h0=True, dtype=torch.float32, tol=1e-5, grad=True):
    """Output, final state and (when grad) every input's and h0's gradient, Triton against fp64 reference."""
    args = random_args(spec, B=B, T=T, dtype=torch.float32, seed=seed)
    N = B if cu is None else cu.numel() - 1
    g = torch.Generator().manual_seed(seed + 1)
    s0 = 0.5 * torch.randn(spec.state_shape(N), generator=g) if h0 else None
    ours = {k: v.to(dtype).requires_grad_(grad) for k, v in args.items()}
    ref = {k: v.double().requires_grad_(grad) for k, v in args.items()}
    s_ours = None if s0 is None else s0.clone().requires_grad_(grad)
    s_ref = None if s0 is None else s0.double().requires_grad_(grad)
    o, S = spec.op(**ours, initial_state=s_ours, output_final_state=True, cu_seqlens=cu, backend="triton")
    ro, rS = spec.op(**ref, initial_state=s_ref, output_final_state=True, cu_seqlens=cu, backend="reference")
    assert o.dtype == dtype and S.dtype == torch.float32
    assert rel(o, ro) < tol and rel(S, rS) < tol
    if not grad:
        return
    do, dS = torch.randn(o.shape, generator=g), torch.randn(S.shape, generator=g)
    xs, rxs = list(ours.values()), list(ref.values())
    if s0 is not None:
        xs, rxs = xs + [s_ours], rxs + [s_ref]
    grads = torch.autograd.grad((o.float() * do).sum() + (S * dS).sum(), xs)
    rgrads = torch.autograd.grad((ro * do.double()).sum() + (rS * dS.double()).sum(), rxs)
    for name, x, y in zip(list(ours) + ["h0"], grads, rgrads):
        assert rel(x, y) < tol, name


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 2), T=st.sampled_from([1, 2, 17, 63, 64, 65, 130]), H=st.integers(1, 2),
       K=st.integers(1, 32), V=st.integers(1, 32), h0=st.booleans(), seed=st.integers(0, 99))
def test_forward_and_backward_match_reference(B, T, H, K, V, h0, seed):
    spec = recdsl.load(RWKV7, H=H, K=K, V=V)
    check(spec, B, T, seed=seed, h0=h0)


def test_varlen_with_an_empty_sequence():
    spec = recdsl.load(RWKV7, H=2, K=8, V=12)
    cu = torch.tensor([0, 7, 7, 72, 80], dtype=torch.int32)   # a segment boundary inside the third sequence
    check(spec, 1, 80, cu=cu)


def test_partial_sums_over_value_blocks(monkeypatch):
    """Small blocks force several value blocks per head: dr, dk, da, db, dw are sums of their parts."""
    from recdsl.backends.triton import dplr
    monkeypatch.setattr(dplr, "blocks", lambda K, V: (16, 16, 4))
    monkeypatch.setattr(dplr, "bwd_blocks", lambda K, V: (16, 16, 4))
    check(recdsl.load(RWKV7, H=1, K=16, V=33), 1, 66)


def test_state_passing_equals_one_call():
    spec = recdsl.load(RWKV7, H=2, K=8, V=8)
    args = random_args(spec, B=2, T=40, dtype=torch.float32, seed=3)
    with torch.no_grad():
        o, S = spec.op(**args, output_final_state=True, backend="triton")
        o1, S1 = spec.op(**{k: v[:, :25] for k, v in args.items()}, output_final_state=True, backend="triton")
        o2, S2 = spec.op(**{k: v[:, 25:] for k, v in args.items()}, initial_state=S1, output_final_state=True,
                         backend="triton")
    assert rel(torch.cat([o1, o2], 1), o) < 1e-6 and rel(S2, S) < 1e-6


def test_fp16_inputs():
    check(recdsl.load(RWKV7, H=2, K=16, V=16), 1, 65, dtype=torch.float16, tol=3e-3)


VARIANTS = {
    # diag(d) without exp: the decay itself is the input
    "plain": RWKV7.replace("w[K] log", "w[K] in (0, 1)").replace("diag(exp(w))", "diag(w)"),
    # identity plus rank one (fla's IPLR), the rank-one term first
    "identity": RWKV7.replace("input r[K], w[K] log,", "input r[K],").replace(
        "diag(exp(w)) + outer(b, a)", "outer(b, a) + I").replace("    w = -0.6065 * sigmoid(linear(hidden, rank = 16))\n", ""),
    # one log decay per head, broadcast over the keys
    "scalar": RWKV7.replace("w[K] log", "w log").replace("    w = -0.6065 * sigmoid(linear(hidden, rank = 16))\n",
                                                         "    w[H] = -0.6065 * sigmoid(linear(hidden))\n"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_of_the_diagonal_term(variant):
    spec = recdsl.load(VARIANTS[variant], H=2, K=8, V=8)
    assert triton_route(spec)[0] == "dplr_recurrent", triton_route(spec)[1]
    assert spec.memo["dplr_pattern"].decay == {"plain": "plain", "identity": "none", "scalar": "exp"}[variant]
    check(spec, 2, 20, seed=5)


def test_routing_and_reasons():
    spec = recdsl.load(example("rwkv7"))
    assert triton_route(spec)[0] == "dplr_recurrent"
    plan = spec.plan("auto", on_cuda=True, needs_grad=True)
    assert plan.backend == "triton" and plan.algorithm == "dplr_recurrent"
    assert "diag(exp(w)) + b a^T" in plan.text() and "every 64 tokens" in plan.text()
    assert spec.plan("auto", on_cuda=False).backend == "reference"
    rank2 = RWKV7.replace("+ outer(b, a)", "+ outer(b, a) + outer(a, b)")
    assert "diagonal plus low rank: the transition's diagonal term" in triton_route(recdsl.load(rank2))[1]
    householder = recdsl.load(example("deltanet"))
    assert "diagonal plus low rank: the transition is not diag(...) + outer(b, a)" not in str(
        triton_route(householder)[1])   # routed elsewhere


def test_layer_gradients_and_decoding_match_reference():
    """A compiled rwkv7 layer on the Triton backend: parameter gradients match the reference backend with the
    same weights, and step() token by token reproduces the forward."""
    params = dict(H=2, K=8, V=8, d_model=16)
    layer = recdsl.compile(example("rwkv7"), backend="triton", **params)
    ref = recdsl.compile(example("rwkv7"), backend="reference", **params)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 9, 16)
    for m in (layer, ref):
        y, _ = m(x)
        y.square().mean().backward()
    for (name, p), q in zip(layer.named_parameters(), ref.parameters()):
        assert rel(p.grad, q.grad) < 1e-4, name
    with torch.no_grad():
        assert rel(step_through(layer, x), layer(x)[0]) < 1e-5


def test_kernels_build_for_sm90():
    from conftest import compile_sm90
    res = compile_sm90("recdsl.backends.triton.dplr", "aot_jobs", 64, 64, "bf16", varlen=True)
    assert sorted(n for n, size, secs in res) == ["dplr_recurrent_bwd", "dplr_recurrent_fwd"]
    assert all(size > 0 for n, size, secs in res)
