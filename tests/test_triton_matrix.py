"""Interpreter tier for matrix-state specs routed to the chunked kernels: the IR pattern, the planner's
choice, and agreement of forward and gradients with the reference (fp32 vs fp64)."""
import pytest
import torch

import recdsl
from recdsl.planner import triton_route

from conftest import example, random_args, step_through

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="GPU runs are covered by test_gpu.py")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_routes():
    routes = {n: triton_route(recdsl.load(example(n)))[0] for n in
              ("gla", "mamba2", "retnet", "linear_attention", "hgrn", "lru", "deltanet", "mamba")}
    assert routes == {"gla": "chunk", "mamba2": "chunk", "retnet": "chunk", "linear_attention": "chunk",
                      "hgrn": "elementwise_scan", "lru": "elementwise_scan", "deltanet": "delta_recurrent",
                      "mamba": "elementwise_scan"}
    plan = recdsl.load(example("gla")).plan("auto", on_cuda=True)
    assert plan.algorithm == "chunk" and "per-key decay" in plan.text()
    assert recdsl.load(example("gla")).plan("auto", on_cuda=False).backend == "reference"
    plan = recdsl.load(example("mamba_negeig")).plan("auto", on_cuda=True)
    assert plan.algorithm == "elementwise_scan" and "matrix state h[64, 16]" in plan.text()
    assert "signed decays multiply directly" in plan.text()


@pytest.mark.parametrize("name,T", [("gla", 70), ("mamba2", 64), ("retnet", 17), ("linear_attention", 1)])
def test_chunked_matches_reference(name, T):
    spec = recdsl.load(example(name), H=2, K=16, V=16)
    args = random_args(spec, B=2, T=T, dtype=torch.float32, seed=T)
    h0 = torch.randn(spec.state_shape(2))
    results = []
    for backend, dt in (("triton", torch.float32), ("reference", torch.float64)):
        a = {k: v.detach().to(dt).requires_grad_(True) for k, v in args.items()}
        h = h0.detach().to(dt).requires_grad_(True)
        o, S = spec.op(**a, initial_state=h, output_final_state=True, backend=backend)
        (o.double().sin().sum() + S.double().square().sum()).backward()
        results.append((o, S, {**{k: v.grad for k, v in a.items()}, "h0": h.grad}))
    (o1, S1, g1), (o2, S2, g2) = results
    assert rel(o1, o2) < 1e-5 and rel(S1, S2) < 1e-5
    for k in g2:
        assert rel(g1[k], g2[k]) < 1e-4, k


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gla", "mamba2"])
def test_decoding_takes_the_fused_recurrent_kernel(name, monkeypatch):
    """Short calls without a gradient (inference, step()) plan one recurrent launch and agree with the
    reference; a call that records a backward plans the chunked kernels."""
    spec = recdsl.load(example(name), H=2, K=16, V=8)
    assert spec.plan("triton", tokens=1, needs_grad=False).algorithm == "recurrent"
    assert "one launch over the tokens" in spec.plan("triton", tokens=1, needs_grad=False).text()
    assert spec.plan("triton", tokens=1, needs_grad=True).algorithm == "chunk"
    assert spec.plan("triton", tokens=65, needs_grad=False).algorithm == ("chunk" if name == "gla" else "fused_chunk")
    import recdsl.backends.triton.recurrent as recurrent
    calls = []
    real = recurrent.recurrent_forward
    monkeypatch.setattr(recurrent, "recurrent_forward", lambda *a: calls.append(1) or real(*a))
    args = random_args(spec, B=2, T=5, dtype=torch.float32, seed=1)
    h0 = torch.randn(spec.state_shape(2))
    with torch.no_grad():
        o, S = spec.op(**args, initial_state=h0, output_final_state=True, backend="triton")
    ro, rS = spec.op(**{k: v.double() for k, v in args.items()}, initial_state=h0.double(),
                     output_final_state=True, backend="reference")
    assert calls and rel(o, ro) < 1e-5 and rel(S, rS) < 1e-5
    # decoding token by token with the module's step() reproduces its forward
    layer = recdsl.compile(example(name), H=2, K=16, V=8, d_model=16, backend="triton")
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        y, _ = layer(x)
        y_steps = step_through(layer, x)
    assert rel(y_steps, y) < 1e-5


@pytest.mark.parametrize("name", ["mamba2", "retnet", "linear_attention"])
def test_inference_takes_the_fused_chunk_kernel(name, monkeypatch):
    """Longer calls without a gradient plan the one-launch chunked forward (no chunk states stored) and
    agree with the reference, packed sequences included; a call that records a backward, a per-key decay
    and RECDSL_CHUNK_INFERENCE=chunk keep the two launches."""
    from recdsl.backends.triton import chunk_launch
    spec = recdsl.load(example(name), H=2, K=16, V=8)
    plan = spec.plan("triton", tokens=70, needs_grad=False)
    assert plan.algorithm == "fused_chunk" and "no chunk states stored" in plan.text()
    assert spec.plan("triton", tokens=70, needs_grad=True).algorithm == "chunk"
    assert recdsl.load(example("gla")).plan("triton", tokens=70, needs_grad=False).algorithm == "chunk"
    # too few programs (sequences x heads x value blocks) to fill the device: the two launches
    few = spec.plan("triton", tokens=70, needs_grad=False, batch_channels=3 * 2 * 16 * 8)
    assert few.algorithm == "chunk" and "only 6 programs" in few.text()
    monkeypatch.setenv("RECDSL_CHUNK_INFERENCE", "chunk")
    assert "RECDSL_CHUNK_INFERENCE=chunk" in spec.plan("triton", tokens=70, needs_grad=False).text()
    monkeypatch.setenv("RECDSL_CHUNK_INFERENCE", "fused")      # not for a per-key decay
    assert "spills registers" in recdsl.load(example("gla")).plan("triton", tokens=70, needs_grad=False).text()
    monkeypatch.setenv("RECDSL_CHUNK_INFERENCE", "fast")
    with pytest.raises(ValueError, match="RECDSL_CHUNK_INFERENCE='fast'"):
        spec.plan("triton", tokens=70, needs_grad=False)
    monkeypatch.setenv("RECDSL_CHUNK_INFERENCE", "fused")     # this small call would not fill a GPU
    calls = []
    real = chunk_launch.fused_forward
    monkeypatch.setattr(chunk_launch, "fused_forward", lambda *a: calls.append(1) or real(*a))
    args = random_args(spec, B=1, T=70, dtype=torch.float32, seed=2)
    cu = torch.tensor([0, 3, 3, 70], dtype=torch.int32)
    h0 = torch.randn(spec.state_shape(3))
    with torch.no_grad():
        o, S = spec.op(**args, initial_state=h0, output_final_state=True, cu_seqlens=cu, backend="triton")
    ro, rS = spec.op(**{k: v.double() for k, v in args.items()}, initial_state=h0.double(),
                     output_final_state=True, cu_seqlens=cu, backend="reference")
    assert len(calls) == 1 and rel(o, ro) < 1e-5 and rel(S, rS) < 1e-5


def test_chunk_custom_op_opcheck_and_torch_compile():
    """The chunked kernels are one torch custom op: opcheck passes and a compiled module with the
    Triton backend traces in one graph."""
    from recdsl.backends.triton.chunk_launch import chunk_fwd
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 20, 2, 16, generator=gen, requires_grad=True) for _ in range(3))
    g = (-torch.rand(1, 20, 2, 16, generator=gen)).requires_grad_(True)
    h0 = torch.randn(1, 2, 16, 16, generator=gen, requires_grad=True)
    torch.library.opcheck(chunk_fwd, (q, k, v, g, None, 0.25, h0, True, None, 16, "perkey"))
    # signed: the chunks' cumulative signs are a fourth (int8) output, saved for the backward
    sign = torch.where(torch.rand(g.shape, generator=gen) < 0.4, -1, 1).to(torch.int8)
    torch.library.opcheck(chunk_fwd, (q, k, v, g, sign, 0.25, h0, True, None, 16, "perkey"))
    layer = recdsl.compile(example("gla"), H=2, K=16, V=16, d_model=16, backend="triton")
    ref = recdsl.compile(example("gla"), H=2, K=16, V=16, d_model=16)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 9, 16, generator=gen)
    y, _ = torch.compile(layer, fullgraph=True)(x)
    assert rel(y, ref(x)[0]) < 1e-4
    y.square().sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
