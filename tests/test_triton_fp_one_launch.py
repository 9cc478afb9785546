"""Many fixed-point iterations in one launch (backends/triton/fp_one_launch.py) under the Triton interpreter:
the same iterates as the per-iteration fused launch at a fixed count (one launch and several, damping,
varlen with an empty sequence, an initial state), a converging solve against the fp64 reference, the
gradient, routing and its errors; an sm_90 build."""
import warnings

import pytest
import torch

import recdsl
from recdsl import RecNotConverged
from recdsl.opcall import call_op

from conftest import compile_sm90, example, random_args

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tier; GPU runs are in test_gpu.py")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def solve(spec, args, monkeypatch, mode, **call):
    monkeypatch.setenv("RECDSL_FIXED_POINT", mode)
    assert spec.plan("triton").algorithm == {"one_launch": "fixed_point_one_launch", "fused": "fixed_point_fused"}[mode]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecNotConverged)     # a fixed count: tol is never met
        return call_op(spec, (), dict(args), call.get("initial_state"), True, call.get("cu_seqlens"), "triton")


@pytest.mark.parametrize("D,r,iters,damping", [(16, 2, 5, 1.0), (8, 3, 40, 1.0), (24, 1, 7, 0.6)])
def test_same_iterates_as_one_launch_per_iteration(D, r, iters, damping, monkeypatch):
    """40 iterations: two launches (32 + 8); D = 24: a masked tail of the 32-wide tile."""
    src = open(example("fp_rnn")).read().replace("max_iter = max_iter", f"max_iter = max_iter, damping = {damping}")
    spec = recdsl.load(src, D=D, r=r, tol=1e-30, max_iter=iters)
    args = random_args(spec, B=2, T=37, dtype=torch.float32, seed=D + iters)
    h0 = torch.randn(2, D)
    with torch.no_grad():
        o, S, info = solve(spec, args, monkeypatch, "one_launch", initial_state=h0)
        of, Sf, infof = solve(spec, args, monkeypatch, "fused", initial_state=h0)
    assert info.iterations == infof.iterations == iters and not info.converged
    assert rel(o, of) < 1e-5 and rel(S, Sf) < 1e-5
    assert torch.allclose(info.residual, infof.residual, rtol=1e-3)


def test_varlen_with_an_empty_sequence(monkeypatch):
    spec = recdsl.load(example("fp_rnn"), D=16, r=2, tol=1e-30, max_iter=6)
    cu = torch.tensor([0, 6, 6, 17, 26], dtype=torch.int32)
    args = random_args(spec, B=1, T=26, dtype=torch.float32, seed=2)
    h0 = torch.randn(4, 16)
    with torch.no_grad():
        o, S, info = solve(spec, args, monkeypatch, "one_launch", initial_state=h0, cu_seqlens=cu)
        of, Sf, infof = solve(spec, args, monkeypatch, "fused", initial_state=h0, cu_seqlens=cu)
    assert rel(o, of) < 1e-5 and rel(S, Sf) < 1e-5 and info.residual.shape == (1,)


def test_converges_to_the_reference_and_trains(monkeypatch):
    spec = recdsl.load(example("fp_rnn"), D=16, r=2, tol=1e-5)
    args = random_args(spec, B=2, T=40, dtype=torch.float32, seed=4)
    with torch.no_grad():
        o, S, info = solve(spec, args, monkeypatch, "one_launch")
    ro, rS = spec.op(**{k: v.double() for k, v in args.items()}, output_final_state=True, backend="reference")
    assert info.converged and rel(o, ro) < 1e-4 and rel(S, rS) < 1e-4
    assert info.iterations % 32 == 0 or info.iterations == 1000   # whole launches of up to 32 iterations
    grads = {}
    for mode in ("one_launch", "fused"):
        leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
        o, _, _ = solve(spec, leaves, monkeypatch, mode)
        (o * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum().backward()
        grads[mode] = [leaves[k].grad for k in args]
    for k, a, b in zip(args, grads["one_launch"], grads["fused"]):
        assert rel(a, b) < 1e-4, k


def test_routing_and_errors(monkeypatch):
    monkeypatch.setenv("RECDSL_FIXED_POINT", "one_launch")
    plan = recdsl.load(example("fp_rnn"), D=8).plan("auto", on_cuda=True)
    assert plan.algorithm == "fixed_point_one_launch" and "many iterations per launch" in plan.text()
    with pytest.raises(ValueError, match="width 600 is over 512"):
        recdsl.load(example("fp_rnn"), D=600).plan("triton")
    src = open(example("fp_rnn")).read().replace("transition diag(lam)", "transition diag(lam * sigmoid(h_prev))")
    with pytest.raises(ValueError, match="one_launch, but the spec does not fit the fused iteration"):
        recdsl.load(src, D=8).plan("triton")


def test_auto_takes_it_for_many_sequences(monkeypatch):
    """Without RECDSL_FIXED_POINT: at least one sequence per SM and a state that fits run many iterations
    per launch; fewer sequences, or a wider state, one fused launch per iteration."""
    monkeypatch.delenv("RECDSL_FIXED_POINT", raising=False)
    spec = recdsl.load(example("fp_rnn"), D=64)
    assert spec.plan("auto", batch_channels=256 * 64, on_cuda=True).algorithm == "fixed_point_one_launch"
    assert spec.plan("auto", batch_channels=8 * 64, on_cuda=True).algorithm == "fixed_point_fused"
    assert spec.plan("auto", on_cuda=True).algorithm == "fixed_point_fused"            # the call's size unknown
    wide = recdsl.load(example("fp_rnn"), D=1024)
    assert wide.plan("auto", batch_channels=256 * 1024, on_cuda=True).algorithm == "fixed_point_fused"


def test_kernel_builds_for_sm90():
    res = compile_sm90("recdsl.backends.triton.fp_one_launch", "aot_jobs", 512, 2)
    assert [n for n, size, secs in res] == ["fp_iterations DP=512"] and all(size > 0 for n, size, secs in res)
