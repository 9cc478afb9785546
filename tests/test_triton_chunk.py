"""Chunkwise matrix-state kernels (backends/triton/chunk.py) under the Triton interpreter, against a
plain fp64 PyTorch loop S_t = diag(a_t) S_{t-1} + k_t v_t^T, o_t = scale * S_t^T q_t; plus an
ahead-of-time compile of every kernel for Hopper (sm_90) in a subprocess without the interpreter."""

import pytest
import torch

pytest.importorskip("triton")
# conftest.py turns the interpreter on when there is no GPU; GPU runs are covered by test_gpu.py
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tier; GPU runs are in test_gpu.py")

from recdsl.backends.triton.chunk import generate  # noqa: E402
from recdsl.backends.triton.chunk_launch import chunk_linear_recurrence  # noqa: E402

TOL = 1e-4


def reference(q, k, v, g, sign, scale, h0, cu_seqlens):
    """fp64 step-by-step recurrence; returns (o, final states [N,H,K,V])."""
    q, k, v = q.double(), k.double(), v.double()
    B, T, H, K = q.shape
    a = torch.ones(B, T, H, 1, dtype=torch.float64) if g is None else torch.exp(g.double())
    if sign is not None:
        a = a * sign.double()
    if a.dim() == 3:
        a = a[..., None]
    seqs = [(b, 0, T) for b in range(B)] if cu_seqlens is None else \
        [(0, int(s), int(e)) for s, e in zip(cu_seqlens[:-1], cu_seqlens[1:])]
    outs = {}
    finals = []
    for n, (b, s, e) in enumerate(seqs):
        S = h0[n].double() if h0 is not None else torch.zeros(H, K, v.shape[-1], dtype=torch.float64)
        for t in range(s, e):
            S = a[b, t][..., None] * S + k[b, t][:, :, None] * v[b, t][:, None, :]
            outs[(b, t)] = scale * torch.einsum("hk,hkv->hv", q[b, t], S)
        finals.append(S)
    o = torch.stack([torch.stack([outs[(b, t)] for t in range(T)]) for b in range(B)])
    return o, torch.stack(finals)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def packed_errors(decay: str, K: int, V: int, signed: bool, device: str = "cuda", dtype=torch.bfloat16,
                  seed: int = 2) -> dict:
    """Relative errors against the fp64 loop of chunk_linear_recurrence on `device`: T = 300 tokens packed as
    sequences of 1, 129 and 170, an initial and a final state, scale 0.3; the forward ("o", "ht"), every
    gradient ("dq", "dk", "dv", "dg", "dh0"), and for scalar decays or none the one-launch forward ("fused_o",
    "fused_ht"). Used by the GPU tier and benchmarks/stress_chunk_shapes.py."""
    gen = torch.Generator().manual_seed(seed)
    T, H, cu_seqlens = 300, 2, [0, 1, 130, 300]
    q, k, v = (torch.randn(1, T, H, d, generator=gen) * s for d, s in ((K, 1.0), (K, 0.5), (V, 1.0)))
    gshape = None if decay == "none" else (1, T, H, K) if decay == "perkey" else (1, T, H)
    g = None if gshape is None else -torch.rand(gshape, generator=gen) * 0.9 - 0.02
    sign = torch.where(torch.rand(gshape, generator=gen) < 0.35, -1, 1).to(torch.int8) if signed else None
    h0 = torch.randn(3, H, K, V, generator=gen)
    names = [n for n, x in zip(("q", "k", "v", "g", "h0"), (q, k, v, g, h0)) if x is not None]
    leaves = [x.requires_grad_(True) for x in (q, k, v, g, h0) if x is not None]
    dev = [x.detach().to(device, dtype if i < 3 else torch.float32).requires_grad_(True) for i, x in enumerate(leaves)]
    args = dict(zip(names, dev))
    cu = torch.tensor(cu_seqlens, dtype=torch.int32, device=device)
    sgn = None if sign is None else sign.to(device)

    def run(**kw):
        return chunk_linear_recurrence(args["q"], args["k"], args["v"], args.get("g"), sgn, scale=0.3,
                                       initial_state=args["h0"], output_final_state=True, cu_seqlens=cu, **kw)
    o, ht = run()
    ro, rht = reference(q, k, v, g, sign, 0.3, h0, cu_seqlens)
    errs = {"o": rel(o.cpu(), ro), "ht": rel(ht.cpu(), rht)}
    do, dht = torch.randn(ro.shape, generator=gen), torch.randn(rht.shape, generator=gen)
    grads = torch.autograd.grad((o.float() * do.to(device)).sum() + (ht * dht.to(device)).sum(), dev)
    rgrads = torch.autograd.grad((ro * do.double()).sum() + (rht * dht.double()).sum(), leaves)
    errs.update({f"d{n}": rel(a.cpu(), b) for n, a, b in zip(names, grads, rgrads)})
    if decay != "perkey":
        with torch.no_grad():
            fo, fht = run(inference="fused")
        errs.update(fused_o=rel(fo.cpu(), ro), fused_ht=rel(fht.cpu(), rht))
    return errs

def check(decay="perkey", signed=False, B=2, T=65, H=2, K=32, V=32, BT=64, gate=None, h0=True,
          final=True, cu_seqlens=None, seed=0, scale=None):
    torch.manual_seed(seed)
    q = torch.randn(B, T, H, K)
    k = torch.randn(B, T, H, K) * 0.5
    v = torch.randn(B, T, H, V)
    gshape = {"perkey": (B, T, H, K), "scalar": (B, T, H), "none": None}[decay]
    g = None if gshape is None else (gate(gshape) if gate else -torch.rand(gshape) * 0.9 - 0.02)
    sign = None
    if signed:
        sign = torch.where(torch.rand(gshape) < 0.35, -1.0, 1.0)
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    s0 = torch.randn(N, H, K, V) if h0 else None
    cu = None if cu_seqlens is None else torch.tensor(cu_seqlens, dtype=torch.int32)
    leaves = [x for x in (q, k, v, g, s0) if x is not None]
    for x in leaves:
        x.requires_grad_(True)
    do = torch.randn(B, T, H, V)
    dht = torch.randn(N, H, K, V)

    o, ht = chunk_linear_recurrence(q, k, v, g, sign, scale=scale, initial_state=s0, output_final_state=final,
                                    cu_seqlens=cu, chunk_size=BT)
    ro, rht = reference(q, k, v, g, sign, K ** -0.5 if scale is None else scale, s0, cu_seqlens)
    assert rel(o, ro) < TOL, f"o {rel(o, ro)}"
    loss = (o * do).sum()
    rloss = (ro * do.double()).sum()
    if final:
        assert rel(ht, rht) < TOL, f"ht {rel(ht, rht)}"
        loss = loss + (ht * dht).sum()
        rloss = rloss + (rht * dht.double()).sum()
    else:
        assert ht is None
    grads = torch.autograd.grad(loss, leaves)
    rgrads = torch.autograd.grad(rloss, leaves)
    names = [n for n, x in zip("q k v g h0".split(), (q, k, v, g, s0)) if x is not None]
    for name, a, b in zip(names, grads, rgrads):
        assert torch.isfinite(a).all(), f"d{name} not finite"
        assert rel(a, b) < TOL, f"d{name} {rel(a, b)}"


# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 17, 64, 130])
def test_perkey(T):
    check("perkey", T=T, B=1 if T == 130 else 2)


@pytest.mark.parametrize("T,BT", [(65, 64), (130, 32)])
def test_scalar(T, BT):
    check("scalar", T=T, BT=BT)


def test_no_decay_small_dims():
    check("none", T=65, K=20, V=12, BT=16)


@pytest.mark.parametrize("decay", ["scalar", "perkey"])
def test_signed(decay):
    check(decay, signed=True, T=65, BT=32)


def test_sign_as_int8_is_read_as_is():
    """The kernels read signs as int8; an fp32 sign is converted to it, so both give the same bits."""
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 40, 2, 16), torch.randn(1, 40, 2, 16) * 0.5, torch.randn(1, 40, 2, 8)
    g = -torch.rand(1, 40, 2, 16) * 0.9
    sign = torch.where(torch.rand(g.shape) < 0.4, -1.0, 1.0)
    o32, h32 = chunk_linear_recurrence(q, k, v, g, sign, output_final_state=True, chunk_size=16)
    o8, h8 = chunk_linear_recurrence(q, k, v, g, sign.to(torch.int8), output_final_state=True, chunk_size=16)
    ref, _ = chunk_linear_recurrence(q, k, v, g, None, output_final_state=True, chunk_size=16)
    assert torch.equal(o32, o8) and torch.equal(h32, h8) and not torch.allclose(o8, ref)


@pytest.mark.parametrize("decay", ["scalar", "perkey"])
def test_gate_exactly_one(decay):
    # g = 0: a = 1 (signed: a = +-1), no decay at all inside or across chunks
    check(decay, signed=True, T=40, BT=16, gate=lambda s: torch.zeros(s))


@pytest.mark.parametrize("decay", ["scalar", "perkey"])
def test_strong_decay(decay):
    # g = -20 everywhere, plus per-key mixtures of strong and weak steps: per-key decays take
    # the hierarchical split (every level and the diagonal case) instead of one factorised dot.
    def gate(s):
        x = -torch.rand(s) * 0.1
        x[:, ::3] = -20.0
        x[:, 5:9] = -100.0
        if len(s) == 4:
            x[..., : s[-1] // 2] = -20.0
        return x
    check(decay, T=40, BT=32, gate=gate, K=32, V=16)


def test_perkey_range_just_over_fast_path():
    # chunk log ranges of ~130 with single steps up to 4: the split stops at an intermediate level
    check("perkey", T=64, BT=64, B=1, gate=lambda s: -torch.rand(s) * 4.0, K=16, V=16)


def test_strong_scalar_gate_with_a_partial_chunk():
    """Scalar log gates of -4 to -12 per token over a partial last chunk (see the delta rule's twin test)."""
    check("scalar", T=45, BT=32, gate=lambda s: -torch.rand(s) * 8.0 - 4.0)


def test_no_initial_state_no_final():
    check("perkey", signed=True, T=33, BT=16, h0=False, final=False)


@pytest.mark.parametrize("decay", ["scalar", "perkey"])
def test_varlen(decay):
    # signed: each sequence's chunks start their cumulative sign afresh (a 1-token and an empty sequence too)
    check(decay, signed=True, B=1, T=100, cu_seqlens=[0, 1, 17, 50, 50, 100], BT=16)


@pytest.mark.parametrize("decay,signed", [("none", False), ("scalar", False), ("scalar", True), ("perkey", False),
                                          ("perkey", True)])
def test_fused_recurrent_forward(decay, signed):
    """The decoding path: one launch over the tokens, against the same loop; packed sequences with an
    empty one, an initial and a final state, K and V that are not powers of two, T = 1."""
    from recdsl.backends.triton.recurrent import recurrent_forward
    torch.manual_seed(3)
    H, K, V = 2, 20, 12
    for B, T, cu_seqlens in ((2, 1, None), (1, 23, [0, 5, 5, 23])):
        q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K) * 0.5
        v = torch.randn(B, T, H, V)
        gshape = {"perkey": (B, T, H, K), "scalar": (B, T, H), "none": None}[decay]
        g = None if gshape is None else -torch.rand(gshape) * 0.9 - 0.02
        sign = torch.where(torch.rand(gshape) < 0.35, -1.0, 1.0) if signed else None
        N = B if cu_seqlens is None else len(cu_seqlens) - 1
        s0 = torch.randn(N, H, K, V)
        cu = None if cu_seqlens is None else torch.tensor(cu_seqlens, dtype=torch.int32)
        o, ht = recurrent_forward(q, k, v, g, sign, 0.3, s0, True, cu, decay)
        ro, rht = reference(q, k, v, g, sign, 0.3, s0, cu_seqlens)
        assert rel(o, ro) < 1e-5 and rel(ht, rht) < 1e-5
        # the public entry point takes it only when nothing needs a gradient
        o2, _ = chunk_linear_recurrence(q, k, v, g, sign, scale=0.3, initial_state=s0, cu_seqlens=cu, inference="recurrent")
        assert torch.equal(o2, o)



@pytest.mark.parametrize("decay,signed", [("none", False), ("scalar", False), ("scalar", True)])
def test_fused_chunk_forward(decay, signed):
    """The one-launch chunked forward of calls without a gradient, against the loop: packed sequences
    (an empty one, one ending mid-chunk), an initial and a final state, K and V that are not powers of
    two, a partial last chunk, a strong decay."""
    torch.manual_seed(5)
    H, K, V = 2, 20, 12
    for B, T, cu_seqlens, BT, strength in ((2, 37, None, 16, 0.9), (1, 70, [0, 5, 5, 70], 32, 0.9),
                                           (1, 40, None, 16, 12.0)):
        q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K) * 0.5
        v = torch.randn(B, T, H, V)
        gshape = {"perkey": (B, T, H, K), "scalar": (B, T, H), "none": None}[decay]
        g = None if gshape is None else -torch.rand(gshape) * strength - 0.02
        sign = torch.where(torch.rand(gshape) < 0.35, -1.0, 1.0) if signed else None
        N = B if cu_seqlens is None else len(cu_seqlens) - 1
        s0 = torch.randn(N, H, K, V)
        cu = None if cu_seqlens is None else torch.tensor(cu_seqlens, dtype=torch.int32)
        o, ht = chunk_linear_recurrence(q, k, v, g, sign, scale=0.3, initial_state=s0, output_final_state=True,
                                        cu_seqlens=cu, chunk_size=BT, inference="fused")
        ro, rht = reference(q, k, v, g, sign, 0.3, s0, cu_seqlens)
        assert rel(o, ro) < TOL and rel(ht, rht) < TOL, (rel(o, ro), rel(ht, rht))
        # without a final state, and through the two-pass forward: the same outputs
        o2, none = chunk_linear_recurrence(q, k, v, g, sign, scale=0.3, initial_state=s0, cu_seqlens=cu,
                                           chunk_size=BT, inference="fused")
        o3, _ = chunk_linear_recurrence(q, k, v, g, sign, scale=0.3, initial_state=s0, cu_seqlens=cu, chunk_size=BT)
        assert none is None and torch.equal(o2, o) and rel(o3, o) < 1e-5
    with pytest.raises(ValueError, match="inference must be one of"):
        chunk_linear_recurrence(q, k, v, g, sign, inference="fast")
    with pytest.raises(ValueError, match="per-key decays"):
        chunk_linear_recurrence(q, k, v, -torch.rand(q.shape), inference="fused")

def test_generated_source_variants():
    for decay in ("none", "scalar", "perkey"):
        for signed in (False, True):
            if decay == "none" and signed:
                with pytest.raises(ValueError):
                    generate(decay, signed)
                continue
            src = generate(decay, signed)
            compile(src, f"<chunk {decay} {signed}>", "exec")
            # the five passes, the one-launch forward (not for per-key decays), and once per call the
            # cumulative sign (signed) or scalar gate
            assert src.count("@triton.jit\ndef chunk_") == 5 + (decay != "perkey") + signed + (decay == "scalar")
            assert "#if" not in src and "#endif" not in src


# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("decay,signed,varlen", [("none", False, False), ("scalar", True, True),
                                                 ("perkey", True, False)])
def test_aot_compile_sm90(decay, signed, varlen):
    """Every kernel of the variant compiles to a cubin for sm_90 (bf16, K = V = 128)."""
    from conftest import compile_sm90
    res = compile_sm90("recdsl.backends.triton.chunk_launch", "aot_jobs", decay, signed, "bf16", varlen=varlen)
    names = [n for n, size, secs in res]
    assert sorted(names) == sorted(["chunk_fwd_h", "chunk_fwd_o", "chunk_bwd_dh", "chunk_bwd_dv", "chunk_bwd_dqkg",
                                    "recurrent_fwd", "delta_recurrent_fwd"] + ["chunk_sign_parity"] * signed
                                   + ["chunk_gate_cumsum"] * (decay == "scalar")
                                   + ["chunk_fwd_fused"] * (decay != "perkey"))
    assert all(size > 0 for n, size, secs in res)
