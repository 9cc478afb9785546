"""The fused fixed-point iteration (fp_fused.py) for specs whose operands read the previous token's iterate,
prev(h, shift = 1): the paper's hidden-state dependence (Movahedi et al. 2025, Sec. 3.4; the authors'
`mixer_h_dep`), e.g. benchmarks/specs/fp_rnn_hdep.rec, where

    lam_t = sigmoid(lam_in_t + Wl h^(l-1)_(t-1)),   alpha_t = sigmoid(alpha_in_t + Wa h^(l-1)_(t-1)).

Such an operand changes with every iterate, so it cannot be set once per solve. Before each launch the
varying operands (FusedPattern.varying) are evaluated again from the iterate the launch starts from, in
PyTorch: their maps are matrix products over all tokens, which cuBLAS does better than a program that owns a
few channels of one sequence, each with its addend in one addmm (fp_products.py). Every value that
does not read the iterate is kept from the first evaluation.
Where the reflection vectors are themselves such a product, u = [l2norm](u_in + Wu @ h_last) (the authors'
dependence), two generated kernels give u with its dot products and coefficients (fp_reflections.py).
Otherwise the reflections' dot products d_i = u_i . (x - h^(l-1)) come from fp_fused_dots, together with the
Gram products u_i . u_j where u moves, from which the coefficients follow in a few small torch ops. The launch
itself (mixer, scan, damping, residual) is fp_fused's kernel, without the next launch's dot products.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os

import torch

from recdsl.ir import IR

from .fp_coefficients import coefficients_from_gram
from .fp_fused import FusedIteration, evaluate_operands
from .fp_products import IterateProducts


class ShiftedIteration:
    """Launches of a FusedIteration whose varying operands are evaluated from each launch's iterate.
    `evaluator(prev)` is an Evaluator of the spec's nodes reading `prev` [B, T, 1, D] as h^(l-1); `step`
    holds the operands that do not move and `kept` the values (by IR node) that do not read the iterate;
    `products` (fp_products.IterateProducts) evaluates the weight products of the iterate.
    Has FusedIteration's launch() and iterations(), so fp_graph.SolveGraphs replays them as CUDA graphs
    (the evaluations included: their host work, about 0.8 ms an iteration at issue 5's shape, is most of
    an eager solve's)."""

    def __init__(self, ir: IR, step: FusedIteration, evaluator, kept: dict, products: IterateProducts,
                 reflections=None):
        self.ir, self.step, self.evaluator, self.kept, self.products = ir, step, evaluator, kept, products
        # reflection vectors that stay put while their strengths move: their Gram products once per solve
        varying = step.pattern.varying
        self.gram = step.dots(step.x, gram=True)[1] if "w" in varying and "u" not in varying else None
        # u = l2norm(u_in + Wu @ h_last) in two generated launches (fp_reflections.ReflectionLaunches), or None
        self.reflections = reflections
        self.side = None       # _streams()

    @property
    def pattern(self):
        return self.step.pattern

    @property
    def x(self) -> torch.Tensor:
        return self.step.x

    @property
    def u(self) -> torch.Tensor:
        return self.step.u

    def detached(self) -> "ShiftedIteration":
        return self     # built without autograd: the differentiable step evaluates its own operands

    @property
    def peaks(self) -> bool:
        """Whether the launches leave the rows' peaks of their iterates for the next launch's reflection products
        (fp16x3 scales each row by a power of two at or below its peak; without them the product kernel's
        caller takes them in a separate pass)."""
        return self.reflections is not None and self.reflections.peaks

    def at(self, prev: torch.Tensor, peak=None) -> tuple[FusedIteration, torch.Tensor | None]:
        """(the FusedIteration of a launch from prev, its dot products or None). Where the coefficients
        move, they come from the Gram products of fp_fused_dots, which gives the dot products with them.
        `peak`: the rows' peaks of prev, where the launch that wrote it left them."""
        ev = self.evaluator(prev)
        ev.memo.update(self.kept)
        varying = self.pattern.varying
        if self.reflections is not None:    # u, w and the dot products from fp_reflections' kernels
            names = [n for n in varying if n not in ("u", "w")] + ["s"]
            main, side = self._streams(prev)
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                self.products.fill(ev, prev)     # all but the one the kernels take
                ops = evaluate_operands(self.pattern, self.ir, ev, self.step.B, self.step.T, names,
                                        device=prev.device)
            u, part = self.reflections.products(prev, peak)
            if side is not None:
                main.wait_stream(side)
            w, dots = self.reflections.finish(part, ops.pop("s"))
            return dataclasses.replace(self.step, u=u, w=w, **ops), dots
        self.products.fill(ev, prev)
        if "w" not in varying:
            return self.step.at(self.ir, ev), None
        ops = evaluate_operands(self.pattern, self.ir, ev, self.step.B, self.step.T, varying, strengths=True)
        s = ops.pop("strengths")
        step = dataclasses.replace(self.step, **ops)
        dots, gram = step.dots(prev, gram=True) if self.gram is None else (None, self.gram)
        return dataclasses.replace(step, w=coefficients_from_gram(gram, s).contiguous()), dots

    def _streams(self, prev: torch.Tensor):
        """(current stream, side stream) for a launch from prev on the GPU, the side stream already waiting for
        the current one; (None, None) elsewhere or with RECDSL_FP_SIDE_STREAM=0.

        The narrow products and the strengths (memory-bound: alpha's Wa @ h_last reads the whole iterate,
        0.33 ms of a 17-iteration fp32 solve at issue 5's shape, 2026-11-28l) run on the side stream while the
        reflection products (bound by tensor cores) run on the current one; the current stream waits for
        them before the finishing kernel. fp32 solves took 6.26-6.31 against 6.40-6.45 ms, bf16 ones moved
        within their noise (one process, benchmarks/fp_knob_ab.py, H100 2026-11-29j). What the side stream
        allocates is reused only by its next launch's work, which waits for everything queued on the current
        stream before it, so no record_stream."""
        if not prev.is_cuda or os.environ.get("RECDSL_FP_SIDE_STREAM", "1") == "0":
            return None, None
        main = torch.cuda.current_stream(prev.device)
        if self.side is None or self.side.device != prev.device:
            self.side = torch.cuda.Stream(prev.device, priority=-1)     # its few programs go first
        self.side.wait_stream(main)
        return main, self.side

    def launch(self, prev: torch.Tensor, delta: float, store_ht: bool = False, dots=None, out=None,
               zero: bool = False, peak=None, peak_out=None):
        """FusedIteration.launch from prev, its operands evaluated from prev (`dots` is ignored: those of
        the previous launch were taken against the previous u). `zero`: prev is the solve's start h^0 = 0,
        whose operands `step` holds (evaluated once per solve), so no product of the iterate is taken: the
        first of 17 iterations' reflection products, 0.22 ms at issue 5's shape in fp32. `peak`: prev's rows'
        peaks, where known; `peak_out` [NTOK] receives those of the new iterate (FusedIteration.launch)."""
        if zero:
            return self.step.launch(prev, delta, store_ht=store_ht, out=out, next_dots=False, peak_out=peak_out)
        step, dots = self.at(prev, peak)
        # no dot products for the next launch: its own evaluation gives them (u or w move with the iterate)
        return step.launch(prev, delta, store_ht=store_ht, dots=dots, out=out, next_dots=False, peak_out=peak_out)

    def iterations(self, iterates: dict, delta: float, K: int, out=None):
        """K iterations (solve.Batched's run), as FusedIteration.iterations; iterates["zero"] says that "h" is the
        solve's start h^0 = 0. Where the launches leave the rows' peaks (`peaks`), the iterates carry them as
        "peak" (`out`'s "peak" receives the last launch's)."""
        h, rows, zero, peak = iterates["h"], [], iterates.get("zero", False), iterates.get("peak")
        NTOK = self.step.x.shape[0]
        for k in range(K):
            last = k == K - 1
            into = out if last else None
            nxt = None if not self.peaks else into["peak"] if into is not None else h.new_empty(NTOK)
            h, res, _, _ = self.launch(h, delta, out=into, zero=zero and k == 0, peak=peak, peak_out=nxt)
            peak = nxt
            rows.append(res)
        return {"h": h, "peak": peak}, torch.stack(rows)
