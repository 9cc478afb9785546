"""The fixed-point driver (recdsl/solve.py) on small maps with known behaviour, and its spec settings."""
import contextlib

import pytest
import torch

import recdsl
from recdsl import RecNotConverged
from recdsl.solve import DECAY, PATIENCE, fixed_point

from conftest import example, random_args

SETTINGS = {"tol": 1e-8, "max_iter": 500, "damping": 1.0, "quantile": 1.0}


def affine(a, c):
    """x -> a * x + c per sequence (a [B]): a contraction for |a| < 1, with fixed point c / (1 - a)."""
    return lambda it: ({"h": a[:, None, None] * it["h"] + c}, it["h"])


def counted_affine(a: list, events: list):
    """The fused protocol's step for x -> a * x + 2 per sequence, logging "call" in `events` each time."""
    from recdsl.solve import relative_change
    a = torch.tensor(a, dtype=torch.float64)

    def f(it, delta):
        events.append("call")
        new = {"h": a[:, None, None] * it["h"] + 2.0}
        return new, None, relative_change(new["h"], it["h"])
    return f


def start(B=3):
    return {"h": torch.zeros(B, 4, 2, dtype=torch.float64)}


def test_contraction_converges_to_its_fixed_point_and_damping_slows_it():
    a = torch.tensor([0.5, 0.2, -0.3], dtype=torch.float64)
    _, last, info = fixed_point(affine(a, 1.0), start(), SETTINGS, training=False, name="t")
    assert info.converged and torch.allclose(last["h"], (1 / (1 - a))[:, None, None].expand(3, 4, 2))
    _, last2, info2 = fixed_point(affine(a, 1.0), start(), {**SETTINGS, "damping": 0.5}, training=False, name="t")
    assert info2.converged and info2.iterations > info.iterations
    assert torch.allclose(last2["h"], last["h"], atol=1e-6)


def test_a_stalled_iteration_is_damped_until_it_converges():
    # x -> -x + 2 oscillates between 0 and 2 forever; a step size below 1 makes it a contraction
    a = torch.full((3,), -1.0, dtype=torch.float64)
    _, last, info = fixed_point(affine(a, 2.0), start(), SETTINGS, training=False, name="t")
    assert info.converged and info.damping == pytest.approx(DECAY) and info.iterations > PATIENCE
    assert torch.allclose(last["h"], torch.ones_like(last["h"]))


def test_training_needs_only_the_quantile_and_evaluation_needs_every_sequence():
    a = torch.tensor([0.5, 0.5, 0.5, 1.0], dtype=torch.float64)     # the last sequence never settles
    cfg = {**SETTINGS, "quantile": 0.75, "max_iter": 60}
    _, _, info = fixed_point(affine(a, 1.0), start(4), cfg, training=True, name="t")
    assert info.converged and info.residual[-1] > cfg["tol"]
    with pytest.warns(RecNotConverged, match="every sequence needs a relative change below tol"):
        _, _, info = fixed_point(affine(a, 1.0), start(4), cfg, training=False, name="t")
    assert not info.converged


def test_spec_settings_reach_both_backends():
    src = open(example("fp_rnn")).read().replace("max_iter = max_iter", "max_iter = max_iter, damping = 0.6")
    spec = recdsl.load(src, D=4, r=2)
    assert dict(spec.ir.solve)["damping"] == 0.6
    args = random_args(spec, B=2, T=7, seed=2)
    o, _ = spec.op(**args)
    o_plain, _ = recdsl.load(example("fp_rnn"), D=4, r=2).op(**args)
    assert (o - o_plain).abs().max() < 1e-5      # the same fixed point, reached with smaller steps
    with pytest.raises(recdsl.RecError, match="solve damping must lie in"):
        recdsl.load(src.replace("damping = 0.6", "damping = 0"), D=4)


@pytest.mark.parametrize("a,damping,quantile,training", [
    ([0.5, 0.2, -0.3], 1.0, 1.0, False),     # converges
    ([-1.0, -1.0, -1.0], 1.0, 1.0, False),   # stalls: the step size shrinks, speculative calls relaunched
    ([0.5, 0.9, 0.99], 0.7, 0.6, True),      # damped, a quantile of the batch
])
def test_running_one_call_ahead_changes_nothing(a, damping, quantile, training, monkeypatch):
    """The GPU path (the next call launched before the residual is read) on the CPU: the same iterate,
    counts, residual and step size as the plain loop, with the calls launched ahead dropped."""
    import recdsl.solve as solve
    a = torch.tensor(a, dtype=torch.float64)
    settings = {**SETTINGS, "damping": damping, "quantile": quantile}
    calls = []

    def f(it, delta):    # the fused protocol: the damped iterate and the residual from the step
        calls.append(delta)
        new = {"h": a[:, None, None] * it["h"] + 2.0}
        damped = {"h": delta * new["h"] + (1 - delta) * it["h"]}
        return damped, None, solve.relative_change(new["h"], it["h"])

    _, plain, info = fixed_point(f, start(), settings, training=training, name="t", fused=True)
    n_plain = len(calls)
    monkeypatch.setattr(solve, "_overlaps", lambda r: True)
    monkeypatch.setattr(solve, "_copy_to_host", lambda r: (lambda: r.tolist()))
    calls.clear()
    _, ahead, info2 = fixed_point(f, start(), settings, training=training, name="t", fused=True)
    assert torch.equal(plain["h"], ahead["h"]) and torch.equal(info.residual, info2.residual)
    assert (info.iterations, info.converged, info.damping) == (info2.iterations, info2.converged, info2.damping)
    assert n_plain == info.iterations and len(calls) > n_plain      # the calls past the end were dropped


def test_a_call_may_run_several_iterations():
    """A residual [K, B] is K iterations: tested row by row, the count includes all K."""
    seen = []

    def f(it, delta):
        k = it.get("k", 0)
        seen.append(k)
        res = torch.tensor([[1.0, 1.0], [1e-9, 0.5], [1e-9, 1e-9]])[k:k + 3]   # converges at the 3rd row
        return {"h": it["h"] + 1, "k": k + 3}, None, torch.cat([res, torch.full((3 - len(res), 2), 1e-9)])

    _, last, info = fixed_point(f, {"h": torch.zeros(2, 1)}, SETTINGS, training=False, name="t", fused=True)
    assert info.converged and info.iterations == 3 and seen == [0] and torch.equal(last["h"], torch.ones(2, 1))
    _, _, info = fixed_point(f, {"h": torch.zeros(2, 1)}, {**SETTINGS, "quantile": 0.5}, training=True, name="t",
                             fused=True)
    assert info.converged and info.iterations == 3     # the second row converges half the batch: K = 3 all ran


@pytest.mark.parametrize("a,ahead", [([0.5, 0.2], False), ([0.5, 0.2], True), ([-1.0, -1.0], False),
                                     ([-1.0, -1.0], True)])
def test_work_while_waiting_runs_once_with_a_call_queued(a, ahead, monkeypatch):
    """while_waiting() runs exactly once, converged or not: running ahead (the GPU path) after the second
    call is launched and before the first residual is read, else before the solve returns."""
    import recdsl.solve as solve
    events = []
    f = counted_affine(a, events)
    if ahead:
        monkeypatch.setattr(solve, "_overlaps", lambda r: True)
        monkeypatch.setattr(solve, "_copy_to_host", lambda r: (lambda: (events.append("read"), r.tolist())[1]))
    settings = {**SETTINGS, "max_iter": 40}
    with pytest.warns(RecNotConverged) if a[0] < 0 else contextlib.nullcontext():
        _, _, info = fixed_point(f, start(2), settings, training=False, name="t", fused=True,
                                 while_waiting=lambda: events.append("work"))
    assert events.count("work") == 1 and info.converged == bool(a[0] > 0)
    if ahead:
        assert events[:4] == ["call", "call", "work", "read"]
    else:
        assert events[-1] == "work"


@pytest.mark.parametrize("a,ahead,max_iter", [([0.5, 0.2], False, 200), ([0.5, 0.2], True, 200),
                                              ([0.9, 0.99], False, 7), ([0.9, 0.99], True, 7)])
def test_closing_runs_once_on_the_result_as_soon_as_it_is_known(a, ahead, max_iter, monkeypatch):
    """closing(iterates) runs exactly once, on the iterates returned: running ahead (the GPU path), after the
    read that finds convergence, or, with the last call (no call can follow it), behind its residual's copy
    and before that is read (the host then reads and warns while the device runs the closing work)."""
    import recdsl.solve as solve
    events, closed = [], []
    f = counted_affine(a, events)
    if ahead:
        monkeypatch.setattr(solve, "_overlaps", lambda r: True)
        monkeypatch.setattr(solve, "_copy_to_host", lambda r: (events.append("copy"),
                                                              lambda: (events.append("read"), r.tolist())[1])[1])
    settings = {**SETTINGS, "max_iter": max_iter}
    with pytest.warns(RecNotConverged) if max_iter < 10 else contextlib.nullcontext():
        _, last, info = fixed_point(f, start(2), settings, training=False, name="t", fused=True,
                                    closing=lambda it: (events.append("close"), closed.append(it["h"])))
    assert events.count("close") == 1 and closed[0] is last["h"] and info.converged == (max_iter > 10)
    if not info.converged:    # the last call, then the closing work (ahead: behind the last residual's copy)
        assert events.count("call") == max_iter
        assert events[-5:] == ["call", "read", "copy", "close", "read"] if ahead else events[-2:] == ["call", "close"]
    elif ahead:               # found by a read with the next call queued (dropped): then the closing work
        assert events[-3:] == ["call", "read", "close"]
    else:
        assert events[-1] == "close"


def test_likely_done_extrapolates_each_sequence():
    from recdsl.solve import _likely_done
    assert not _likely_done([], 4, 1e-6, 1.0) and not _likely_done([[1.0]], 4, 1e-6, 1.0)
    assert _likely_done([[1e-4, 1e-2], [1e-5, 1e-4]], 2, 1e-6, 1.0)      # rates 0.1 and 0.01: 1e-7, 1e-8
    assert not _likely_done([[1e-4, 1e-2], [1e-5, 1e-3]], 2, 1e-6, 1.0)  # the second at 1e-5
    assert _likely_done([[1e-4, 1e-2], [1e-5, 1e-3]], 2, 1e-6, 0.5)      # half the batch suffices
    assert not _likely_done([[1e-3], [2e-3]], 40, 1e-6, 1.0)              # growing: no faster than 1
    assert not _likely_done([[1e-3], [float("nan")]], 4, 1e-6, 1.0)


@pytest.mark.parametrize("ahead", [False, True])
def test_a_call_after_one_likely_to_converge_runs_one_iteration(ahead, monkeypatch):
    """solve.Batched under the driver (4 iterations a call, tol 1e-6) on set residuals: the first call's fall
    predicts that the second converges, so the third runs one iteration; the second stalls, so the third is
    not dropped; the fourth converges and the fifth, launched ahead while it was likely to, runs one. The
    calls are the same running ahead or not, but for that dropped one."""
    import recdsl.solve as solve
    from recdsl.solve import Batched
    R = [1, .1, .01, .001, .001, .0009, .0008, .0007, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10]
    ks = []

    def run(iterates, delta, K):
        ks.append(K)
        n = iterates.get("done", 0)
        return {"h": iterates["h"] + K}, torch.tensor([[R[n + k]] for k in range(K)])
    if ahead:
        monkeypatch.setattr(solve, "_overlaps", lambda r: True)
        monkeypatch.setattr(solve, "_copy_to_host", lambda r: (lambda: r.tolist()))
    _, last, info = fixed_point(Batched(run, 100, 4), {"h": torch.zeros(1, 1)}, {**SETTINGS, "tol": 1e-6},
                                training=False, name="t", fused=True)
    assert info.converged and info.iterations == 13 and last["h"].item() == 13
    assert ks == [4, 4, 1, 4] + ([1] if ahead else [])
