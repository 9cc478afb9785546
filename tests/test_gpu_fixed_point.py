"""GPU tier of the fixed-point paths (backends/triton/fixed_point.py, fp_fused.py, fp_shifted.py, fp_graph.py,
fp_tail_graph.py, fixed_point_matrix.py): against the fp64 reference, fused against unfused, CUDA-graph replay
against eager calls. Skipped without a CUDA device."""
import warnings

import pytest
import torch

import recdsl

from conftest import cuda_args, example

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def solves_and_training_calls(spec, args: dict, do, calls: int = 3) -> list:
    """`calls` rounds of an inference call and a training call (eager, capture, replay where graphs are on):
    the outputs and the training calls' gradients for the loss (o * do).sum()."""
    outs = []
    for _ in range(calls):
        with torch.no_grad():
            outs.append(spec.op(**args, backend="triton")[0])
        o, _ = spec.op(**args, backend="triton")
        outs += [o.detach()] + list(torch.autograd.grad((o * do).sum(), list(args.values())))
    return outs


def graph_mode(spec, monkeypatch, mode: str):
    """RECDSL_FP_GRAPH=mode, the spec's captured graphs dropped: the next calls run eagerly first."""
    monkeypatch.setenv("RECDSL_FP_GRAPH", mode)
    spec.memo.pop("fp_graphs", None)
    spec.memo.pop("fp_tail_graphs", None)


@pytest.mark.parametrize("mode", ["fused", "unfused", "one_launch"])
def test_fixed_point_on_gpu(mode, monkeypatch):
    """Both paths against the fp64 reference; the fused step's gradient against the unfused step's."""
    monkeypatch.setenv("RECDSL_FIXED_POINT", mode)
    spec = recdsl.load(example("fp_rnn"), D=512, r=2)
    args = cuda_args(spec, 2, 256, torch.float32)
    o, S = spec.op(**args, output_final_state=True, backend="triton")
    o_r, S_r = spec.op(**{k: v.detach().double() for k, v in args.items()}, output_final_state=True,
                       backend="reference")
    assert rel(o, o_r) < 1e-4 and rel(S, S_r) < 1e-4
    do = torch.randn_like(o)
    grads = torch.autograd.grad((o * do).sum(), list(args.values()))
    assert all(torch.isfinite(g).all() for g in grads)
    monkeypatch.setenv("RECDSL_FIXED_POINT", "unfused")
    o_u, _ = spec.op(**args, output_final_state=True, backend="triton")
    for k, a, b in zip(args, grads, torch.autograd.grad((o_u * do).sum(), list(args.values()))):
        assert rel(a, b) < 1e-4, k


@pytest.mark.parametrize("fp32", ["tf32x3", "fp16x3"])
def test_fixed_point_shifted_dependence_on_gpu(fp32, monkeypatch):
    """benchmarks/specs/fp_rnn_mixer_hdep.rec (the reflections read h^(l-1)_(t-1) through Wu, Wa): the fused
    path, its operands evaluated again before each launch (fp_shifted.py; u's products of the fp32 iterate as
    three TF32 or three fp16 products), against the fp64 reference, with an initial state; its gradient, the
    maps' included, against the unfused path's."""
    from pathlib import Path
    monkeypatch.setenv("RECDSL_FP_REFLECTION_FP32", fp32)
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / "fp_rnn_mixer_hdep.rec"
    spec = recdsl.load(path, D=512, r=2)
    args = cuda_args(spec, 2, 256, torch.float32)
    args = {k: (v.detach() * 512 ** -0.5).requires_grad_(True) if k in ("Wa", "Wu") else v for k, v in args.items()}
    h0 = torch.randn(2, 512, device="cuda")
    grads = {}
    for mode in ("fused", "unfused"):
        monkeypatch.setenv("RECDSL_FIXED_POINT", mode)
        assert spec.plan("triton").algorithm == {"fused": "fixed_point_fused", "unfused": "fixed_point_scan"}[mode]
        o, S = spec.op(**args, initial_state=h0, output_final_state=True, backend="triton")
        if mode == "fused":
            o_r, S_r = spec.op(**{k: v.detach().double() for k, v in args.items()}, initial_state=h0.double(),
                               output_final_state=True, backend="reference")
            assert rel(o, o_r) < 1e-4 and rel(S, S_r) < 1e-4
            do = torch.randn_like(o)
        grads[mode] = torch.autograd.grad((o * do).sum(), list(args.values()))
    for k, a, b in zip(args, grads["fused"], grads["unfused"]):
        assert torch.isfinite(a).all() and rel(a, b) < 1e-4, k
    # bf16 arguments: the products of the iterate on bf16 tensor cores, fp32 accumulation (fp_products.py)
    monkeypatch.setenv("RECDSL_FIXED_POINT", "fused")
    half = {k: v.detach().bfloat16() for k, v in args.items()}
    with warnings.catch_warnings():    # it converges (with alpha's product from a bf16-rounded iterate it stalled)
        warnings.simplefilter("error", recdsl.RecNotConverged)
        o, _ = spec.op(**half, initial_state=h0, backend="triton")
    o_r, _ = spec.op(**{k: v.double() for k, v in half.items()}, initial_state=h0.double(), backend="reference")
    assert rel(o.double(), o_r) < 2e-2


def test_shifted_products_of_bf16_inputs_converge_on_gpu():
    """benchmarks/specs/fp_rnn_hdep.rec (the decay and the strengths read h^(l-1)_(t-1) through Wl [D, D] and Wa)
    with bf16 arguments: the products take the fp32 iterate in three bf16 parts (fp_products._addmm), so the
    solve reaches tol 1e-6 (a map from the bf16-rounded iterate has steps); against the fp64 reference."""
    from pathlib import Path
    spec = recdsl.load(Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / "fp_rnn_hdep.rec", D=512, r=2)
    args = {k: v.detach() for k, v in cuda_args(spec, 2, 256, torch.bfloat16).items()}
    for w in ("Wl", "Wa"):
        args[w] = (args[w].float() * 512 ** -0.5).bfloat16()    # as the test above
    assert spec.plan("triton").algorithm == "fixed_point_fused"
    with warnings.catch_warnings():
        warnings.simplefilter("error", recdsl.RecNotConverged)
        o, _ = spec.op(**args, backend="triton")
    o_r, _ = spec.op(**{k: v.double() for k, v in args.items()}, backend="reference")
    assert rel(o.double(), o_r) < 2e-2


@pytest.mark.filterwarnings("ignore::recdsl.errors.RecNotConverged")
@pytest.mark.parametrize("path", ["examples/fp_rnn.rec", "benchmarks/specs/fp_rnn_mixer_hdep.rec"])
def test_fixed_point_graphs_replay_the_eager_calls(path, monkeypatch):
    """The fused solve replayed as CUDA graphs (fp_graph.py: the operands' evaluation, then the driver
    calls) gives the eager calls' outputs bit for bit, over solves that run each kind of call eagerly,
    capture both of its graphs and replay them (9 iterations: calls of 4, 4, 1; an inference call's closing
    launch is replayed as well), with new argument values
    on each solve (read, not stale), bf16 arguments, an initial state, with and without a gradient. The
    second spec's operands read prev(h, shift = 1): its graphs replay their evaluation before each launch."""
    from pathlib import Path
    monkeypatch.setenv("RECDSL_FIXED_POINT", "fused")
    spec = recdsl.load(Path(__file__).resolve().parents[1] / path, D=512, r=2, max_iter=9, tol=1e-30)
    sets = [cuda_args(spec, 2, 256, torch.float32, seed=s) for s in (0, 1)] + [
        cuda_args(spec, 2, 256, torch.bfloat16, seed=2)]
    h0 = torch.randn(2, 512, device="cuda", requires_grad=True)
    do = torch.randn(2, 256, 512, device="cuda")
    runs = {}
    for mode in ("0", "1"):
        graph_mode(spec, monkeypatch, mode)
        outs = []
        for k in (0, 1, 0, 1, 2, 2, 2):
            with torch.no_grad():
                outs.append(spec.op(**sets[k], backend="triton")[0])
        for k, state in ((1, None), (0, h0), (1, h0), (0, h0)):
            o, _ = spec.op(**sets[k], initial_state=state, backend="triton")
            leaves = list(sets[k].values()) + ([] if state is None else [state])
            outs += [o.detach()] + list(torch.autograd.grad((o * do).sum(), leaves))
        runs[mode] = outs
    graphs = [g.graphs for g in spec.memo["fp_graphs"].values()]
    pairs = [pair for kinds in graphs for pair in kinds.values()]
    # every kind replayed; the solve's own kinds in both turns (an inference call's closing launch, one
    # more kind of call, may have used one turn only)
    assert len(graphs) == 3 and all(any(pair) for pair in pairs) and sum(all(pair) for pair in pairs) >= 2
    assert not torch.equal(runs["1"][0], runs["1"][1])
    for a, b in zip(runs["0"], runs["1"]):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore::recdsl.errors.RecNotConverged")
def test_training_tail_graphs_keep_each_forward(monkeypatch):
    """fp_tail_graph.py, the differentiable tail of a shifted spec's training call as CUDA graphs: two forwards
    of one shape before their backward (two layers of a model) take two instances and give the eager tail's
    outputs and gradients bit for bit, over an eager first call, captures and replays; a second backward
    through one forward replays while no later forward has used its instance, and raises after."""
    from pathlib import Path
    monkeypatch.setenv("RECDSL_FIXED_POINT", "fused")
    spec = recdsl.load(Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / "fp_rnn_mixer_hdep.rec",
                       D=512, r=2, max_iter=6, tol=1e-30)
    sets = [cuda_args(spec, 2, 256, torch.float32, seed=s) for s in (0, 1)]
    do = torch.randn(2, 256, 512, device="cuda")
    leaves = [t for a in sets for t in a.values()]
    runs = {}
    for mode in ("0", "1"):
        graph_mode(spec, monkeypatch, mode)
        outs = []
        for _ in range(3):
            o0, o1 = (spec.op(**a, backend="triton")[0] for a in sets)
            outs += [o0.detach(), o1.detach()] + list(torch.autograd.grad(((o0 + o1) * do).sum(), leaves))
        runs[mode] = outs
    (instances,) = spec.memo["fp_tail_graphs"].values()
    assert len(instances.made) == 2
    assert not torch.equal(runs["1"][0], runs["1"][1])
    for a, b in zip(runs["0"], runs["1"]):
        assert torch.equal(a, b)
    o = spec.op(**sets[0], backend="triton")[0]
    loss = (o * do).sum()
    first = torch.autograd.grad(loss, list(sets[0].values()), retain_graph=True)
    for a, b in zip(first, torch.autograd.grad(loss, list(sets[0].values()), retain_graph=True)):
        assert torch.equal(a, b)
    spec.op(**sets[1], backend="triton")[0].sum().backward()    # replays the instance o's forward used
    with pytest.raises(RuntimeError, match="second backward"):
        torch.autograd.grad(loss, list(sets[0].values()))


def test_graphs_close_a_converged_solve_as_the_eager_calls(monkeypatch):
    """A solve that converges (tol 1e-6) with its next call already queued: the driver's closing work (an
    inference call's closing launch, a training call's replayed tail, solve.fixed_point's `closing`) then
    reads the converged iterate while the dropped call writes the other slot; over eager first calls,
    captures and replays, outputs and gradients equal the eager path's bit for bit."""
    from pathlib import Path
    monkeypatch.setenv("RECDSL_FIXED_POINT", "fused")
    spec = recdsl.load(Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / "fp_rnn_mixer_hdep.rec",
                       D=512, r=2)
    args = cuda_args(spec, 2, 256, torch.float32)
    args = {k: (v.detach() * 512 ** -0.5).requires_grad_(True) if k in ("Wa", "Wu") else v for k, v in args.items()}
    do = torch.randn(2, 256, 512, device="cuda")
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", recdsl.RecNotConverged)
        for mode in ("0", "1"):
            graph_mode(spec, monkeypatch, mode)
            runs[mode] = solves_and_training_calls(spec, args, do)
    assert spec.memo["fp_graphs"] and spec.memo["fp_tail_graphs"]
    for a, b in zip(runs["0"], runs["1"]):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore::recdsl.errors.RecNotConverged")
def test_fixed_point_graphs_closing_launch_of_a_new_kind(monkeypatch):
    """An inference call whose closing launch is a kind of call the solve did not run (8 iterations: calls of
    4 and 4, then one of 1): its first, eager run and its replays give the eager path's output."""
    from pathlib import Path
    monkeypatch.setenv("RECDSL_FIXED_POINT", "fused")
    spec = recdsl.load(Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / "fp_rnn_mixer_hdep.rec",
                       D=512, r=2, max_iter=8, tol=1e-30)
    args = cuda_args(spec, 2, 256, torch.float32)
    outs = {}
    for mode in ("0", "1"):
        graph_mode(spec, monkeypatch, mode)
        with torch.no_grad():
            outs[mode] = [spec.op(**args, backend="triton")[0] for _ in range(3)]
    for a, b in zip(outs["0"], outs["1"]):
        assert torch.equal(a, b)


def test_solve_graphs_take_the_peaks_of_an_iterate_without_them(monkeypatch):
    """fp_graph.SolveGraphs.run given an iterate without its rows' peaks (fp16x3 scales the iterate's rows by
    powers of two at or below them; the launch that wrote an iterate leaves them) takes them itself rather than
    reading the slot's last ones: a replay from an iterate a million times larger than the slot's last gives the
    eager call's iterate, bit for bit (with the slot's peaks its fp16 parts would overflow); so does a replay
    from the peaks the previous call left."""
    from pathlib import Path
    from recdsl.backends.triton.fixed_point import shifted_operands
    from recdsl.backends.triton.fp_fused import match
    from recdsl.backends.triton.fp_graph import SolveGraphs
    monkeypatch.setenv("RECDSL_FP_REFLECTION_FP32", "fp16x3")
    spec = recdsl.load(Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / "fp_rnn_mixer_hdep.rec",
                       D=512, r=2)
    B, T = 2, 256
    args = cuda_args(spec, B, T, torch.float32)
    pattern = match(spec.ir)
    solve_args = {k: args[k].detach() for k in pattern.reads}
    with torch.no_grad():
        graphs = SolveGraphs(lambda a, h0: shifted_operands(spec, pattern, a, {}, B, T, h0, None), solve_args, None)
        assert graphs.carries_peaks
        run = graphs.bind(solve_args, None)
        start = {"h": torch.zeros(B, T, 1, 512, device="cuda"), "zero": True}
        run(start, 1.0, 2)                  # eager: compiles that kind
        first, _ = run(start, 1.0, 2)       # replayed
        assert first["peak"] is not None
        eager, _ = run(first, 1.0, 2)
        replayed = run(first, 1.0, 2)[0]["h"].clone()
        big = first["h"] * 1e6
        want, _ = graphs.step.iterations({"h": big}, 1.0, 2)    # eager: the product kernel's caller takes them
        bare = run({"h": big}, 1.0, 2)[0]["h"]
    assert torch.equal(replayed, eager["h"])
    assert torch.isfinite(want["h"]).all() and torch.equal(bare, want["h"])


def test_fp_mamba_on_gpu():
    """The matrix-state fixed point (fixed_point_matrix.py) against the fp64 reference, with varlen."""
    spec = recdsl.load(example("fp_mamba"), D=128, N=16, r=2)
    args = cuda_args(spec, 1, 300, torch.float32)
    cu = torch.tensor([0, 120, 300], dtype=torch.int32, device="cuda")
    o, S = spec.op(**args, output_final_state=True, cu_seqlens=cu, backend="triton")
    o_r, S_r = spec.op(**{k: v.detach().double() for k, v in args.items()}, output_final_state=True,
                       cu_seqlens=cu, backend="reference")
    assert rel(o, o_r) < 1e-4 and rel(S, S_r) < 1e-4
    o.square().mean().backward()
    assert all(torch.isfinite(v.grad).all() for v in args.values())


def test_fp_mamba_hdep_on_gpu():
    """benchmarks/specs/fp_mamba_hdep.rec (prev(y, shift = 1) in B, C and the mixer; a normalised readout of
    H c + D x~) on the matrix path against the fp64 reference, with varlen, and under bf16 autocast as
    `recdsl tasks --precision bf16` trains it."""
    from conftest import bench_spec, fp_mamba_hdep_args
    path = bench_spec("fp_mamba_hdep")
    spec = recdsl.load(path, D=64, N=16, r=2, tol=1e-6)
    args = fp_mamba_hdep_args(spec, B=1, T=120, dtype=torch.float32, seed=2, gain=0.1 / 8 ** 0.5)   # D = 64
    args = {k: v.cuda().requires_grad_(True) for k, v in args.items()}
    cu = torch.tensor([0, 50, 120], dtype=torch.int32, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error", recdsl.RecNotConverged)
        o, S = spec.op(**args, output_final_state=True, cu_seqlens=cu, backend="triton")
        o_r, S_r = spec.op(**{k: v.detach().double() for k, v in args.items()}, output_final_state=True,
                           cu_seqlens=cu, backend="reference")
    assert rel(o, o_r) < 1e-4 and rel(S, S_r) < 1e-4
    o.square().mean().backward()
    assert all(torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0 for k, v in args.items() if k != "ones")
    # the weight products in bf16, the iterate in fp32: the products of a rounded iterate are a step function,
    # so the residual stalls near 4e-4 (tol 1e-6 ran into max_iter, 2026-12-04a); tol 1e-3
    loose = recdsl.load(path, D=64, N=16, r=2, tol=1e-3)
    with warnings.catch_warnings(), torch.autocast("cuda", dtype=torch.bfloat16):
        warnings.simplefilter("error", recdsl.RecNotConverged)
        ob, _ = loose.op(**args, cu_seqlens=cu, backend="triton")
    assert rel(ob, o_r) < 1e-2


@pytest.mark.parametrize("dtype, tf32, fp32, tol", [(torch.float32, False, "tf32x3", 1e-5),
                                                    (torch.float32, False, "fp16x3", 1e-5),
                                                    (torch.float32, False, "ieee", 1e-5),
                                                    (torch.float32, True, "tf32x3", 3e-3),
                                                    (torch.bfloat16, False, "tf32x3", 2e-2)])
@pytest.mark.parametrize("packed", [False, True])
def test_reflection_kernels_on_gpu(dtype, tf32, fp32, tol, packed, monkeypatch):
    """fp_reflections' kernels against torch's passes at issue 5's width (B = 2, T = 256, D = 512, r = 2): fp32
    products as 3xTF32, as three fp16 ones and on FMA units, in TF32 where allowed, bf16 ones on tensor cores
    (the iterate split into three bf16 parts: the raw vectors within 1e-5 of the fp32 iterate's); packed
    sequences."""
    from test_triton_fp_reflections import check_against_torch
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    monkeypatch.setenv("RECDSL_FP_REFLECTION_FP32", fp32)
    check_against_torch(True, 2, 512, dtype, packed, monkeypatch, "cuda", tol, B=2, T=256)


@pytest.mark.parametrize("tf32, b_exact, tol", [(False, False, 2e-5), (False, True, 2e-5), (True, False, 3e-3)])
def test_tail_weight_products_on_gpu(tf32, b_exact, tol, monkeypatch):
    """gemm.mm (the training tail's weight products) on tensor cores at issue 5's widths, against fp64: 3xTF32,
    two passes for a weight exact in TF32 (bf16 values), TF32 where torch allows it. The forward u = h Wu^T
    (K = 512) and the iterate's gradient g Wu (K = 1024; the tensor cores' accumulation leaves about 8e-6 there
    at 3xTF32, cuBLAS's fp32 product 6e-7: 2026-11-29g_h100_tail_weight_products.jsonl)."""
    from recdsl.backends.triton.gemm import mm
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(4096, 512, device="cuda", generator=g)
    w = torch.randn(1024, 512, device="cuda", generator=g) * 512 ** -0.5
    if b_exact:
        w = w.bfloat16().float()
    assert rel(mm(h, w.t(), b_exact=b_exact), h.double() @ w.double().t()) < tol
    du = torch.randn(4096, 1024, device="cuda", generator=g)
    assert rel(mm(du, w, b_exact=b_exact), du.double() @ w.double()) < tol


@pytest.mark.filterwarnings("ignore::recdsl.errors.RecNotConverged")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_tail_takes_weight_products_on_tensor_cores(dtype, monkeypatch):
    """fp_rnn_mixer_hdep's training call: the tail's Wu @ h_last goes through gemm.mm (its weight gradient and
    Wa's two columns stay on torch; the iterate is held constant, so no product for its gradient), and the
    call's output and gradients are torch's (RECDSL_FP_WEIGHT_PRODUCTS=torch) within fp32's accuracy (bf16:
    within 1e-2, Wu's gradient taken from bf16 operands)."""
    from pathlib import Path
    from recdsl.backends.triton import gemm
    monkeypatch.setenv("RECDSL_FIXED_POINT", "fused")
    spec = recdsl.load(Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / "fp_rnn_mixer_hdep.rec",
                       D=512, r=2, max_iter=9, tol=1e-30)
    args = cuda_args(spec, 2, 256, dtype)
    args = {k: (v.detach() * 512 ** -0.5).requires_grad_(True) if k in ("Wa", "Wu") else v for k, v in args.items()}
    do = torch.randn(2, 256, 512, device="cuda")
    calls = []
    real = gemm.mm
    monkeypatch.setattr(gemm, "mm", lambda a, b, **k: calls.append((tuple(a.shape), tuple(b.shape))) or real(a, b, **k))
    runs = {}
    for choice in ("torch", "triton"):
        monkeypatch.setenv("RECDSL_FP_WEIGHT_PRODUCTS", choice)
        graph_mode(spec, monkeypatch, "0")
        o, _ = spec.op(**args, backend="triton")
        runs[choice] = [o] + list(torch.autograd.grad((o.float() * do).sum(), list(args.values())))
        assert len(calls) == (0 if choice == "torch" else 1)
    assert calls == [((512, 512), (512, 1024))]     # B * T = 512 tokens, r * D = 1024
    for k, a, b in zip(["o"] + list(args), runs["triton"], runs["torch"]):
        assert rel(a, b) < (1e-5 if dtype == torch.float32 else 1e-2), k


@pytest.mark.filterwarnings("ignore::recdsl.errors.RecNotConverged")
def test_side_stream_changes_no_bit(monkeypatch):
    """fp_shifted's side stream (alpha's narrow product and the strengths beside the reflection products)
    against RECDSL_FP_SIDE_STREAM=0: solves and training calls, eager and replayed as CUDA graphs (eager, capture,
    replay), bit for bit."""
    from pathlib import Path
    from recdsl.backends.triton.fp_shifted import ShiftedIteration
    sides = []
    real = ShiftedIteration._streams
    monkeypatch.setattr(ShiftedIteration, "_streams", lambda self, prev: sides.append(real(self, prev)[1]) or
                        (torch.cuda.current_stream(), sides[-1]))
    monkeypatch.setenv("RECDSL_FIXED_POINT", "fused")
    spec = recdsl.load(Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / "fp_rnn_mixer_hdep.rec",
                       D=512, r=2, max_iter=9, tol=1e-30)
    args = cuda_args(spec, 2, 256, torch.float32)
    do = torch.randn(2, 256, 512, device="cuda")
    runs = {}
    for side in ("1", "0"):
        monkeypatch.setenv("RECDSL_FP_SIDE_STREAM", side)
        for mode in ("0", "1"):
            graph_mode(spec, monkeypatch, mode)
            sides.clear()
            runs[side, mode] = solves_and_training_calls(spec, args, do)
            assert sides and all((s is not None) == (side == "1") for s in sides)
    for key in (("1", "1"), ("0", "1"), ("1", "0")):
        for a, b in zip(runs[key], runs["0", "0"]):
            assert torch.equal(a, b), key
