"""Diagonal plus low rank (RWKV-7; backends/triton/dplr.py) under the Triton interpreter: the fused
recurrent forward and backward against the fp64 reference, varlen, state passing, fp16, the variants of
the diagonal term, the planner's routing, a layer's gradients, the sm_90 build; the chunkwise forward
against the recurrent one."""
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
    """The fused recurrent walk on any inputs (random ones expand the state: 1e5 after 130 tokens), so it
    is pinned; the chunkwise forward's tests below take RWKV-7's contractive inputs."""
    from recdsl.bench import _with_env   # hypothesis tests cannot take monkeypatch
    spec = recdsl.load(RWKV7, H=H, K=K, V=V)
    _with_env("RECDSL_DPLR_FORWARD", "recurrent", lambda: check(spec, B, T, seed=seed, h0=h0))()


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


# ---------------------------------------------------------------------------------------------------
# The chunkwise forward (dplr_chunk.py): its outputs and checkpoints feed the same backward.
# ---------------------------------------------------------------------------------------------------

def rwkv7_inputs(B, T, H, K, V, seed, w_lo=-0.6065, w_hi=0.0):
    """Inputs as RWKV-7's layer makes them (a = -kappa, b = kappa * iclr, kappa of unit norm): the
    transition stays contractive, the regime the chunk form is for (an expanding one amplifies rounding
    differences between any two orders of summation)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)
    kappa = torch.nn.functional.normalize(rnd(B, T, H, K), dim=-1)
    iclr = torch.sigmoid(rnd(B, T, H, K))
    w = w_lo + (w_hi - w_lo) * torch.rand(B, T, H, K, generator=g)
    return (rnd(B, T, H, K), w, rnd(B, T, H, K) * (1 - iclr) * K ** -0.5, rnd(B, T, H, V), -kappa, kappa * iclr,
            rnd(B, H, K, V))


def both_forwards(monkeypatch, *args, cu=None, decay="exp", h0=True):
    from recdsl.backends.triton.dplr import dplr_recurrence
    r, w, k, v, a, b, s0 = args
    outs = []
    for mode in ("chunk", "recurrent"):
        monkeypatch.setenv("RECDSL_DPLR_FORWARD", mode)
        xs = [x.clone().requires_grad_(True) for x in (r, w, k, v, a, b, s0)]
        o, ht = dplr_recurrence(*xs[:6], scale=0.5, initial_state=xs[6] if h0 else None, output_final_state=True,
                                cu_seqlens=cu, decay=decay)
        gen = torch.Generator().manual_seed(9)
        loss = (o * torch.randn(o.shape, generator=gen)).sum() + (ht * torch.randn(ht.shape, generator=gen)).sum()
        grads = torch.autograd.grad(loss, [x for x, n in zip(xs, "rwkvabh") if (h0 or n != "h") and
                                           (decay != "none" or n != "w")])
        outs.append((o, ht, grads))
    (o, ht, gr), (ro, rht, rgr) = outs
    assert torch.isfinite(o).all() and rel(o, ro) < 1e-5 and rel(ht, rht) < 1e-5
    for x, y in zip(gr, rgr):   # the same backward from the chunk forward's checkpoints
        assert rel(x, y) < 1e-4


@pytest.mark.parametrize("T,K,V", [(1, 8, 4), (17, 16, 8), (64, 32, 16), (130, 24, 12), (200, 64, 64)])
def test_chunked_forward_matches_the_recurrent_one(T, K, V, monkeypatch):
    both_forwards(monkeypatch, *rwkv7_inputs(1 if T > 64 else 2, T, 2, K, V, seed=T))


def test_chunked_forward_varlen_identity_and_strong_decays(monkeypatch):
    """Packed sequences with an empty one; the identity diagonal; log decays of -6 to -14 per token, where
    exp(-G) over a chunk overflows unless the intra-chunk products split their decays (the rank-one
    read's exclusive pairs included)."""
    cu = torch.tensor([0, 7, 7, 72, 80], dtype=torch.int32)
    args = rwkv7_inputs(1, 80, 2, 8, 12, seed=3)
    both_forwards(monkeypatch, *args[:6], args[6][:1].expand(4, -1, -1, -1).contiguous(), cu=cu)
    both_forwards(monkeypatch, *rwkv7_inputs(1, 90, 2, 16, 8, seed=4), decay="none", h0=False)
    both_forwards(monkeypatch, *rwkv7_inputs(1, 100, 2, 16, 8, seed=5, w_lo=-14.0, w_hi=-6.0))
    # strong decays in the middle chunk only: the intra kernel's second launch redoes just that chunk
    r, w, k, v, a, b, s0 = rwkv7_inputs(1, 150, 2, 16, 8, seed=7)
    w[:, 64:128] = -6.0 - 8.0 * torch.rand(1, 64, 2, 16, generator=torch.Generator().manual_seed(8))
    both_forwards(monkeypatch, r, w, k, v, a, b, s0)


def test_forward_choice(monkeypatch):
    """Calls longer than one chunk take the chunkwise forward unless RECDSL_DPLR_FORWARD=recurrent; the plan
    says which; a misspelt choice is an error, not a silent default."""
    from recdsl.backends.triton.dplr import chunked_forward
    monkeypatch.delenv("RECDSL_DPLR_FORWARD", raising=False)
    assert chunked_forward("exp", 64, 65) and not chunked_forward("exp", 64, 64)
    assert not chunked_forward("plain", 64, 4096) and not chunked_forward("exp", 256, 4096)
    spec = recdsl.load(RWKV7, H=2, K=16, V=8)
    assert "forward: chunkwise" in spec.plan("triton", tokens=4096).text()
    assert "a chunkwise forward (BT=64)" in spec.plan("triton", tokens=4096).text().splitlines()[0]
    assert "forward: one fused recurrent launch (32 tokens, at most one chunk" in spec.plan("triton", tokens=32).text()
    monkeypatch.setenv("RECDSL_DPLR_FORWARD", "recurrent")
    assert not chunked_forward("exp", 64, 4096)
    assert "forward: one fused recurrent launch" in spec.plan("triton", tokens=4096).text()
    monkeypatch.setenv("RECDSL_DPLR_FORWARD", "chunk")
    assert chunked_forward("exp", 64, 1)
    monkeypatch.setenv("RECDSL_DPLR_FORWARD", "chunked")
    with pytest.raises(ValueError, match="RECDSL_DPLR_FORWARD must be 'chunk' or 'recurrent'"):
        chunked_forward("exp", 64, 4096)


def test_chunked_forward_through_the_spec(monkeypatch):
    """The planner's dplr route with the chunkwise forward, against the fp64 reference (contractive
    inputs: the spec's own layer would make them so)."""
    monkeypatch.setenv("RECDSL_DPLR_FORWARD", "chunk")
    spec = recdsl.load(RWKV7, H=2, K=16, V=8)
    r, w, k, v, a, b, _ = rwkv7_inputs(2, 70, 2, 16, 8, seed=6)
    args = dict(r=r, w=w, k=k, v=v, a=a, b=b)
    o, S = spec.op(**args, output_final_state=True, backend="triton")
    ro, rS = spec.op(**{n: x.double() for n, x in args.items()}, output_final_state=True, backend="reference")
    assert rel(o, ro) < 1e-5 and rel(S, rS) < 1e-5


@pytest.mark.parametrize("data,K", [("bf16", 64), ("fp32", 128)])
def test_chunked_forward_builds_for_sm90(data, K):
    """The chunkwise forward's kernels build to sm_90 cubins within its shared memory."""
    from conftest import compile_sm90
    res = compile_sm90("recdsl.backends.triton.dplr_chunk", "aot_jobs", K=K, V=K, data=data, with_shared=True)
    assert sorted(n for n, *_ in res) == ["dplr_chunk_intra", "dplr_chunk_intra_strong", "dplr_chunk_out",
                                          "dplr_chunk_state"]
    assert all(size > 0 and shared <= 232448 for n, size, secs, shared, stack in res), res
