"""The chunked delta rule (wy.py + chunk.py's delta passes, launched by delta_chunk.py) under the Triton
interpreter: forward and every gradient against a loop written from the equations, through the spec
against the fp64 reference, varlen, state passing, beta edges, n_h reflections, the custom op and
torch.compile, and the sm_90 ahead-of-time build."""
import pytest
import torch
from hypothesis import HealthCheck, example as known, given, settings, strategies as st

import recdsl

from conftest import check_against_reference, example, random_args

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tier; GPU runs are in test_gpu.py")

from recdsl.backends.triton.delta_chunk import chunk_delta_rule  # noqa: E402


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def loop(q, k, v, beta, g, scale, h0):
    """S <- exp(g_t) S; for each reflection j: S <- S + beta k (v - S^T k)^T; o_t = scale S^T q_t (fp64)."""
    B, T, H, K = q.shape
    if k.dim() == 4:
        k, v, beta = k.unsqueeze(3), v.unsqueeze(3), beta.unsqueeze(3)
    S = h0.clone() if h0 is not None else q.new_zeros(B, H, K, v.shape[-1])
    out = []
    for t in range(T):
        if g is not None:
            S = S * torch.exp(g[:, t])[..., None, None]
        for j in range(k.shape[3]):
            kj = k[:, t, :, j]
            u = beta[:, t, :, j, None] * (v[:, t, :, j] - torch.einsum("bhkv,bhk->bhv", S, kj))
            S = S + kj[..., None] * u[..., None, :]
        out.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return (torch.stack(out, 1) if out else q.new_zeros(B, 0, H, v.shape[-1])), S


def make(B, T, H, K, V, n_h, gated, h0, beta_hi=2.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    kv = (n_h,) if n_h else ()
    ins = {"q": r(B, T, H, K), "k": torch.nn.functional.normalize(r(B, T, H, *kv, K), dim=-1),
           "v": r(B, T, H, *kv, V), "beta": beta_hi * torch.rand(B, T, H, *kv, generator=gen, dtype=torch.float64)}
    if gated:
        ins["g"] = -torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    if h0:
        ins["h0"] = r(B, H, K, V)
    return ins


def check(ins, scale=0.4, tol=2e-5, cu_seqlens=None):
    """Forward, final state and the gradients of every input against the loop (sequences split by
    cu_seqlens are run one by one through the loop)."""
    ref = {n: x.clone().requires_grad_(True) for n, x in ins.items()}
    f32 = {n: x.float().requires_grad_(True) for n, x in ins.items()}
    o, S = chunk_delta_rule(f32["q"], f32["k"], f32["v"], f32["beta"], f32.get("g"), scale, f32.get("h0"), True,
                            cu_seqlens)
    if cu_seqlens is None:
        ro, rS = loop(ref["q"], ref["k"], ref["v"], ref["beta"], ref.get("g"), scale, ref.get("h0"))
    else:
        outs, states = [], []
        for n in range(cu_seqlens.numel() - 1):
            s, e = int(cu_seqlens[n]), int(cu_seqlens[n + 1])
            cut = {m: (x[n:n + 1] if m == "h0" else x[:, s:e]) for m, x in ref.items()}
            oo, ss = loop(cut["q"], cut["k"], cut["v"], cut["beta"], cut.get("g"), scale, cut.get("h0"))
            outs.append(oo)
            states.append(ss)
        ro, rS = torch.cat(outs, 1), torch.cat(states, 0)
    assert rel(o, ro) < tol and rel(S, rS) < tol
    do, dS = torch.randn_like(ro), torch.randn_like(rS)
    names = list(ins)
    want = torch.autograd.grad((ro * do).sum() + (rS * dS).sum(), [ref[n] for n in names])
    got = torch.autograd.grad((o * do.float()).sum() + (S * dS.float()).sum(), [f32[n] for n in names])
    for n, a, b in zip(names, got, want):
        assert torch.isfinite(a).all(), n
        # absolute slack for gradients that vanish (g's without an initial state at T = 1)
        assert (a.double() - b).norm() <= tol * 5 * b.norm() + 1e-6, (n, rel(a, b))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 130), n_h=st.sampled_from([0, 1, 2, 3]), gated=st.booleans(), h0=st.booleans(),
       K=st.sampled_from([8, 16, 32]), V=st.sampled_from([4, 16]), seed=st.integers(0, 99))
@known(T=1, n_h=0, gated=True, h0=False, K=8, V=4, seed=0)
@known(T=70, n_h=3, gated=True, h0=True, K=16, V=4, seed=1)   # 210 steps: chunks end inside a token
def test_matches_loop(T, n_h, gated, h0, K, V, seed):
    check(make(1 if T > 64 else 2, T, 2, K, V, n_h, gated, h0, seed=seed))


@pytest.mark.parametrize("T", [63, 64, 65, 128])
def test_chunk_edges(T):
    check(make(1, T, 1, 16, 8, 0, True, True, seed=T))


def test_strong_gate_with_a_partial_chunk_stays_finite():
    """Log gates of -4 to -12 per token: a partial last chunk's cumulative gate falls far below -88, where
    exp(-G) overflows, so rows past the sequence's end must pair with their chunk's last G, not with 0."""
    ins = make(1, 90, 2, 16, 8, 0, True, True, seed=4)
    ins["g"] = ins["g"] * 8 - 4
    check(ins, tol=1e-4)


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_beta_edges(beta):
    """beta = 0 (no write, identity), 1 (a projection: singular) and 2 (a reflection) stay exact."""
    ins = make(1, 70, 2, 16, 8, 2, True, True, seed=3)
    ins["beta"] = torch.full_like(ins["beta"], beta)
    check(ins)


def test_varlen_with_empty_sequence():
    cu = torch.tensor([0, 70, 70, 75, 140], dtype=torch.int32)
    ins = make(1, 140, 2, 16, 8, 2, True, False, seed=5)
    ins["h0"] = torch.randn(4, 2, 16, 8, dtype=torch.float64)
    check(ins, cu_seqlens=cu)


def test_fp16_inputs():
    ins = make(1, 80, 2, 16, 16, 0, True, True, seed=7)
    f32 = [ins[n].float() for n in ("q", "k", "v")]
    o32, S32 = chunk_delta_rule(*f32, ins["beta"].float(), ins["g"].float(), None, ins["h0"].float(), True)
    o16, S16 = chunk_delta_rule(*(x.half() for x in f32), ins["beta"].float(), ins["g"].float(), None,
                                ins["h0"].float(), True)
    assert o16.dtype == torch.float16 and S16.dtype == torch.float32
    assert rel(o16, o32) < 3e-3 and rel(S16, S32) < 3e-3


def test_shape_errors_name_the_argument():
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match="beta must be"):
        chunk_delta_rule(q, q, q, torch.rand(1, 8, 3))
    with pytest.raises(ValueError, match="initial_state must be"):
        chunk_delta_rule(q, q, q, torch.rand(1, 8, 2), initial_state=torch.zeros(1, 2, 16, 15))


# ---------------------------------------------------------------------------------------------------
# Through the specs: the planner routes calls with a gradient here.
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,params", [("deltanet", {}), ("deltanet_negeig", {}), ("gated_deltanet", {}),
                                         ("deltaproduct", {"n_h": 3})])
def test_spec_forward_backward_matches_reference(name, params):
    spec = recdsl.load(example(name), H=2, K=16, V=8, **params)
    plan = spec.plan("triton", needs_grad=True)
    assert plan.algorithm == "delta_chunk" and "WY form" in plan.text()
    cu = torch.tensor([0, 30, 100], dtype=torch.int32)
    args = random_args(spec, B=1, T=100, dtype=torch.float32, seed=1)
    args = {n: x.requires_grad_(True) for n, x in args.items()}
    h0 = torch.randn(spec.state_shape(2), requires_grad=True)
    check_against_reference(spec, args, h0, cu, label=name)


def test_omitted_zero_gate_runs_the_ungated_kernels(monkeypatch):
    """DeltaProduct called without g (its default, 0) runs the ungated WY kernels, and agrees with an
    explicit g = 0 (which runs the gated ones) and with the reference."""
    import recdsl.backends.triton.delta_chunk as dc
    seen = []
    real = dc.chunk_delta_rule
    monkeypatch.setattr(dc, "chunk_delta_rule", lambda *a, **k: seen.append(a[4] is None) or real(*a, **k))
    spec = recdsl.load(example("deltaproduct"), H=2, K=16, V=8, n_h=2)
    args = random_args(spec, B=2, T=70, dtype=torch.float32, seed=2)
    args.pop("g")
    o, S = spec.op(**args, output_final_state=True, backend="triton")
    assert seen == [True]
    zero = torch.zeros(2, 70, 2)
    o0, S0 = spec.op(**args, g=zero, output_final_state=True, backend="triton")
    assert seen == [True, False]
    ro, rS = spec.op(**{n: x.double() for n, x in args.items()}, output_final_state=True, backend="reference")
    assert rel(o, o0) < 1e-5 and rel(S, S0) < 1e-5
    assert rel(o, ro) < 1e-5 and rel(S, rS) < 1e-5


def test_compiled_layer_trains_and_matches_reference():
    torch.manual_seed(0)
    params = dict(H=2, K=8, V=8, d_model=16)
    layer = recdsl.compile(example("gated_deltanet"), backend="triton", **params)
    ref = recdsl.compile(example("gated_deltanet"), backend="reference", **params)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 70, 16)
    y, _ = layer(x)
    y_ref, _ = ref(x)
    assert rel(y, y_ref) < 1e-5
    y.square().mean().backward()
    y_ref.square().mean().backward()
    for (n, p), (_, pr) in zip(layer.named_parameters(), ref.named_parameters()):
        assert rel(p.grad, pr.grad) < 1e-4, n


def test_opcheck_and_torch_compile():
    from recdsl.backends.triton.delta_chunk import delta_chunk_fwd
    ins = make(1, 20, 2, 16, 8, 2, True, True, seed=11)   # the op takes steps per token: k [B,T,H,n_h,K]
    ins["g"] = torch.nn.functional.pad(ins["g"].unsqueeze(-1), (0, 1))   # and the gate per step
    q, k, v, beta, g, h0 = (ins[n].float().requires_grad_(True) for n in ("q", "k", "v", "beta", "g", "h0"))
    torch.library.opcheck(delta_chunk_fwd, (q, k, v, beta, g, 0.25, h0, True, None))
    torch.manual_seed(0)
    layer = recdsl.compile(example("deltanet"), backend="triton", H=2, K=8, V=8, d_model=16)
    x = torch.randn(1, 12, 16)
    y, _ = torch.compile(layer, fullgraph=True)(x)
    y_eager, _ = layer(x)
    assert rel(y, y_eager) < 1e-5


@pytest.mark.parametrize("n_h", [1, 3])
def test_aot_compile_sm90(n_h):
    """Every kernel of the gated variant builds to an sm_90 cubin (bf16, K = V = 128, varlen), also with
    DeltaProduct's steps read in place (n_h = 3: row addresses divide by a non-power of two)."""
    from conftest import compile_sm90
    res = compile_sm90("recdsl.backends.triton.delta_chunk", "aot_jobs", "scalar", "bf16", varlen=True, n_h=n_h)
    assert sorted(n for n, size, secs in res) == sorted(["wy_diag_inverse", "wy_fwd", "wy_bwd", "chunk_fwd_h",
                                                          "chunk_bwd_dh",
                                                          "chunk_fwd_o", "chunk_bwd_dv", "chunk_bwd_dqkg",
                                                          "chunk_gate_cumsum"])
    assert all(size > 0 for n, size, secs in res)


SM90_SHARED = 232448   # bytes of shared memory a block may use on sm_90


@pytest.mark.parametrize("data,K", [("bf16", 128), ("fp32", 128), ("fp32", 256), ("fp16", 256), ("bf16", 256)])
def test_state_passes_fit_shared_memory(data, K):
    """The sequential state passes buffer [64, K] tiles per pipeline stage; with fp32 states 3 stages
    exceeded sm_90's shared memory at K = 128 (an OutOfResources at the first call). Their builds at the
    planned stages fit, here and at K = 256."""
    from conftest import compile_sm90
    res = compile_sm90("recdsl.backends.triton.delta_chunk", "aot_jobs", "scalar", data, K=K, V=K,
                       kernels=("chunk_fwd_h", "chunk_bwd_dh"), with_shared=True)
    assert [n for n, *_ in res] == ["chunk_fwd_h", "chunk_bwd_dh"]
    for name, size, secs, shared, stack in res:
        assert 0 < shared <= SM90_SHARED, (name, shared)


@pytest.mark.parametrize("n_h", [1, 2])
def test_wy_forward_keeps_its_tiles_in_registers(n_h):
    """wy_fwd reads the keys in blocks of 64 (BKW): holding all 128 keys at once with w's fp32 tiles, its
    sm_90 build by Triton 3.9 spilled (255 registers and 208 B of stack, 280 B at n_h = 2), and the kernel
    took 0.286 against 0.205 ms on an H100. The bf16 build at K = 128 uses no stack."""
    from conftest import compile_sm90
    res = compile_sm90("recdsl.backends.triton.delta_chunk", "aot_jobs", "scalar", "bf16", K=128, V=128,
                       n_h=n_h, kernels=("wy_fwd",), with_shared=True)
    [(name, size, secs, shared, stack)] = res
    if stack is None:
        pytest.skip("no cuobjdump in this Triton")
    assert stack == 0, f"wy_fwd spills {stack} B at K = 128"


@pytest.mark.parametrize("gated", [False, True])
def test_deltaproduct_makes_no_copies_of_its_inputs(gated, monkeypatch):
    """The kernels read DeltaProduct's n_h steps where the caller put them ([B, T, H, n_h, ..]): with the
    launches stubbed out, neither the forward nor the backward makes a torch op whose result is as large as
    the queries (an interleaved copy of k or v, a zero-padded q, a scattered gradient)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from triton.runtime.interpreter import InterpretedFunction
    monkeypatch.setattr(InterpretedFunction, "run", lambda self, *a, **k: None)
    ins = make(2, 40, 2, 16, 16, 2, gated, False, seed=1)
    x = {n: t.float().requires_grad_(True) for n, t in ins.items()}
    fresh = ("empty", "empty_like", "new_empty", "empty_strided", "ones_like",     # allocations
             "view", "unsqueeze", "squeeze", "transpose", "permute", "t", "expand", "slice", "select", "detach",
             "alias", "as_strided")                                                 # views
    big = []

    class Large(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if isinstance(out, torch.Tensor) and out.numel() >= x["q"].numel() and name not in fresh:
                big.append(name)
            return out

    with Large():
        o, _ = chunk_delta_rule(x["q"], x["k"], x["v"], x["beta"], x.get("g"))
        o.backward(torch.ones_like(o))
    assert big == [], big


def test_row_offsets_beyond_int32_refuse_clearly():
    """Rows within a sequence are offset in int32 (steps * heads < 2^31): past that a clear error."""
    from recdsl.backends.triton.chunk_launch import _tables
    with pytest.raises(ValueError, match="int32"):
        _tables(None, 1, 2 ** 27, 16, 64)          # DeltaProduct's steps count: T * n_h
    assert _tables(None, 1, 2 ** 27 - 1, 16, 64)[3] == 2 ** 21


def test_wide_fp32_keys_refuse_training_clearly():
    q, k, v = (torch.randn(1, 8, 1, 256, requires_grad=True) for _ in range(3))
    beta = torch.rand(1, 8, 1)
    with pytest.raises(ValueError, match="bf16 inputs or K <= 128"):
        chunk_delta_rule(q, k, v, beta)


def test_l2norm_kernel_matches_torch():
    from recdsl.backends.triton.l2norm import l2norm
    x = torch.randn(3, 37, 2, 24, dtype=torch.float64)
    x[0, 0, 0] = 0.0                                        # a zero row: x / eps, gradient dy / eps
    xf = x.float().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    (y,), yr = l2norm(xf), torch.nn.functional.normalize(xr, dim=-1, eps=1e-12)
    assert rel(y, yr) < 1e-6
    dy = torch.randn_like(yr)
    dy[0, 0, 0] = 0.0
    (ga,), (gb,) = torch.autograd.grad((y * dy.float()).sum(), [xf]), torch.autograd.grad((yr * dy).sum(), [xr])
    assert rel(ga, gb) < 1e-5
    assert l2norm(x.half())[0].dtype == torch.float16


def test_l2norm_pair_in_one_launch_matches_torch():
    """q and k (different row counts, as DeltaProduct's [B,T,H,K] and [B,T,H,n_h,K]) in one launch each
    way: every row of both, forward and backward, as torch; mismatched widths refuse."""
    from recdsl.backends.triton.l2norm import l2norm
    a = torch.randn(2, 37, 3, 24, requires_grad=True)
    b = torch.randn(2, 37, 3, 2, 24, requires_grad=True)
    ya, yb = l2norm(a, b)
    ra, rb = (torch.nn.functional.normalize(x, dim=-1, eps=1e-12) for x in (a, b))
    assert rel(ya, ra) < 1e-6 and rel(yb, rb) < 1e-6
    da, db = torch.randn_like(ya), torch.randn_like(yb)
    got = torch.autograd.grad((ya * da).sum() + (yb * db).sum(), [a, b])
    want = torch.autograd.grad((ra * da).sum() + (rb * db).sum(), [a, b])
    assert all(rel(g, w) < 1e-5 for g, w in zip(got, want))
    with pytest.raises(ValueError, match="one width"):
        l2norm(a, torch.randn(2, 37, 3, 16))
