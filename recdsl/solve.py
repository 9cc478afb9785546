"""The fixed-point driver behind `prev(...)`, shared by every backend (Movahedi et al. 2025, App. A.6/D.3).

    iterate  h^(l+1) = delta * f(h^l) + (1 - delta) * h^l,   h^0 = 0

until the residual (per sequence: the largest relative inf-norm change over time) is below `tol` for
every sequence, or, when the call records a backward (training), for the `quantile` fraction of the
batch. `delta` starts at the spec's `damping` and shrinks by DECAY whenever the largest residual has
not improved for PATIENCE iterations; the solve gives up when delta falls below MIN_STEP or after
`max_iter` iterations, with a RecNotConverged warning (never silently).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import RecNotConverged

PATIENCE, DECAY, MIN_STEP = 15, 0.9, 1e-3


@dataclass
class SolveInfo:
    """What a fixed-point solve did: iterations used and the final residual per sequence."""
    iterations: int
    residual: torch.Tensor
    converged: bool
    damping: float = 1.0        # the step size it ended with


def relative_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per sequence: max over time of ||new_t - old_t||_inf / ||new_t||_inf."""
    B, T = new.shape[:2]
    if T == 0:   # an empty sequence has nothing left to change
        return new.new_zeros(B)
    d = (new - old).abs().reshape(B, T, -1).amax(-1)
    m = new.abs().reshape(B, T, -1).amax(-1).clamp_min(torch.finfo(new.dtype).tiny)
    return (d / m).amax(-1)


def fixed_point(f: Callable, start: dict, settings: dict, training: bool, name: str, stacklevel: int = 3,
                fused: bool = False):
    """f(iterates) -> (new iterates, payload), iterates a dict of [B, T, ...] tensors. Returns (the last
    payload, the last iterates, SolveInfo). With `fused`, f(iterates, delta) -> (damped iterates, payload,
    residual): a kernel that applies the step size and measures relative_change itself (fp_fused.py)
    saves the passes over the iterates that would do it here."""
    tol, max_iter = settings["tol"], int(settings["max_iter"])
    delta = float(settings.get("damping", 1.0))
    need = float(settings.get("quantile", 1.0)) if training else 1.0
    prev, best, stall = start, float("inf"), 0
    residual, payload, it = None, None, 0
    for it in range(1, max_iter + 1):
        if fused:
            prev, payload, residual = f(prev, delta)
        else:
            new, payload = f(prev)
            residual = torch.stack([relative_change(new[k].detach(), prev[k].detach()) for k in new]).amax(0)
            prev = new if delta == 1.0 else {k: delta * new[k] + (1 - delta) * prev[k] for k in new}
        if float((residual < tol).double().mean()) >= need:        # that share of sequences has converged
            return payload, prev, SolveInfo(it, residual, True, delta)
        worst = float(residual.max())
        best, stall = (worst, 0) if worst < best else (best, stall + 1)
        if stall >= PATIENCE:          # no progress: a smaller step
            delta, stall = delta * DECAY, 0
            if delta < MIN_STEP:
                break
    share = "every sequence" if need >= 1.0 else f"{need:.0%} of the batch"
    warnings.warn(f"{name}: fixed point not reached after {it} iterations: {share} needs a relative change "
                  f"below tol {tol:g}, the largest is {float(residual.max()):.3g} (step size {delta:.3g})",
                  RecNotConverged, stacklevel=stacklevel)
    return payload, prev, SolveInfo(it, residual, False, delta)
