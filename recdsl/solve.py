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
    saves the passes over the iterates that would do it here.

    On a GPU the next iteration is launched before this one's residual reaches the host, so the host's
    work (launches, the convergence test) overlaps the device's instead of waiting for it; an iteration
    launched past convergence, or with a step size that has since shrunk, is dropped (and relaunched with
    the new one), so the iterates, counts and step sizes are those of the plain loop."""
    tol, max_iter = settings["tol"], int(settings["max_iter"])
    delta = float(settings.get("damping", 1.0))
    need = float(settings.get("quantile", 1.0)) if training else 1.0

    def step(prev, delta):
        """(damped iterates, payload, residual [B]), launched without waiting for the device."""
        if fused:
            return f(prev, delta)
        new, payload = f(prev)
        residual = torch.stack([relative_change(new[k].detach(), prev[k].detach()) for k in new]).amax(0)
        return (new if delta == 1.0 else {k: delta * new[k] + (1 - delta) * prev[k] for k in new}), payload, residual

    best, stall, it = float("inf"), 0, 0
    pending = step(start, delta) if max_iter >= 1 else (start, None, None)
    cur, payload, residual = pending
    for it in range(1, max_iter + 1):
        cur, payload, residual = pending
        ahead = residual.is_cuda and it < max_iter
        if ahead:     # the residual's copy is queued before the next iteration's launches
            host = torch.empty(residual.shape, dtype=residual.dtype, pin_memory=True)
            host.copy_(residual, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            pending = step(cur, delta)
            copied.synchronize()
            values = host.tolist()
        else:
            values = residual.tolist()
        if not values or sum(v < tol for v in values) / len(values) >= need:   # that share has converged
            return payload, cur, SolveInfo(it, residual, True, delta)
        worst = float("nan") if any(v != v for v in values) else max(values)
        best, stall = (worst, 0) if worst < best else (best, stall + 1)
        if stall >= PATIENCE:          # no progress: a smaller step
            delta, stall = delta * DECAY, 0
            if delta < MIN_STEP:
                break
            if ahead:                  # launched with the old step size: again with the new one
                pending = step(cur, delta)
        if not ahead and it < max_iter:
            pending = step(cur, delta)
    share = "every sequence" if need >= 1.0 else f"{need:.0%} of the batch"
    top = float(residual.max()) if residual is not None and residual.numel() else float("nan")
    warnings.warn(f"{name}: fixed point not reached after {it} iterations: {share} needs a relative change "
                  f"below tol {tol:g}, the largest is {top:.3g} (step size {delta:.3g})",
                  RecNotConverged, stacklevel=stacklevel)
    return payload, cur, SolveInfo(it, residual, False, delta)
