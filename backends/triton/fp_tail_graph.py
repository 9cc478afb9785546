"""The differentiable tail of a training call whose fixed-point operands read prev(h, shift = 1)
(fixed_point.varying_steps: the step at the fixed point with its operands evaluated again under autograd,
the scan, the readout) replayed as CUDA graphs, its forward and its backward.

The solve is replayed already (fp_graph.py); the tail was not, and at issue 5's shape its host work left
the device idle: the operands' evaluation took 1.5-1.9 ms of host time and the backward engine 1.8-2.7 ms,
so a bf16 training call took 10.46 ms against 6.58 ms of kernels (H100 profile 2026-11-27ze).

What torch.cuda.make_graphed_callables does, with three differences:
- the outputs and the gradients are copied out of the graphs' memory: a later replay writes it again, and
  a caller may keep both (a model's layers, a gradient accumulated over calls);
- an instance is busy from its forward until its backward, or until the autograd graph that holds it is
  freed: layers of one model that share a spec and a shape each take their own instance (up to INSTANCES;
  past that, a call runs eagerly);
- a second backward through one forward (retain_graph) is replayed only while no later forward has used
  the instance; after that it raises rather than return gradients of another call's activations.
The first call of a shape runs eagerly; the second captures (an eager warm-up on a side stream first, as
torch's helper does, so that cuBLAS and the autograd threads are set up outside the capture).
"""
from __future__ import annotations

import weakref

import torch

INSTANCES = 4    # captured instances per call shape (each holds one forward's activations)
SHAPES = 4       # call shapes kept per spec before the oldest is dropped


def call(spec, pattern, args: dict, options: dict, h0, states, steps: int, want_final: bool):
    """fixed_point.varying_steps(spec, pattern, args, options, h0, None, states, steps, want_final) through
    this spec's graphs for the call's shape: (o, final state or None). `states` may lie in memory that a later
    solve writes again (fp_graph's slots): a replay copies it into its graph's own, and an eager call that
    keeps it for its backward takes a copy."""
    from .fixed_point import varying_steps
    names = sorted(k for k, v in args.items() if isinstance(v, torch.Tensor))
    rest = {k: v for k, v in args.items() if k not in names}
    states = states.detach()
    tensors = [args[k] for k in names] + [states] + ([] if h0 is None else [h0])

    def tail(*t, keep: bool = False):
        raw = dict(zip(names, t), **rest)
        held = t[len(names)].clone() if keep else t[len(names)]
        return varying_steps(spec, pattern, raw, options, t[len(names) + 1] if h0 is not None else None, None,
                             held, steps, want_final)
    key = (tuple(names), tuple((tuple(t.shape), t.dtype, t.device, t.requires_grad) for t in tensors),
           h0 is not None, steps, want_final, tuple(sorted(options.items())), tuple(sorted(rest.items())))
    if not any(t.requires_grad for t in tensors):      # no backward to replay
        return tail(*tensors)
    cache = spec.memo.setdefault("fp_tail_graphs", {})
    if key not in cache:            # first call of this shape: eager (its kernels compile here)
        if len(cache) >= SHAPES:
            cache.pop(next(iter(cache)))
        cache[key] = Instances(INSTANCES)
        return tail(*tensors, keep=True)
    graph = cache[key].acquire(lambda: TailGraph(tail, tensors))    # made from this call (no older one kept)
    if graph is None:              # every instance holds a forward whose backward has not run
        return tail(*tensors, keep=True)
    outs = Replay.apply(graph, *tensors)
    return outs[0], (outs[1] if want_final else None)


class Instances:
    """Up to `limit` objects, handed out while not busy: acquire(make) returns a free one, else one made by
    make() while under the limit, else None. An object's `busy` is a weakref to its holder, or None."""

    def __init__(self, limit: int):
        self.limit, self.made = limit, []

    def acquire(self, make):
        for g in self.made:
            if g.busy is None or g.busy() is None:
                return g
        if len(self.made) < self.limit:
            self.made.append(make())
            return self.made[-1]
        return None


class TailGraph:
    """One captured forward of fn(*inputs) -> (tensor, ...) and its backward for the inputs that require
    grad, over static copies of the inputs. `busy` (weakref to a holder) and `generation` (forwards run)
    let Replay tell whether the activations in the graphs' memory are still a given forward's."""

    def __init__(self, fn, inputs):
        self.inputs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
        self.needs = [t.requires_grad for t in inputs]
        wrt = [t for t in self.inputs if t.requires_grad]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):      # warm-up: cuBLAS handles and autograd's threads set up eagerly
            outs = [o for o in _tensors(fn(*self.inputs)) if o.requires_grad]
            torch.autograd.grad(outs, wrt, [torch.ones_like(o) for o in outs], allow_unused=True)
        torch.cuda.current_stream().wait_stream(side)
        del outs
        self.forward = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.forward):
            self.outs = _tensors(fn(*self.inputs))
        self.grad_outs = [torch.empty_like(o) for o in self.outs]
        self.backward = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.backward, pool=self.forward.pool()):
            pairs = [(o, g) for o, g in zip(self.outs, self.grad_outs) if o.requires_grad]
            # retain_graph: the forward's saved tensors stay allocated through this capture; freed in it, their
            # memory went to the backward's own tensors, and a second replay read those (2026-11-27zl)
            grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True,
                                        retain_graph=True)
        found = iter(grads)
        self.grads = [next(found) if need else None for need in self.needs]
        self.outs = [o.detach() for o in self.outs]
        self.busy, self.generation = None, 0

    def run_forward(self, inputs, holder) -> list:
        from .fp_graph import copy_largest_first
        copy_largest_first([(static.detach(), t) for static, t in zip(self.inputs, inputs)
                            if static.data_ptr() != t.data_ptr()])
        self.busy, self.generation = weakref.ref(holder), self.generation + 1
        self.forward.replay()
        return [o.clone() for o in self.outs]

    def run_backward(self, generation: int, grad_outs) -> list:
        if generation != self.generation:
            raise RuntimeError("recdsl: a second backward through a fixed-point training call whose CUDA graph a "
                               "later call has since replayed (its activations are gone); run the backward before "
                               "the next call, or set RECDSL_FP_GRAPH=0")
        for static, g in zip(self.grad_outs, grad_outs):
            static.copy_(g)
        self.backward.replay()
        self.busy = None
        return [None if g is None else g.clone() for g in self.grads]


class Replay(torch.autograd.Function):
    """A TailGraph's forward and backward as one autograd node."""

    @staticmethod
    def forward(ctx, graph, *inputs):
        ctx.graph, ctx.holder = graph, _Holder()
        outs = graph.run_forward(inputs, ctx.holder)
        ctx.generation = graph.generation
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grad_outs):
        return (None,) + tuple(ctx.graph.run_backward(ctx.generation, grad_outs))


class _Holder:
    """The token a forward's autograd node keeps: when the node is freed, its instance is free again."""


def _tensors(outs) -> list:
    return [o for o in outs if o is not None]
