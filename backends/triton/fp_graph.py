"""The fused fixed-point solve's driver calls (K fused iterations each, fp_fused.FusedIteration.iterations)
replayed as CUDA graphs.

At issue 5's shape an iteration's kernels take about 0.1 ms and its host work (two Triton launches, seven
allocations, a fill) about as long, so the solve was bound by the host. A graph replays a call's
2K launches at once. What that takes:

- fixed addresses: a solve's operands (x, g, a, u, w, each token's sequence) are copied into buffers
  kept per spec and call shape, and each call's iterate and dot products into the graph's own inputs;
- two graphs per kind of call (K, step size, whether dot products come in), used in turn: the driver
  launches call l+1 before it has read call l's residual and may return call l's iterate, so call l+1
  must not write over it;
- compiled kernels before capture: the first call of each kind runs eagerly;
- results that outlive the graphs: the solve's last iterate and residual are cloned before they leave
  (run_fixed_point), since a later solve replays into the same memory.

Used where the call is on CUDA, not varlen (the grid follows the number of sequences) and not inside
another capture; RECDSL_FP_GRAPH=0 turns it off.
"""
from __future__ import annotations

import dataclasses
import os

import torch

MAX_KINDS = 8    # captured kinds of call per shape before the oldest are dropped (their memory freed)


def usable(step) -> bool:
    return (step.x.is_cuda and step.cu is None and os.environ.get("RECDSL_FP_GRAPH", "1") != "0"
            and not torch.cuda.is_current_stream_capturing())


class SolveGraphs:
    """Static operands of one call shape and the graphs captured over them. `bind(step)` copies a solve's
    operands in and returns the run for solve.Batched: run(iterates, delta, K) -> (iterates, residuals)."""

    def __init__(self, step):
        # the buffers; bind() fills them for each solve
        buffers = {f: torch.empty_like(getattr(step, f)) for f in ("a", "g", "x", "u", "w", "seq")}
        buffers["h0"] = None if step.h0 is None else torch.empty_like(step.h0)
        self.step = dataclasses.replace(step, **buffers)
        self.graphs: dict = {}       # (K, delta, dots in) -> [graph, graph]; a graph: (CUDAGraph, inputs, outputs)
        self.seen: set = set()       # kinds of call run once eagerly (their kernels compiled)
        self.turn = 0

    @staticmethod
    def key(step) -> tuple:
        return (step.pattern, step.B, step.T, tuple(step.u.shape), step.x.device, step.h0 is None)

    def bind(self, step):
        for f in ("a", "g", "x", "u", "w", "seq"):
            getattr(self.step, f).copy_(getattr(step, f).detach())
        if step.h0 is not None:
            self.step.h0.copy_(step.h0.detach())
        return self.run

    def run(self, iterates: dict, delta: float, K: int):
        dots = iterates.get("dots")
        kind = (K, float(delta), dots is not None)
        if kind not in self.seen:                     # compiles the kernels this kind launches
            self.seen.add(kind)
            return self.step.iterations(iterates, delta, K)
        pair = self.graphs.get(kind)
        if pair is None:
            if len(self.graphs) >= MAX_KINDS:
                self.graphs.pop(next(iter(self.graphs)))
            pair = self.graphs[kind] = [None, None]
        self.turn ^= 1
        if pair[self.turn] is None:
            pair[self.turn] = self._capture(iterates["h"], dots, delta, K)
        graph, inputs, outputs = pair[self.turn]
        inputs["h"].copy_(iterates["h"])
        if dots is not None:
            inputs["dots"].copy_(dots)
        graph.replay()
        return {"h": outputs[0], "dots": outputs[1]}, outputs[2]

    def _capture(self, h, dots, delta, K):
        # the graph's own inputs: run() copies each call's iterate into them before a replay
        inputs = {"h": torch.empty_like(h), "dots": None if dots is None else torch.empty_like(dots)}
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, res = self.step.iterations(inputs, delta, K)
        return graph, inputs, (out["h"], out["dots"], res)
