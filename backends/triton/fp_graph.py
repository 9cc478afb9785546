"""The fused fixed-point solve's driver calls (K fused iterations each, fp_fused.FusedIteration.iterations)
replayed as CUDA graphs.

At issue 5's shape an iteration's kernels take about 0.1 ms and its host work (two Triton launches, seven
allocations, a fill) about as long, so the solve was bound by the host. A graph replays a call's
2K launches at once. What that takes:

- fixed addresses: the spec arguments the solve's operands read are copied into buffers kept per spec
  and call shape, and a graph of their evaluation (FusedIteration.build: the gates, the normalised
  reflection vectors, their coefficients, each token's sequence) replays into fixed operands. The
  evaluation took 0.6 ms of host time per solve at issue 5's shape (about 25 launches), with the device
  idle;
- two graphs per kind of call (K, step size, whether dot products come in, whether a shifted iteration starts
  from the solve's h^0 = 0), used in turn: the driver launches call l+1 before it has read call l's residual and
  may return call l's iterate, so call l+1 must not write over it. The graphs of turn t read the iterate
  and its dot products from slot 1 - t and write theirs into slot t, so a call takes the previous call's
  result where it lies; an iterate from elsewhere (the solve's start, an eager call) is copied into the
  slot first;
- compiled kernels before capture: the first call of each kind runs eagerly;
- results that outlive the graphs: a later solve replays into the same memory, so run_fixed_point clones
  the residual, and in a training call the last iterate (the differentiable step keeps it); an inference
  call's closing launch reads the iterate at once.

Where the operands read prev(h, shift = 1) (fp_shifted.py), the solve's operands are those that do not
move and each graph replays, before every launch, the evaluation of those that do (at issue 5's shape with
the authors' dependence, their host work was about 0.8 ms an iteration). Such launches take no dot products
in, so their kinds of call never have them.

Used where the call is on CUDA, not varlen (the grid follows the number of sequences) and not inside
another capture; RECDSL_FP_GRAPH=0 turns it off. A training call evaluates its differentiable operands
(autograd's, for the step at the fixed point) while the device runs the solve's first calls; where they read
prev(h, shift = 1) they depend on the solve's result, and the step with its backward replays as
fp_tail_graph's graphs instead.
"""
from __future__ import annotations

import os

import torch

from .fp_fused import _padded

MAX_KINDS = 8    # captured kinds of call per shape before the oldest are dropped (their memory freed)


def usable(ref: torch.Tensor, cu) -> bool:
    return (ref.is_cuda and cu is None and os.environ.get("RECDSL_FP_GRAPH", "1") != "0"
            and not torch.cuda.is_current_stream_capturing())


def copy_largest_first(pairs) -> None:
    """dst.copy_(src) for each (dst, src), the largest first: the device copies the large ones while the host
    queues the small ones (in argument order it sat idle between the small copies' launches, H100 trace
    benchmarks/results/2026-12-02c_h100_trace_fp32_solve.json)."""
    for dst, src in sorted(pairs, key=lambda p: -p[0].numel()):
        dst.copy_(src.detach())


class SolveGraphs:
    """The static operands of one call shape and the graphs captured over them. `prepare(args, h0)` evaluates
    a solve's FusedIteration from spec arguments; `bind(args, h0)` copies a solve's arguments in, replays the
    evaluation and returns the run for solve.Batched: run(iterates, delta, K) -> (iterates, residuals).
    `step` is the FusedIteration over the fixed operands (valid until the next bind)."""

    def __init__(self, prepare, args: dict, h0):
        self.args = {k: torch.empty_like(v) for k, v in args.items()}
        self.h0 = None if h0 is None else torch.empty_like(h0)
        self._copy_in(args, h0)
        prepare(self.args, self.h0)          # once eagerly: kernels compiled before the capture
        self.prologue = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.prologue):
            self.step = prepare(self.args, self.h0)
        NTOK, R = self.step.u.shape[:2]
        # the iterate (allocated at the first capture), its dot products and its rows' peaks (fp_shifted.py)
        self.slots = [{"h": None, "dots": self.step.x.new_empty(NTOK, _padded(R)), "peak": self.step.x.new_empty(NTOK)}
                      for _ in range(2)]
        # (K, delta, dots in, from h^0 = 0) -> [graph, graph]; a graph: (CUDAGraph, residuals)
        self.graphs: dict = {}
        # an iteration whose operands read prev(h, shift = 1) takes no dot products in (fp_shifted.py)
        self.carries_dots = not self.step.pattern.varying
        self.carries_peaks = getattr(self.step, "peaks", False)   # a ShiftedIteration's, for fp16x3 products
        self.seen: set = set()       # kinds of call run once eagerly (their kernels compiled)
        self.turn = 0

    @staticmethod
    def key(args: dict, h0, options: dict) -> tuple:
        """What a captured evaluation depends on: the arguments' shapes, dtypes and device, whether there is
        an initial state, and the options (numbers the graph holds as constants)."""
        return (tuple((k, tuple(v.shape), v.dtype, v.device) for k, v in sorted(args.items())),
                None if h0 is None else tuple(h0.shape), tuple(sorted(options.items())))

    def _copy_in(self, args: dict, h0):
        pairs = [(self.args[k], v) for k, v in args.items()] + ([] if h0 is None else [(self.h0, h0)])
        copy_largest_first(pairs)

    def bind(self, args: dict, h0):
        self._copy_in(args, h0)
        self.prologue.replay()
        return self.run

    def run(self, iterates: dict, delta: float, K: int):
        dots = iterates.get("dots") if self.carries_dots else None
        # from the solve's start h^0 = 0, which only a shifted iteration's first launch treats apart (fp_shifted.py)
        zero = not self.carries_dots and bool(iterates.get("zero", False))
        kind = (K, float(delta), dots is not None, zero)
        if kind not in self.seen:                     # compiles the kernels this kind launches
            self.seen.add(kind)
            return self.step.iterations(iterates, delta, K)
        pair = self.graphs.get(kind)
        if pair is None:
            if len(self.graphs) >= MAX_KINDS:
                self.graphs.pop(next(iter(self.graphs)))
            pair = self.graphs[kind] = [None, None]
        self.turn ^= 1
        src, dst = self.slots[1 - self.turn], self.slots[self.turn]
        if src["h"] is None:
            for slot in self.slots:
                slot["h"] = torch.empty_like(iterates["h"])
        if iterates["h"] is not src["h"]:        # not the previous call's result (the start, an eager call)
            src["h"].copy_(iterates["h"])
        if dots is not None and dots is not src["dots"]:
            src["dots"].copy_(dots)
        if self.carries_peaks and not zero:    # zero: the first launch takes no product of the iterate
            peak = iterates.get("peak")
            if peak is None:     # an iterate from elsewhere, without them: taken here
                from .fp_reflections import row_peaks
                row_peaks(src["h"].reshape(len(src["peak"]), -1), out=src["peak"])
            elif peak is not src["peak"]:
                src["peak"].copy_(peak)
        if pair[self.turn] is None:
            pair[self.turn] = self._capture(src, dst, dots is not None, delta, K, zero)
        graph, residuals = pair[self.turn]
        graph.replay()
        return ({"h": dst["h"], "dots": dst["dots"] if self.carries_dots else None,
                 "peak": dst["peak"] if self.carries_peaks else None}, residuals)

    def _capture(self, src, dst, dots_in: bool, delta, K, zero: bool):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            _, residuals = self.step.iterations({"h": src["h"], "dots": src["dots"] if dots_in else None,
                                                 "zero": zero, "peak": src["peak"] if self.carries_peaks else None},
                                                delta, K, out=dst)
        return graph, residuals
