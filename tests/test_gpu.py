"""GPU tier (skipped without CUDA): bf16 kernels against the fp32 reference by relative RMSE,
agreement with flash-linear-attention where it has the op, torch.compile with Inductor."""
import pytest
import torch

import recdsl

from conftest import cuda_args, example

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("name", ["hgrn", "lru", "mamba", "mamba_negeig"])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3), (torch.float32, 1e-5)])
def test_scan_against_reference(name, dtype, tol):
    against_reference(recdsl.load(example(name), D=256), dtype, tol)


def against_reference(spec, dtype, tol, B=2, T=300):
    """The Triton backend in `dtype` against the fp32 reference: output and final state to `tol`, every
    input's gradient to 5 * tol."""
    args = cuda_args(spec, B, T, dtype)
    ref_args = {k: v.detach().float().requires_grad_(True) for k, v in args.items()}
    h0 = torch.randn(spec.state_shape(B), device="cuda")
    o, S = spec.op(**args, initial_state=h0, output_final_state=True, backend="triton")
    o_r, S_r = spec.op(**ref_args, initial_state=h0, output_final_state=True, backend="reference")
    assert o.dtype == dtype and S.dtype == torch.float32
    assert rel(o, o_r) < tol and rel(S, S_r) < tol
    do = torch.randn_like(o_r)
    (o.float() * do).sum().backward()
    (o_r * do).sum().backward()
    for k in args:
        assert rel(args[k].grad, ref_args[k].grad) < 5 * tol, k


@pytest.mark.parametrize("B,T,D", [(2, 20000, 64), (4, 4096, 2048)])
def test_look_back_against_walk(B, T, D, monkeypatch):
    """The look-back's tiles run at once here (on the interpreter they run in order): long chains of
    tiles, and many; varlen with an empty sequence too. Both schedules in fp32 agree to rounding,
    outputs, final states and gradients."""
    cu = torch.tensor([0, 1000, 1000, B * T - 3001, B * T], dtype=torch.int32, device="cuda")
    h0 = torch.randn(B, D, device="cuda")
    h0_packed = torch.randn(4, D, device="cuda")
    res = []
    for schedule in ("walk", "look_back"):
        monkeypatch.setenv("RECDSL_SCAN_SCHEDULE", schedule)
        spec = recdsl.load(example("hgrn"), D=D)
        assert spec.plan("triton", tokens=T).scan_schedule == schedule
        args = cuda_args(spec, B, T, torch.float32, seed=1)
        h = h0.clone().requires_grad_(True)
        o, S = spec.op(**args, initial_state=h, output_final_state=True, backend="triton")
        (o.square().sum() + S.sum()).backward()
        packed = {k: v.detach().reshape(1, B * T, D) for k, v in args.items()}
        ov, Sv = spec.op(**packed, initial_state=h0_packed, cu_seqlens=cu, output_final_state=True,
                         backend="triton")
        res.append([o, S, h.grad, *(args[k].grad for k in sorted(args)), ov, Sv])
    for x, y in zip(*res):
        assert rel(y, x) < 1e-5


def test_look_back_words_across_calls_of_changing_sizes_and_graphs(monkeypatch):
    """The look-back's words are kept per stream without a fill (look_back.Words): calls that shrink and
    grow, forward and backward, each against the walk; then a call captured into a CUDA graph (filled
    words) replayed with new values, against eager calls."""
    D = 512
    shapes = [(4, 4096), (1, 300), (2, 8192), (1, 300), (4, 4096)]
    want = []
    for schedule in ("walk", "look_back"):
        monkeypatch.setenv("RECDSL_SCAN_SCHEDULE", schedule)
        spec = recdsl.load(example("hgrn"), D=D)
        got = []
        for i, (B, T) in enumerate(shapes):
            args = cuda_args(spec, B, T, torch.float32, seed=10 + i)
            o, _ = spec.op(**args, backend="triton")
            o.square().sum().backward()
            got.append([o.detach()] + [args[k].grad for k in sorted(args)])
        want.append(got)
    for call, (w, g) in enumerate(zip(*want)):
        for x, y in zip(w, g):
            assert rel(y, x) < 1e-5, call
    spec = recdsl.load(example("hgrn"), D=D)
    args = {k: v.detach() for k, v in cuda_args(spec, 4, 4096, torch.float32, seed=3).items()}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        spec.op(**args, backend="triton")       # compiled before the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out, _ = spec.op(**args, backend="triton")
    for seed in (4, 5, 6):
        new = cuda_args(spec, 4, 4096, torch.float32, seed=seed)
        for k in args:
            args[k].copy_(new[k].detach())
        graph.replay()
        with torch.no_grad():
            assert rel(out, spec.op(**args, backend="triton")[0]) < 1e-6, seed


@pytest.mark.parametrize("blocks", ["64,32,2", "32,32,2", "32,64,2", "32,32,1"])
def test_look_back_blocks_every_call(blocks, monkeypatch):
    """Several calls per block size against the walk, in fp32: where a layout puts one
    channel in threads of two warps (BT=64 and 32 with BD=32, 2 warps), both copies must act on the same
    published word. Volatile polls per warp once lost carries there in some calls (README, 2026-11-26zzb)."""
    monkeypatch.setenv("RECDSL_SCAN_BLOCKS", "128,16,2")
    monkeypatch.setenv("RECDSL_SCAN_SCHEDULE", "walk")
    spec = recdsl.load(example("hgrn"), D=2048)
    args = cuda_args(spec, 4, 4096, torch.float32, seed=2)
    with torch.no_grad():
        want = spec.op(**args, backend="triton")[0]
    monkeypatch.setenv("RECDSL_SCAN_BLOCKS", blocks)
    monkeypatch.setenv("RECDSL_SCAN_SCHEDULE", "look_back")
    spec = recdsl.load(example("hgrn"), D=2048)
    with torch.no_grad():
        for _ in range(8):
            assert rel(spec.op(**args, backend="triton")[0], want) < 1e-5


def test_hgrn_matches_fla():
    fla_hgrn = pytest.importorskip("fla.ops.hgrn")
    spec = recdsl.load(example("hgrn"), D=512)
    args = cuda_args(spec, 2, 1000, torch.bfloat16)
    o, S = spec.op(**args, output_final_state=True, backend="triton")
    o_f, S_f = fla_hgrn.fused_recurrent_hgrn(args["x"], args["g"], output_final_state=True)
    assert rel(o, o_f) < 1e-2 and rel(S, S_f) < 1e-2
    do = torch.randn_like(o)
    gx, gg = torch.autograd.grad((o * do).sum(), [args["x"], args["g"]])
    fx, fg = torch.autograd.grad((o_f * do).sum(), [args["x"], args["g"]])
    assert rel(gx, fx) < 2e-2 and rel(gg, fg) < 5e-2


def test_varlen_on_gpu():
    spec = recdsl.load(example("hgrn"), D=128)
    cu = torch.tensor([0, 100, 101, 777], dtype=torch.int32, device="cuda")
    args = cuda_args(spec, 1, 777, torch.float32)
    o, S = spec.op(**args, output_final_state=True, cu_seqlens=cu, backend="triton")
    for n in range(3):
        s, e = cu[n].item(), cu[n + 1].item()
        on, Sn = spec.op(**{k: v[:, s:e] for k, v in args.items()}, output_final_state=True, backend="triton")
        assert rel(o[:, s:e], on) < 1e-6 and rel(S[n:n + 1], Sn) < 1e-6


@pytest.mark.parametrize("name,params", [("hgrn", dict(D=256)), ("mamba", dict(D=256)),
                                         ("gla", dict(H=4, K=64, V=64))])
def test_torch_compile_inductor(name, params):
    layer = recdsl.compile(example(name), **params, d_model=128, device="cuda")
    x = torch.randn(2, 64, 128, device="cuda")
    y_eager, _ = layer(x)
    y, _ = torch.compile(layer, fullgraph=True)(x)
    assert rel(y, y_eager) < 1e-5
    y.square().mean().backward()


def test_autocast_bf16():
    layer = recdsl.compile(example("hgrn"), D=256, d_model=128, device="cuda")
    x = torch.randn(2, 64, 128, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, _ = layer(x)
    y_ref, _ = layer(x)
    assert rel(y, y_ref) < 3e-2


@pytest.mark.parametrize("name", ["gla", "mamba2", "retnet", "linear_attention"])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float32, 1e-4)])
def test_chunked_against_reference(name, dtype, tol):
    spec = recdsl.load(example(name), H=2, K=64, V=64)
    args = cuda_args(spec, 2, 200, dtype)
    ref_args = {k: v.detach().float().requires_grad_(True) for k, v in args.items()}
    h0 = torch.randn(spec.state_shape(2), device="cuda")
    o, S = spec.op(**args, initial_state=h0, output_final_state=True, backend="triton")
    o_r, S_r = spec.op(**ref_args, initial_state=h0, output_final_state=True, backend="reference")
    assert rel(o, o_r) < tol and rel(S, S_r) < tol
    do = torch.randn_like(o_r)
    (o.float() * do).sum().backward()
    (o_r * do).sum().backward()
    for k in args:
        assert rel(args[k].grad, ref_args[k].grad) < 2.5 * tol, k


@pytest.mark.parametrize("decay", ["scalar", "perkey"])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float32, 1e-4)])
def test_signed_chunk_against_reference(decay, dtype, tol):
    """Signed decays through the chunked kernels (the chunks' cumulative signs from chunk_sign_parity)
    against the fp64 loop on the host: output, final state and every gradient, with a partial last chunk."""
    from test_triton_chunk import reference
    from recdsl.backends.triton.chunk_launch import chunk_linear_recurrence
    gen = torch.Generator().manual_seed(0)
    B, T, H, K = 2, 200, 2, 64
    q, k, v = (torch.randn(B, T, H, K, generator=gen) * s for s in (1.0, 0.5, 1.0))
    gshape = (B, T, H, K) if decay == "perkey" else (B, T, H)
    g = -torch.rand(gshape, generator=gen) * 0.9 - 0.02
    sign = torch.where(torch.rand(gshape, generator=gen) < 0.35, -1, 1).to(torch.int8)
    h0 = torch.randn(B, H, K, K, generator=gen)
    leaves = [x.requires_grad_(True) for x in (q, k, v, g, h0)]
    # q, k, v in the data dtype; g and h0 in fp32
    dev = [x.detach().to("cuda", dtype if i < 3 else torch.float32).requires_grad_(True) for i, x in enumerate(leaves)]
    o, ht = chunk_linear_recurrence(*dev[:4], sign.cuda(), initial_state=dev[4], output_final_state=True)
    ro, rht = reference(q, k, v, g, sign, K ** -0.5, h0, None)
    assert rel(o.cpu(), ro) < tol and rel(ht.cpu(), rht) < tol
    do, dht = torch.randn(ro.shape, generator=gen), torch.randn(rht.shape, generator=gen)
    grads = torch.autograd.grad((o.float() * do.cuda()).sum() + (ht * dht.cuda()).sum(), dev)
    rgrads = torch.autograd.grad((ro * do.double()).sum() + (rht * dht.double()).sum(), leaves)
    for name, a, b in zip("q k v g h0".split(), grads, rgrads):
        assert rel(a.cpu(), b) < 2.5 * tol, name


@pytest.mark.parametrize("decay,signed", [("none", False), ("scalar", False), ("scalar", True)])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3), (torch.float32, 1e-4)])
def test_fused_chunk_forward_on_gpu(decay, signed, dtype, tol):
    """The one-launch chunked forward (calls without a gradient) against the fp64 loop on the host and
    against the two-launch forward: packed sequences with a partial last chunk, an initial and a final
    state, at the head sizes of the benchmarks (K = V = 128) and at K, V that are not powers of two."""
    from test_triton_chunk import reference
    from recdsl.backends.triton.chunk_launch import chunk_linear_recurrence
    gen = torch.Generator().manual_seed(1)
    for K, V in ((128, 128), (40, 24)):
        T, H, cu_seqlens = 300, 2, [0, 1, 130, 300]
        q, k, v = (torch.randn(1, T, H, d, generator=gen) * s for d, s in ((K, 1.0), (K, 0.5), (V, 1.0)))
        gshape = None if decay == "none" else (1, T, H)
        g = None if gshape is None else -torch.rand(gshape, generator=gen) * 0.9 - 0.02
        sign = torch.where(torch.rand(gshape, generator=gen) < 0.35, -1, 1).to(torch.int8) if signed else None
        h0 = torch.randn(3, H, K, V, generator=gen)
        cu = torch.tensor(cu_seqlens, dtype=torch.int32)
        dev = [None if x is None else x.to("cuda", dtype if i < 3 else torch.float32)
               for i, x in enumerate((q, k, v, g, h0))]
        call = lambda inference: chunk_linear_recurrence(
            *dev[:4], None if sign is None else sign.cuda(), scale=0.3, initial_state=dev[4],
            output_final_state=True, cu_seqlens=cu.cuda(), inference=inference)
        with torch.no_grad():
            (o, ht), (o2, ht2) = call("fused"), call("chunk")
        ro, rht = reference(q, k, v, g, sign, 0.3, h0, cu_seqlens)
        assert rel(o.cpu(), ro) < tol and rel(ht.cpu(), rht) < tol, (K, V)
        assert rel(o, o2) < tol and rel(ht, ht2) < tol, (K, V)


@pytest.mark.parametrize("K,V", [(40, 24), (16, 64), (32, 48)])
@pytest.mark.parametrize("decay,signed", [("none", False), ("scalar", True), ("perkey", False)])
def test_chunk_small_heads_varlen_on_gpu(decay, signed, K, V):
    """The chunked kernels at head sizes below one tile (masked 16-, 32- and 64-wide blocks), packed
    sequences, an initial and a final state: forward and every gradient against the fp64 loop (bf16
    data). On an H100 with Triton 3.6, chunk_fwd_o once faulted at K = 40, V = 24 with 4 warps, and dq was
    wrong at K = 16, V = 64 and K = 32, V = 48 while chunk_bwd_dqkg's value block was wider than its key
    block (benchmarks/stress_chunk_shapes.py covers more sizes)."""
    from test_triton_chunk import packed_errors
    errs = packed_errors(decay, K, V, signed)
    for name, err in errs.items():
        assert err < (5e-2 if name.startswith("d") else 2e-2), (name, err)


@pytest.mark.parametrize("name", ["gla", "mamba2", "gated_deltanet", "deltaproduct"])
def test_decoding_on_gpu(name):
    """Inference calls of a few tokens take a fused recurrent kernel; bf16 against the fp32 reference."""
    spec = recdsl.load(example(name), H=2, K=64, V=64)
    args = cuda_args(spec, 3, 7, torch.bfloat16)
    h0 = torch.randn(spec.state_shape(3), device="cuda")
    with torch.no_grad():
        o, S = spec.op(**args, initial_state=h0, output_final_state=True, backend="triton")
        o_r, S_r = spec.op(**{k: v.float() for k, v in args.items()}, initial_state=h0, output_final_state=True,
                           backend="reference")
    assert rel(o, o_r) < 2e-2 and rel(S, S_r) < 2e-2


def test_block_diagonal_on_gpu():
    # unnormalised random blocks grow the state ~1.3x a step (1e35 by T = 300, past fp32's norm): T = 100
    spec = recdsl.load(example("block_diagonal"), NB=64, b=8)
    args = cuda_args(spec, 2, 100, torch.float32)
    ref_args = {k: v.detach().double().requires_grad_(True) for k, v in args.items()}
    o, S = spec.op(**args, output_final_state=True, backend="triton")
    o_r, S_r = spec.op(**ref_args, output_final_state=True, backend="reference")
    assert rel(o, o_r) < 1e-4 and rel(S, S_r) < 1e-4
    do = torch.randn_like(o_r)
    (o.double() * do).sum().backward()
    (o_r * do).sum().backward()
    for k in args:
        assert rel(args[k].grad, ref_args[k].grad) < 1e-3, k


def test_gla_matches_fla():
    F = pytest.importorskip("fla.ops")
    spec = recdsl.load(example("gla"), H=4, K=128, V=128)
    args = cuda_args(spec, 2, 1000, torch.bfloat16)
    args["g"] = torch.nn.functional.logsigmoid(torch.randn_like(args["g"].float())).clamp_min(-5).requires_grad_(True)
    o, S = spec.op(**args, output_final_state=True, backend="triton")
    o_f, S_f = F.chunk_gla(args["q"], args["k"], args["v"], args["g"], output_final_state=True)
    assert rel(o, o_f) < 1e-2 and rel(S, S_f) < 1e-2
    do = torch.randn_like(o)
    ours = torch.autograd.grad((o * do).sum(), list(args.values()))
    theirs = torch.autograd.grad((o_f * do).sum(), list(args.values()))
    for a, b in zip(ours, theirs):
        assert rel(a, b) < 3e-2


def test_mamba2_matches_fla_forward():
    """fla's chunk_simple_gla has Mamba-2's recurrence; fla 0.6.0 refuses its gated backward on Hopper."""
    F = pytest.importorskip("fla.ops")
    spec = recdsl.load(example("mamba2"), H=4, K=64, V=64)
    args = cuda_args(spec, 2, 500, torch.bfloat16)
    g = torch.nn.functional.logsigmoid(torch.randn_like(args["g"].float())).clamp_min(-5)
    o, S = spec.op(**{**args, "g": g}, output_final_state=True, backend="triton")
    o_f, S_f = F.chunk_simple_gla(args["q"], args["k"], args["v"], g, output_final_state=True)
    assert rel(o, o_f) < 1e-2 and rel(S, S_f) < 1e-2


@pytest.mark.parametrize("name,params", [("deltanet", {}), ("gated_deltanet", {}), ("deltaproduct", {"n_h": 2}),
                                         ("deltaproduct", {"n_h": 3})])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3), (torch.float32, 1e-4)])
def test_delta_chunk_against_reference(name, params, dtype, tol):
    """The chunked WY kernels (training path) against the fp32 reference, forward and every gradient."""
    spec = recdsl.load(example(name), H=2, K=64, V=64, **params)
    assert spec.plan("auto", on_cuda=True, needs_grad=True).algorithm == "delta_chunk"
    against_reference(spec, dtype, tol)


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.float32, 1e-4)])
def test_delta_chunk_wide_keys_fit_on_device(name, dtype, tol):
    """K = V = 128 in fp16 and fp32: the state passes' stage count shrinks with the state's element
    size (three fp32 stages of [64, 128] tiles asked 311 KB of shared memory and failed to launch)."""
    spec = recdsl.load(example(name), H=2, K=128, V=128)
    against_reference(spec, dtype, tol, T=200)


def test_delta_chunk_matches_fla():
    """chunk_delta_rule and the ungated chunk_gated_delta_product forward and backward,
    chunk_gated_delta_rule forward (fla refuses its backward on Hopper with Triton 3.6)."""
    fla = pytest.importorskip("fla.ops")
    from fla.ops.gated_delta_product import chunk_gated_delta_product
    from recdsl.backends.triton.delta_chunk import chunk_delta_rule
    B, T, H, D = 2, 512, 4, 64
    r = lambda *s: torch.randn(*s, device="cuda")
    q = r(B, T, H, D).bfloat16().requires_grad_(True)
    k = torch.nn.functional.normalize(r(B, T, H, D), dim=-1).bfloat16().requires_grad_(True)
    v = r(B, T, H, D).bfloat16().requires_grad_(True)
    beta = torch.rand(B, T, H, device="cuda").bfloat16().requires_grad_(True)
    g = torch.nn.functional.logsigmoid(r(B, T, H)).requires_grad_(True)
    o, _ = chunk_delta_rule(q, k, v, beta)
    o_f, _ = fla.chunk_delta_rule(q, k, v, beta)
    assert rel(o, o_f) < 2e-2
    do = torch.randn_like(o)
    ours = torch.autograd.grad((o * do).sum(), [q, k, v, beta])
    theirs = torch.autograd.grad((o_f * do).sum(), [q, k, v, beta])
    for n, a, b in zip("qkvb", ours, theirs):
        assert rel(a, b) < 5e-2, n
    with torch.no_grad():
        assert rel(chunk_delta_rule(q, k, v, beta, g)[0], fla.chunk_gated_delta_rule(q, k, v, g, beta)[0]) < 2e-2
    # two reflections per token, interleaved as fla's product expects: [B, T * n_h, H, D]
    k2 = torch.nn.functional.normalize(r(B, T, H, 2, D), dim=-1).bfloat16().requires_grad_(True)
    v2 = r(B, T, H, 2, D).bfloat16().requires_grad_(True)
    b2 = (2 * torch.rand(B, T, H, 2, device="cuda")).bfloat16().requires_grad_(True)
    o, _ = chunk_delta_rule(q, k2, v2, b2)
    flat = lambda x: x.transpose(2, 3).reshape(B, 2 * T, H, *x.shape[4:])
    o_f, _ = chunk_gated_delta_product(q, flat(k2), flat(v2), None, flat(b2), num_householder=2)
    assert rel(o, o_f) < 2e-2
    ours = torch.autograd.grad((o * do).sum(), [q, k2, v2, b2])
    theirs = torch.autograd.grad((o_f * do).sum(), [q, k2, v2, b2])
    for n, a, b in zip("qkvb", ours, theirs):
        assert rel(a, b) < 5e-2, n


def test_delta_chunk_long_sequence_and_edges_stay_finite():
    """T = 65,536 with gates near 1 and beta at 2; beta at 0; unnormalised fp16 keys through a spec
    that declares l2norm: no NaN or Inf, forward or backward."""
    from recdsl.backends.triton.delta_chunk import chunk_delta_rule
    T, H, D = 65536, 2, 64
    r = lambda *s: torch.randn(*s, device="cuda")
    q = r(1, T, H, D).bfloat16().requires_grad_(True)
    k = torch.nn.functional.normalize(r(1, T, H, D), dim=-1).bfloat16().requires_grad_(True)
    v = r(1, T, H, D).bfloat16().requires_grad_(True)
    g = torch.full((1, T, H), -1e-4, device="cuda", requires_grad=True)
    for b in (2.0, 0.0):
        beta = torch.full((1, T, H), b, device="cuda", requires_grad=True)
        o, S = chunk_delta_rule(q, k, v, beta, g, output_final_state=True)
        assert torch.isfinite(o).all() and torch.isfinite(S).all()
        grads = torch.autograd.grad(o.float().square().mean(), [q, k, v, beta, g])
        assert all(torch.isfinite(x).all() for x in grads)
    spec = recdsl.load(example("deltanet"), H=2, K=64, V=64)
    args = cuda_args(spec, 2, 200, torch.float16)
    args["k"] = (args["k"].detach() * 300).requires_grad_(True)
    o, _ = spec.op(**args, backend="triton")
    assert torch.isfinite(o).all()
    assert all(torch.isfinite(x).all() for x in torch.autograd.grad(o.float().sum(), list(args.values())))


@pytest.mark.parametrize("forward", ["recurrent", "chunk"])
def test_rwkv7_against_reference_and_fla(forward, monkeypatch):
    """The DPLR kernels (bf16 data, fp32 state) against the fp32 reference, forward and backward, with an
    initial state and varlen; then against fla's chunk_rwkv7 on the same tensors where fla imports. Both
    forwards: the fused recurrent walk and the chunkwise one (dplr_chunk.py, whose checkpoints the same
    backward reads)."""
    from recdsl.bench import dplr_args
    monkeypatch.setenv("RECDSL_DPLR_FORWARD", forward)
    spec = recdsl.load(example("rwkv7"), H=4, K=64, V=64)
    args = dplr_args(spec, 1, 300, "cuda", torch.bfloat16)
    cu = torch.tensor([0, 100, 101, 300], dtype=torch.int32, device="cuda")
    h0 = (0.1 * torch.randn(spec.state_shape(3), device="cuda")).requires_grad_(True)
    ref_args = {k: v.detach().float().requires_grad_(True) for k, v in args.items()}
    h0_r = h0.detach().clone().requires_grad_(True)
    o, S = spec.op(**args, initial_state=h0, output_final_state=True, cu_seqlens=cu, backend="triton")
    o_r, S_r = spec.op(**ref_args, initial_state=h0_r, output_final_state=True, cu_seqlens=cu, backend="reference")
    assert rel(o, o_r) < 2e-2 and rel(S, S_r) < 2e-2
    do = torch.randn_like(o_r)
    ours = torch.autograd.grad((o.float() * do).sum() + S.sum(), list(args.values()) + [h0])
    theirs = torch.autograd.grad((o_r * do).sum() + S_r.sum(), list(ref_args.values()) + [h0_r])
    for name, a, b in zip(list(args) + ["h0"], ours, theirs):
        assert rel(a, b) < 5e-2, name
    F = pytest.importorskip("fla.ops.rwkv7")
    x = [args[n] for n in ("r", "w", "k", "v", "a", "b")]
    o_f, S_f = F.chunk_rwkv7(*x, scale=1.0, initial_state=h0.detach(), output_final_state=True, cu_seqlens=cu.long())
    o, S = spec.op(**args, initial_state=h0.detach(), output_final_state=True, cu_seqlens=cu, backend="triton")
    assert rel(o, o_f) < 2e-2 and rel(S, S_f) < 2e-2
    ours = torch.autograd.grad((o.float() * do).sum(), x)
    theirs = torch.autograd.grad((o_f.float() * do).sum(), x)
    for name, a, b in zip("rwkvab", ours, theirs):
        assert rel(a, b) < 5e-2, name


@pytest.mark.parametrize("spec,params", [("mamba_negeig", (("D", 16.0), ("N", 4.0))),
                                         ("deltanet_negeig", (("H", 2.0), ("K", 8.0), ("V", 8.0)))])
def test_graphed_training_matches_eager(tmp_path, spec, params):
    """The same run with every step replayed as a CUDA graph and eagerly: the same weights after warm-up,
    capture and replays (up to the padding's and the lengths' rounding), and a graphed checkpoint resumes
    eagerly and the other way round."""
    import io
    from recdsl.tasks.train import TaskModel, TrainConfig, load_run, train
    cfg = TrainConfig(example(spec), "parity", layers=2, d_model=16, steps=12, lr=3e-3, batch=32,
                      train_len=(3, 20), seed=0, params=params, warmup=4, lr_decay="cosine", checkpoint_every=100)
    log = io.StringIO()
    train(cfg, str(tmp_path / "graph"), log=log, cuda_graph="on")
    assert "CUDA graph (batches padded to 21)" in log.getvalue()
    train(cfg, str(tmp_path / "eager"), log=io.StringIO(), cuda_graph="off")
    train(cfg, str(tmp_path / "mixed"), log=io.StringIO(), cuda_graph="on", stop_at=6)
    train(cfg, str(tmp_path / "mixed"), resume=True, log=io.StringIO(), cuda_graph="off", stop_at=9)
    train(cfg, str(tmp_path / "mixed"), resume=True, log=io.StringIO(), cuda_graph="on")
    runs = [load_run(str(tmp_path / r / "checkpoint.pt"))[0].state_dict() for r in ("graph", "eager", "mixed")]
    for k in runs[0]:
        for other in runs[1:]:
            torch.testing.assert_close(runs[0][k], other[k], rtol=2e-3, atol=2e-4, msg=k)
    torch.manual_seed(cfg.seed)                  # the initial weights: training moved them, replays included
    start = TaskModel(cfg, 3).cuda().state_dict()
    assert (runs[0]["head.weight"] - start["head.weight"]).abs().max() > 1e-3


def test_validation_between_graph_replays_leaves_training_unchanged(tmp_path):
    """--val-every runs eager evaluations between a graph's replays: the trained weights are those of the
    same run without them, and a graphed run without clipping matches its eager twin."""
    import dataclasses
    import io
    from recdsl.tasks.train import TrainConfig, load_run, train
    cfg = TrainConfig(example("deltanet_negeig"), "parity", layers=2, d_model=16, steps=12, lr=3e-3, batch=32,
                      train_len=(3, 20), test_len=(20, 40), seed=0, params=(("H", 2.0), ("K", 8.0), ("V", 8.0)),
                      warmup=4, checkpoint_every=100)
    log = io.StringIO()
    train(dataclasses.replace(cfg, val_every=4), str(tmp_path / "val"), log=log, cuda_graph="on")
    assert "12/12 validation" in log.getvalue() and (tmp_path / "val" / "best.pt").exists()
    train(cfg, str(tmp_path / "plain"), log=io.StringIO(), cuda_graph="on")
    noclip = dataclasses.replace(cfg, clip=0.0)
    train(noclip, str(tmp_path / "noclip_graph"), log=io.StringIO(), cuda_graph="on")
    train(noclip, str(tmp_path / "noclip_eager"), log=io.StringIO(), cuda_graph="off")
    w = {r: load_run(str(tmp_path / r / "checkpoint.pt"))[0].state_dict()
         for r in ("val", "plain", "noclip_graph", "noclip_eager")}
    for k in w["val"]:
        torch.testing.assert_close(w["val"][k], w["plain"][k], rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(w["noclip_graph"][k], w["noclip_eager"][k], rtol=2e-3, atol=2e-4, msg=k)


def test_fixed_point_training_stays_eager():
    from recdsl.tasks.graphed import graphable
    from recdsl.tasks.train import TaskModel, TrainConfig
    cfg = TrainConfig(example("fp_rnn"), "word_A5", d_model=16, params=(("D", 16.0),))
    ok, why = graphable(TaskModel(cfg, 61).cuda(), "cuda")
    assert not ok and "fixed point" in why
