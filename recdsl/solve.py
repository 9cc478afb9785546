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
                fused: bool = False, while_waiting: Callable | None = None, closing: Callable | None = None):
    """f(iterates) -> (new iterates, payload), iterates a dict of [B, T, ...] tensors. Returns (the last
    payload, the last iterates, SolveInfo). With `fused`, f(iterates, delta) -> (damped iterates, payload,
    residual): a kernel that applies the step size and measures relative_change itself (fp_fused.py)
    saves the passes over the iterates that would do it here; a residual [K, B] says that the call ran K
    iterations (Batched below), each tested in turn (the iterate returned is the K-th's).

    On a GPU the next call is launched before this one's residual reaches the host, so the host's work
    (launches, the convergence test) overlaps the device's instead of waiting for it; a call launched past
    convergence, or with a step size that has since shrunk, is dropped (and relaunched with the new one),
    so the iterates, counts and step sizes are those of the plain loop. Where a call will likely converge
    (each sequence's residual extrapolated from the last two rows read), the next one runs a single
    iteration (Batched), so that the call dropped after convergence costs one iteration instead of a whole
    call: at issue 5's shape, converging in 96 iterations to tol 1e-4, an fp32 solve took 28.90-29.13 ms
    against 29.86-29.96 and a bf16 one 25.29-25.74 against 26.04-26.08 (H100, benchmarks/fp_knob_ab.py
    --tol 1e-4 --input-std 0.5, 2026-12-02m). `while_waiting()` is host work
    run once, the first time the host would wait for a residual with the next call already queued behind
    it (else before returning): its launches then queue while the device is busy. `closing(iterates)` is the
    caller's work on the iterates the solve returns, run exactly once before it returns and as early as they
    are known: with the last call (no call can follow it, so whatever its residual says, its iterates are the
    result), behind that residual's copy and before the host reads it, so that the host reads and warns while
    the device runs the work; else when a call converges or the step size gives out. At issue 5's shape (H100,
    benchmarks/fp_knob_ab.py, 2026-12-02f) an fp32 training call took 7.20-7.21 ms against 7.58-7.67 and a
    solve 5.48-5.59 against 5.63-5.84 with the work launched after the return (and the warning's largest
    residual read from the device again, the arguments copied into the graphs in their order)."""
    tol, max_iter = settings["tol"], int(settings["max_iter"])
    delta = float(settings.get("damping", 1.0))
    need = float(settings.get("quantile", 1.0)) if training else 1.0

    def step(prev, delta, short=False):
        """(damped iterates, payload, residual [K, B]), launched without waiting for the device; `short`: a
        fused step of one iteration (Batched reads the iterates' "limit")."""
        if fused:
            new, payload, residual = f({**prev, "limit": 1} if short else prev, delta)
            return new, payload, (residual if residual.dim() == 2 else residual[None])
        new, payload = f(prev)
        residual = torch.stack([relative_change(new[k].detach(), prev[k].detach()) for k in new]).amax(0)
        new = new if delta == 1.0 else {k: delta * new[k] + (1 - delta) * prev[k] for k in new}
        return new, payload, residual[None]

    def now_or_never():
        nonlocal while_waiting
        if while_waiting is not None:
            work, while_waiting = while_waiting, None
            work()

    def close(iterates):
        nonlocal closing
        if closing is not None:
            work, closing = closing, None
            work(iterates)

    best, stall, it, gave_up, rows, last_two = float("inf"), 0, 0, False, [], []
    pending = step(start, delta)
    cur, payload, residual = pending
    while it < max_iter and not gave_up:
        cur, payload, residual = pending
        last_call = it + residual.shape[0] >= max_iter
        ahead = _overlaps(residual) and not last_call
        # where this call will likely converge, the next (dropped then) runs one iteration: decided before this
        # call's rows are read, so that running ahead or not makes the same calls
        short = _likely_done(last_two, residual.shape[0], tol, need)
        if ahead:     # the residual's copy is queued before the next call's launches
            rows = _copy_to_host(residual)
            pending = step(cur, delta, short)
            now_or_never()
            rows = rows()
        elif last_call and _overlaps(residual):    # the copy first, then the closing work behind it: the host
            rows = _copy_to_host(residual)         # reads and warns while the device runs that work
            close(cur)
            rows = rows()
        else:
            if last_call:
                close(cur)
            rows = residual.tolist()
        first_delta, ran = delta, it + len(rows)
        for values in rows:        # one row per iteration the call ran
            it += 1
            if not values or sum(v < tol for v in values) / len(values) >= need:   # that share has converged
                now_or_never()
                close(cur)
                return payload, cur, SolveInfo(ran, residual[-1], True, delta)
            worst = _largest(values)
            last_two = [*last_two[-1:], values]
            best, stall = (worst, 0) if worst < best else (best, stall + 1)
            if stall >= PATIENCE:          # no progress: a smaller step
                delta, stall = delta * DECAY, 0
                if delta < MIN_STEP:
                    gave_up = True
                    break
        if gave_up:
            break
        if ahead and delta != first_delta:     # launched with the old step size: again with the new one
            pending = step(cur, delta, short)
        if not ahead and it < max_iter:
            pending = step(cur, delta, short)
    now_or_never()
    close(cur)
    share = "every sequence" if need >= 1.0 else f"{need:.0%} of the batch"
    last = residual[-1]
    # the largest of the last residual from its row on the host (last.max() waited for the device again)
    top = _largest(rows[-1]) if rows and rows[-1] else float(last.max()) if last.numel() else float("nan")
    warnings.warn(f"{name}: fixed point not reached after {it} iterations: {share} needs a relative change "
                  f"below tol {tol:g}, the largest is {top:.3g} (step size {delta:.3g})",
                  RecNotConverged, stacklevel=stacklevel)
    return payload, cur, SolveInfo(it, last, False, delta)


class Batched:
    """A fused step (fixed_point with fused=True) that runs up to `per_call` iterations a call, as many as
    `max_iter` still allows (the iterates carry the count done): `run(iterates, delta, K)` returns (the
    iterates after K iterations, residuals [K, B]). The driver then reads the residuals once per call, not
    once per iteration; a call that converges on its j-th row still returns its K-th iterate (closer to the
    fixed point) and counts K iterations. An iterates' "limit" (fixed_point's short call) caps K."""

    def __init__(self, run: Callable, max_iter: int, per_call: int):
        self.run, self.max_iter, self.per_call = run, int(max_iter), max(1, int(per_call))

    def __call__(self, iterates: dict, delta: float):
        done = iterates.get("done", 0)
        K = max(1, min(self.per_call, self.max_iter - done, iterates.get("limit") or self.per_call))
        new, residual = self.run(iterates, delta, K)
        return {**new, "done": done + K}, None, residual


def _likely_done(last_two: list, K: int, tol: float, need: float) -> bool:
    """Whether a call of K more iterations will likely pass the convergence test: each sequence's residual
    extrapolated from the last two rows read at the rate between them (none above 1; NaN never passes)."""
    if len(last_two) < 2 or not last_two[1]:
        return False
    passing = 0
    for before, now in zip(*last_two):
        rate = min(now / before, 1.0) if before > 0 else 0.0
        passing += now * rate ** K < tol
    return passing / len(last_two[1]) >= need


def _largest(values: list) -> float:
    """The largest of a residual row, NaN if it holds one (max() would skip it or not by its place)."""
    return float("nan") if any(v != v for v in values) else max(values)


def _overlaps(residual: torch.Tensor) -> bool:
    """Whether the next call may be launched before this residual is read (a device that runs ahead)."""
    return residual.is_cuda


def _copy_to_host(residual: torch.Tensor) -> Callable[[], list]:
    """Queue the residual's copy to pinned host memory; the returned function waits for it alone (not for
    work queued after it) and gives its rows as lists."""
    host = torch.empty(residual.shape, dtype=residual.dtype, pin_memory=True)
    host.copy_(residual, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return lambda: (copied.synchronize(), host.tolist())[1]
