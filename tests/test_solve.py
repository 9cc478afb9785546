"""The fixed-point driver (recdsl/solve.py) on small maps with known behaviour, and its spec settings."""
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
