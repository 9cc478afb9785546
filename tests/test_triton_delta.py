"""Householder products with delta-rule writes (backends/triton/delta.py) under the Triton interpreter:
the fused recurrent forward against the fp64 reference, the planner's routing, step()."""
import pytest
import torch

import recdsl
from recdsl.planner import triton_route

from conftest import check_against_reference, example, random_args, step_through

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tier; GPU runs are in test_gpu.py")

PERKEY = """
# a per-key gate applied before one reflection: S <- (I - beta k k^T) diag(exp(g)) S + beta k v^T
recurrence perkey_gated_delta(H = 2, K = 12, V = 6):
    heads H
    state S[K, V]
    input q[K], k[K] l2norm, v[V], g[K] log
    input beta in (0, 2)
    transition householder(k, beta) * exp(g)
    write delta(k, v, beta)
    output o = q @ S
"""


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


CASES = [("deltanet", {}), ("deltanet_negeig", {}), ("gated_deltanet", {}), ("deltaproduct", {"n_h": 1}),
         ("deltaproduct", {"n_h": 2}), ("deltaproduct", {"n_h": 3}), (PERKEY, {})]


@pytest.mark.parametrize("src,params", CASES, ids=["deltanet", "deltanet_negeig", "gated_deltanet", "dp1", "dp2",
                                                   "dp3", "perkey_gate"])
def test_recurrent_forward_matches_reference(src, params):
    spec = recdsl.load(example(src) if "\n" not in src else src, **params)
    assert triton_route(spec)[0] == "delta_recurrent"
    cu = torch.tensor([0, 7, 7, 20], dtype=torch.int32)     # packed sequences, one of them empty
    for B, T, cu_seqlens in ((2, 9, None), (1, 20, cu)):
        args = random_args(spec, B=B, T=T, dtype=torch.float32, seed=T)
        N = B if cu_seqlens is None else 3
        h0 = torch.randn(spec.state_shape(N))
        with torch.no_grad():
            o, S = spec.op(**args, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens, backend="triton")
        ro, rS = spec.op(**{k: v.double() for k, v in args.items()}, initial_state=h0.double(),
                         output_final_state=True, cu_seqlens=cu_seqlens, backend="reference")
        assert rel(o, ro) < 1e-5 and rel(S, rS) < 1e-5


def test_routing_and_reasons():
    spec = recdsl.load(example("deltaproduct"))
    short = spec.plan("triton", needs_grad=False, tokens=1)
    assert short.algorithm == "delta_recurrent" and "2 generalized Householder reflection(s)" in short.text()
    # the switch counts reflections (tokens * n_h = 2): the walk up to 64 of them, as measured on an H100
    assert spec.plan("triton", needs_grad=False, tokens=32).algorithm == "delta_recurrent"
    assert spec.plan("triton", needs_grad=False, tokens=33).algorithm == "delta_chunk"
    assert recdsl.load(example("deltanet")).plan("triton", needs_grad=False, tokens=64).algorithm == "delta_recurrent"
    assert "at most 32 tokens (64 reflections" in spec.plan("triton", needs_grad=False, tokens=33).text()
    plan = spec.plan("auto", on_cuda=True, needs_grad=True)
    assert plan.backend == "triton" and plan.algorithm == "delta_chunk" and "interleaved" not in plan.text()
    assert "2 consecutive steps" in plan.text()
    text = spec.explain()
    assert "on CUDA tensors: backend triton, algorithm delta_chunk" in text
    assert "on CUDA tensors, decoding (no gradient): backend triton, algorithm delta_recurrent" in text
    # a per-key gate: the recurrent forward without a gradient; training takes the DPLR kernels, and says why
    perkey = recdsl.load(PERKEY)
    plan = perkey.plan("auto", on_cuda=True, needs_grad=True)
    assert plan.backend == "triton" and plan.algorithm == "delta_dplr" and "per key" in plan.text()
    assert "diag(a) + (-beta k)(a * k)^T" in plan.text()
    assert perkey.plan("triton", needs_grad=False).algorithm == "delta_recurrent"
    after = PERKEY.replace("householder(k, beta) * exp(g)", "exp(g) * householder(k, beta)")
    assert "per-key gate after the reflections" in triton_route(recdsl.load(after))[1]
    assert triton_route(recdsl.load(example("rwkv7")))[0] == "dplr_recurrent"


def test_decoding_with_step_equals_forward():
    """A compiled deltaproduct layer on the Triton backend: token-by-token step() reproduces its forward,
    and the forward matches the same weights on the reference backend."""
    params = dict(n_h=2, H=2, K=8, V=8, d_model=16)
    layer = recdsl.compile(example("deltaproduct"), backend="triton", **params)
    ref = recdsl.compile(example("deltaproduct"), backend="reference", **params)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        y, _ = layer(x)
        y_steps = step_through(layer, x)
        y_ref, _ = ref(x)
    assert rel(y_steps, y) < 1e-5 and rel(y, y_ref) < 1e-5


PERKEY_PRODUCT = PERKEY.replace("perkey_gated_delta(H = 2, K = 12, V = 6)", "perkey_product(H = 2, K = 12, V = 6)") \
    .replace("k[K] l2norm, v[V]", "k[2, K] l2norm, v[2, V]").replace("input beta in (0, 2)", "input beta[2] in (0, 2)")
PLAIN_SCALAR = PERKEY.replace("g[K] log", "a").replace("input beta in (0, 2)", "input beta in (0, 2)\n    input a in (0, 1)") \
    .replace("householder(k, beta) * exp(g)", "householder(k, beta) * a").replace(", a\n", "\n")


@pytest.mark.parametrize("src", [PERKEY, PERKEY_PRODUCT, PLAIN_SCALAR], ids=["perkey", "perkey_n_h2", "plain_scalar"])
def test_gates_the_chunked_kernels_refuse_train_through_dplr(src):
    """A per-key gate (one reflection or two per token) and a scalar gate not written exp(g): forward and
    backward through the DPLR kernels (delta_dplr.py) against the reference in fp64, with an initial state,
    the final state, and packed sequences."""
    spec = recdsl.load(src)
    assert spec.plan("triton", on_cuda=True, needs_grad=True).algorithm == "delta_dplr"
    cu = torch.tensor([0, 7, 7, 70], dtype=torch.int32)     # packed sequences, one empty, one over a checkpoint
    for B, T, cu_seqlens in ((2, 67, None), (1, 70, cu)):
        args = {k: v.requires_grad_(True) for k, v in random_args(spec, B=B, T=T, dtype=torch.float32, seed=T).items()}
        N = B if cu_seqlens is None else 3
        h0 = torch.randn(spec.state_shape(N), requires_grad=True)
        check_against_reference(spec, args, h0, cu_seqlens, label=spec.name)
