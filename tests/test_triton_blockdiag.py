"""Block-diagonal transitions (backends/triton/blockdiag.py) under the Triton interpreter: forward and
backward against the fp64 reference, the compiled layer, an sm_90 build."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import recdsl
from recdsl.planner import triton_route

from conftest import compile_sm90, example, random_args

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tier; GPU runs are in test_gpu.py")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@settings(max_examples=6, deadline=None, derandomize=True)
@given(b=st.sampled_from([2, 4, 8, 16]), NB=st.integers(1, 5), T=st.sampled_from([1, 6, 13]),
       varlen=st.booleans(), seed=st.integers(0, 20))
def test_matches_reference(b, NB, T, varlen, seed):
    spec = recdsl.load(example("block_diagonal"), NB=NB, b=b)
    assert triton_route(spec)[0] == "blockdiag_recurrent"
    cu = torch.tensor([0, T // 2, T // 2, T], dtype=torch.int32) if varlen else None   # one sequence empty
    B, N = (1, 3) if varlen else (2, 2)
    args = random_args(spec, B=B, T=T, dtype=torch.float32, seed=seed)
    h0 = torch.randn(spec.state_shape(N), generator=torch.Generator().manual_seed(seed))
    res = []
    for backend, dt in (("triton", torch.float32), ("reference", torch.float64)):
        a = {k: v.detach().to(dt).requires_grad_() for k, v in args.items()}
        h = h0.detach().to(dt).requires_grad_()
        o, S = spec.op(**a, initial_state=h, output_final_state=True, cu_seqlens=cu, backend=backend)
        torch.manual_seed(1)
        ((o.double() * torch.randn(o.shape, dtype=torch.float64)).sum() + S.double().square().sum()).backward()
        res.append((o, S, a["M"].grad, a["v"].grad, h.grad))
    (o1, S1, *g1), (o2, S2, *g2) = res
    assert rel(o1, o2) < 1e-5 and rel(S1, S2) < 1e-5
    for x, y in zip(g1, g2):
        assert rel(x, y) < 1e-4


def test_layer_trains_through_the_kernel():
    """The compiled layer (column-normalised blocks from an MLP) on the Triton backend: outputs and every
    parameter gradient as on the reference backend."""
    params = dict(NB=4, b=4, d_model=16)
    layer = recdsl.compile(example("block_diagonal"), backend="triton", **params)
    ref = recdsl.compile(example("block_diagonal"), backend="reference", **params)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 9, 16)
    for m in (layer, ref):
        y, _ = m(x)
        y.square().mean().backward()
    assert rel(layer(x)[0], ref(x)[0]) < 1e-5
    for (name, p), q in zip(layer.named_parameters(), ref.parameters()):
        assert rel(p.grad, q.grad) < 1e-4, name


def test_routing():
    plan = recdsl.load(example("block_diagonal")).plan("triton")
    assert plan.algorithm == "blockdiag_recurrent" and "8 dense 8 x 8 blocks" in plan.text()


def test_kernels_build_for_sm90():
    res = compile_sm90("recdsl.backends.triton.blockdiag", "aot_jobs", 64, 8)
    assert sorted(n for n, size, secs in res) == ["blockdiag_bwd", "blockdiag_fwd"]
    assert all(size > 0 for n, size, secs in res)
