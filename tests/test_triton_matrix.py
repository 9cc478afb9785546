"""Interpreter tier for matrix-state specs routed to the chunked kernels: the IR pattern, the planner's
choice, and agreement of forward and gradients with the reference (fp32 vs fp64)."""
import pytest
import torch

import recdsl
from recdsl.planner import triton_route

from conftest import example, random_args

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="GPU runs are covered by test_gpu.py")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_routes():
    routes = {n: triton_route(recdsl.load(example(n)))[0] for n in
              ("gla", "mamba2", "retnet", "linear_attention", "hgrn", "lru", "deltanet", "mamba")}
    assert routes == {"gla": "chunk", "mamba2": "chunk", "retnet": "chunk", "linear_attention": "chunk",
                      "hgrn": "elementwise_scan", "lru": "elementwise_scan", "deltanet": None, "mamba": None}
    plan = recdsl.load(example("gla")).plan("auto", on_cuda=True)
    assert plan.algorithm == "chunk" and "per-key decay" in plan.text()
    assert recdsl.load(example("gla")).plan("auto", on_cuda=False).backend == "reference"


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
